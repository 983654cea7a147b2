// Package wire is the harness's side of the wire witness
// (fixtures/echo/wire): it watches the packets of probe batches and puts
// what it saw of each request on the request's result
// (echoapi.ProbeResult.Witness), from which the engine's verdicts and the
// report take it.
//
// Two witnesses exist. Loopback captures in this process on the loopback
// interface: a rehearsal's real proxyless pods talk there. Nodes asks the
// witness pods (`echo witness serve`, one per node, host network) of a
// kind cluster, through exec, and merges what the nodes saw.
package wire

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
)

// Reasons a request carries not-captured without a witness having
// watched (echoapi.UnavailableWitness).
const (
	// SimulatedDataPlane: a rehearsal's simulated answer crossed no wire.
	SimulatedDataPlane = "simulated data plane"
	// NoCanary: the result names no canary (an echo older than the
	// witness), so nothing could be looked for.
	NoCanary = "the request carried no canary (an echo program older than the wire witness)"
)

// Stamp puts each answer on its result.
func Stamp(results []echoapi.ProbeResult, answers []echoapi.WitnessAnswer) {
	for i := range results {
		if i < len(answers) {
			a := answers[i]
			results[i].Witness = &a
		}
	}
}

// StampUnavailable marks every result not yet witnessed as out of any
// witness's sight, for why.
func StampUnavailable(results []echoapi.ProbeResult, why string) {
	for i := range results {
		if results[i].Witness == nil {
			a := echoapi.UnavailableWitness(fmt.Sprint(i), why)
			results[i].Witness = &a
		}
	}
}

// requests are the witness requests that judge result r: one for the
// request's own connection when its ends are a client and a server of the
// capture (a direct connection), else one for every client and server
// pair (a proxy's connection may have gone to any server pod), whose
// answers MergeWitness combines. id names them all.
func requests(id string, r echoapi.ProbeResult, clients, servers []netip.Addr) []echoapi.WitnessRequest {
	local, remote := hostOf(r.LocalAddr), hostOf(r.RemoteAddr)
	if contains(clients, local) && contains(servers, remote) {
		if req, ok := echoapi.WitnessRequestFor(id, r, local.String(), remote.String()); ok {
			return []echoapi.WitnessRequest{req}
		}
	}
	var out []echoapi.WitnessRequest
	for _, c := range clients {
		for _, s := range servers {
			if req, ok := echoapi.WitnessRequestFor(id, r, c.String(), s.String()); ok {
				out = append(out, req)
			}
		}
	}
	return out
}

func hostOf(addrPort string) netip.Addr {
	host, _, err := net.SplitHostPort(addrPort)
	if err != nil {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

func contains(addrs []netip.Addr, a netip.Addr) bool {
	for _, x := range addrs {
		if x.Unmap() == a && a.IsValid() {
			return true
		}
	}
	return false
}

// pairs are every client and server address pair.
func pairs(clients, servers []netip.Addr) []echoapi.WitnessPair {
	var out []echoapi.WitnessPair
	seen := map[[2]netip.Addr]bool{}
	for _, c := range clients {
		for _, s := range servers {
			k := [2]netip.Addr{c.Unmap(), s.Unmap()}
			if !seen[k] {
				seen[k] = true
				out = append(out, echoapi.WitnessPair{A: k[0].String(), B: k[1].String()})
			}
		}
	}
	return out
}

// merge combines, per result, the answers of every request that judged
// it (by request ID, the result's index).
func merge(n int, answers []echoapi.WitnessAnswer) []echoapi.WitnessAnswer {
	byID := map[string][]echoapi.WitnessAnswer{}
	for _, a := range answers {
		byID[a.ID] = append(byID[a.ID], a)
	}
	out := make([]echoapi.WitnessAnswer, n)
	for i := range out {
		id := fmt.Sprint(i)
		if got := byID[id]; len(got) > 0 {
			out[i] = echoapi.MergeWitness(got...)
		} else {
			out[i] = echoapi.WitnessAnswer{ID: id, Verdict: echoapi.WitnessNotCaptured, Detail: NoCanary}
		}
	}
	return out
}
