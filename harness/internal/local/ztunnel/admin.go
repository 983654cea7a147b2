package ztunnel

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"slices"
	"strings"
	"time"
)

// CertsDump is one identity's entry of ztunnel's config dump (src/admin.rs
// CertsDump): its state and, once Available, its chain (leaf and
// intermediates) and roots.
type CertsDump struct {
	Identity  string     `json:"identity"`
	State     string     `json:"state"`
	CertChain []CertDump `json:"certChain"`
	RootCerts []CertDump `json:"rootCerts"`
}

// CertDump is one certificate as src/admin.rs dump_cert writes it: the
// PEM, base64-encoded; the serial number in decimal; validity in RFC 3339
// to the second, UTC.
type CertDump struct {
	Pem            string `json:"pem"`
	SerialNumber   string `json:"serialNumber"`
	ValidFrom      string `json:"validFrom"`
	ExpirationTime string `json:"expirationTime"`
}

// DumpCert is a certificate as ztunnel dumps it.
func DumpCert(c *x509.Certificate) CertDump {
	p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	return CertDump{
		Pem:            base64.StdEncoding.EncodeToString(p),
		SerialNumber:   c.SerialNumber.String(),
		ValidFrom:      c.NotBefore.UTC().Format(time.RFC3339),
		ExpirationTime: c.NotAfter.UTC().Format(time.RFC3339),
	}
}

// AvailableCerts is the dump of an identity whose certificates ztunnel
// holds: chain is the leaf and its intermediates, roots the trust anchors.
func AvailableCerts(identity string, chain, roots []*x509.Certificate) CertsDump {
	d := CertsDump{Identity: identity, State: "Available", CertChain: []CertDump{}, RootCerts: []CertDump{}}
	for _, c := range chain {
		d.CertChain = append(d.CertChain, DumpCert(c))
	}
	for _, c := range roots {
		d.RootCerts = append(d.RootCerts, DumpCert(c))
	}
	return d
}

// configDump is the part of ztunnel's GET /config_dump this simulation
// writes: the state istiod served (flattened DemandProxyState: workloads,
// services, policies) and the certificates, sorted by identity as
// dump_certs sorts them.
type configDump struct {
	Workloads    []dumpWorkload `json:"workloads"`
	Services     []dumpService  `json:"services"`
	Policies     []dumpPolicy   `json:"policies"`
	Certificates []CertsDump    `json:"certificates"`
}

type dumpWorkload struct {
	UID            string   `json:"uid"`
	WorkloadIPs    []string `json:"workloadIps"`
	Protocol       string   `json:"protocol"`
	Name           string   `json:"name"`
	Namespace      string   `json:"namespace"`
	ServiceAccount string   `json:"serviceAccount"`
	WorkloadName   string   `json:"workloadName"`
	Node           string   `json:"node"`
	TrustDomain    string   `json:"trustDomain"`
	Authorization  []string `json:"authorizationPolicies"`
}

type dumpService struct {
	Name      string   `json:"name"`
	Namespace string   `json:"namespace"`
	Hostname  string   `json:"hostname"`
	VIPs      []string `json:"vips"`
}

type dumpPolicy struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Action    string `json:"action"`
	DryRun    bool   `json:"dryRun"`
}

// ConfigDump is GET /config_dump on the admin port (15000, bound to
// localhost in the ztunnel pod), with the certificates the ztunnel holds.
func (z *Ztunnel) ConfigDump(certs []CertsDump) []byte {
	snap := z.Snapshot()
	d := configDump{Workloads: []dumpWorkload{}, Services: []dumpService{}, Policies: []dumpPolicy{}, Certificates: slices.Clone(certs)}
	for _, w := range snap.Workloads {
		dw := dumpWorkload{UID: w.UID, Protocol: protocolName(w.Tunnel), Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount,
			WorkloadName: w.WorkloadName, Node: w.Node, TrustDomain: cmpOr(w.TrustDomain, "cluster.local"), Authorization: w.AuthorizationPolicies}
		for _, a := range w.Addresses {
			dw.WorkloadIPs = append(dw.WorkloadIPs, a.String())
		}
		d.Workloads = append(d.Workloads, dw)
	}
	for _, s := range snap.Services {
		ds := dumpService{Name: s.Name, Namespace: s.Namespace, Hostname: s.Hostname}
		for _, a := range s.Addresses {
			ds.VIPs = append(ds.VIPs, a.String())
		}
		d.Services = append(d.Services, ds)
	}
	for _, k := range sortedKeys(snap.Policies) {
		p := snap.Policies[k]
		d.Policies = append(d.Policies, dumpPolicy{Name: p.Name, Namespace: p.Namespace, Action: strings.ToLower(p.Action.String()), DryRun: p.DryRun})
	}
	slices.SortFunc(d.Certificates, func(a, b CertsDump) int { return strings.Compare(a.Identity, b.Identity) })
	out, _ := json.MarshalIndent(d, "", "  ")
	return out
}

// protocolName is InboundProtocol's serialization.
func protocolName(p TunnelProtocol) string {
	if p == TunnelHBONE {
		return "HBONE"
	}
	return "TCP"
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
