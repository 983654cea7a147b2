package engine

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/e2e-framework/klient/wait"

	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/oracle"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

// RootCertConfigMap is the ConfigMap istiod writes into every namespace with
// the mesh's root certificate(s).
const (
	RootCertConfigMap = "istio-ca-root-cert"
	RootCertKey       = "root-cert.pem"
)

// ServedCert is what a rotation check knows of one served certificate.
type ServedCert struct {
	Serial    string
	NotBefore time.Time
	NotAfter  time.Time
	SPIFFEID  string
	Chain     []*x509.Certificate
}

func servedCert(chain []*x509.Certificate) (ServedCert, error) {
	if len(chain) == 0 {
		return ServedCert{}, errors.New("no certificate was presented")
	}
	leaf := chain[0]
	s := ServedCert{Serial: leaf.SerialNumber.Text(16), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Chain: chain}
	for _, u := range leaf.URIs {
		if u.Scheme == "spiffe" {
			s.SPIFFEID = u.String()
		}
	}
	return s, nil
}

// CertSource is where a rotation check read a served certificate.
type CertSource string

// The two sources of a cross-check, and ztunnel's config dump, the one
// source of an ambient workload's certificate.
const (
	FromHandshake  CertSource = "handshake"
	FromConfigDump CertSource = "config dump"
	FromZtunnel    CertSource = "ztunnel config dump"
)

// CertRead is one read of the certificate a workload serves.
type CertRead struct {
	Source CertSource
	Cert   ServedCert
}

// crossCheckReads bounds the cross-check: this many reads, alternating
// between the handshake and the config dump, one interval apart. A second
// renewal can fall between two reads (a 1m TTL renews every ~30s), but not
// twice within a few intervals.
const crossCheckReads = 8

// RotationCheck is the decision of a rotate step, separate from how the
// certificates were read so that it can be tested on its own.
type RotationCheck struct {
	WantID string
	Before ServedCert
	// After is the new certificate, read through a TLS handshake: the one
	// the cross-check agreed on, else the last one presented.
	After ServedCert
	// CrossReads are the reads of the cross-check, alternating between the
	// handshake and the sidecar's config dump. The sources agree when two
	// adjacent reads hold the same serial: the config dump's certificate
	// was the one presented just before or just after it was read, so a
	// renewal between two reads is not a disagreement.
	CrossReads    []CertRead
	Roots         []*x509.Certificate
	TrafficFailed int // failed mTLS requests during the window
	TrafficTotal  int
	// FirstFailure is the first of the failed requests, which the error
	// names so that a failed rotation says how its traffic failed.
	FirstFailure *results.Observation
	// OneSource, when set, is the only place the certificate can be read:
	// an ambient workload's lives in its node's ztunnel, which presents it
	// only inside HBONE's mutual TLS, so no handshake of meshproof's sees
	// it, and there is nothing to cross-check with.
	OneSource CertSource
}

// agreement finds the latest two adjacent reads, one of each source, that
// hold the same certificate.
func agreement(reads []CertRead) (handshake, configDump ServedCert, ok bool) {
	for i := len(reads) - 1; i > 0; i-- {
		a, b := reads[i-1], reads[i]
		if a.Source == b.Source || a.Cert.Serial != b.Cert.Serial {
			continue
		}
		if a.Source == FromHandshake {
			return a.Cert, b.Cert, true
		}
		return b.Cert, a.Cert, true
	}
	return ServedCert{}, ServedCert{}, false
}

// serialsFrom lists the distinct serials one source showed, in order.
func serialsFrom(reads []CertRead, source CertSource) string {
	var out []string
	for _, r := range reads {
		if r.Source == source && (len(out) == 0 || out[len(out)-1] != r.Cert.Serial) {
			out = append(out, r.Cert.Serial)
		}
	}
	if len(out) == 0 {
		return "nothing"
	}
	return strings.Join(out, ", ")
}

// Verify returns every way the rotation falls short, or nil.
func (r RotationCheck) Verify() error {
	var errs []error
	if r.After.Serial == r.Before.Serial {
		errs = append(errs, fmt.Errorf("the served certificate did not change (serial %s)", r.Before.Serial))
	}
	if r.After.SPIFFEID != r.WantID || r.Before.SPIFFEID != r.WantID {
		errs = append(errs, fmt.Errorf("identity changed or is wrong: before %q, after %q, want %q", r.Before.SPIFFEID, r.After.SPIFFEID, r.WantID))
	}
	if !r.After.NotBefore.After(r.Before.NotBefore) {
		errs = append(errs, fmt.Errorf("the new certificate is not newer: notBefore %s, the old one's %s", r.After.NotBefore.Format(time.RFC3339), r.Before.NotBefore.Format(time.RFC3339)))
	}
	if _, _, ok := agreement(r.CrossReads); !ok && r.OneSource == "" {
		errs = append(errs, fmt.Errorf("the sidecar's config dump and the handshake disagree over %d alternating reads: the config dump held serial %s, the handshake presented %s",
			len(r.CrossReads), serialsFrom(r.CrossReads, FromConfigDump), serialsFrom(r.CrossReads, FromHandshake)))
	}
	if len(r.Roots) == 0 {
		errs = append(errs, errors.New("no mesh root certificate to verify the new chain against"))
	} else if id, err := ca.VerifyWorkloadChain(r.After.Chain, r.Roots...); err != nil {
		errs = append(errs, fmt.Errorf("the new chain does not verify against the mesh root: %w", err))
	} else if id != r.WantID {
		errs = append(errs, fmt.Errorf("the new chain verifies for %q, want %q", id, r.WantID))
	}
	if r.TrafficFailed > 0 {
		first := ""
		if o := r.FirstFailure; o != nil {
			first = fmt.Sprintf(" (the first at %s: %s→%s:%d %s)", o.Time.UTC().Format("15:04:05.000"), o.From, o.To, o.Port, describeWithError(*o))
		}
		errs = append(errs, fmt.Errorf("%d of %d mTLS requests failed during the rotation%s", r.TrafficFailed, r.TrafficTotal, first))
	}
	if r.TrafficTotal == 0 {
		errs = append(errs, errors.New("no mTLS request ran during the rotation window"))
	}
	return errors.Join(errs...)
}

// rotate waits for a workload's served certificate to change and checks
// the new one while mTLS traffic keeps flowing to the workload.
func (e *Engine) rotate(ctx context.Context, sc *scenario.Scenario, st *scenario.Step) error {
	if e.certs == nil {
		return errors.New("the engine has no CertReader: rotate steps cannot run")
	}
	w := e.suite.Workload(st.Rotate.Workload)
	if w.Ambient() {
		return e.rotateAmbient(ctx, sc, st)
	}
	outside, inside := e.observers(w.Name)
	if outside == "" || inside == "" {
		return fmt.Errorf("a rotate step needs an out-of-mesh workload (to read the served certificate) and another in-mesh workload (to keep traffic flowing); have %q and %q", outside, inside)
	}
	server, err := e.readyPod(ctx, w.Name)
	if err != nil {
		return err
	}
	reader, err := e.readyPod(ctx, outside)
	if err != nil {
		return err
	}
	port := w.Ports[0].Target() // a handshake with the pod itself, not through the Service
	read := func(ctx context.Context) (ServedCert, error) {
		chain, err := e.certs.HandshakeChain(ctx, reader, server, port)
		if err != nil {
			return ServedCert{}, err
		}
		return servedCert(chain)
	}
	if err := e.awaitFlowing(ctx, sc, st, inside, w.Name, port); err != nil {
		return err
	}
	before, err := read(ctx)
	if err != nil {
		return fmt.Errorf("reading the certificate %s serves: %w", w.Name, err)
	}
	e.event(sc, st, results.EventSerial, "%s serves serial %s (%s), valid %s to %s", w.Name, before.Serial, before.SPIFFEID, before.NotBefore.Format(time.RFC3339), before.NotAfter.Format(time.RFC3339))
	after, traffic, met, failed, total, err := e.awaitNewSerial(ctx, sc, st, certHolder{subject: w.Name, verb: "serves"}, inside, w.Name, port, before, read)
	if err != nil {
		return err
	}

	check := RotationCheck{WantID: w.SPIFFEID(e.cluster.Istio.TrustDomain), Before: before, TrafficFailed: len(failed), TrafficTotal: total, FirstFailure: first(failed)}
	var sidecarRoots []*x509.Certificate
	readDump := func(ctx context.Context) (ServedCert, error) {
		chain, roots, err := e.certs.SidecarSecrets(ctx, server)
		if err != nil {
			return ServedCert{}, fmt.Errorf("reading %s's sidecar secrets: %w", w.Name, err)
		}
		c, err := servedCert(chain)
		if err != nil {
			return ServedCert{}, fmt.Errorf("%s's sidecar secret default: %w", w.Name, err)
		}
		sidecarRoots = roots
		return c, nil
	}
	var lastErr error
	check.CrossReads = []CertRead{{FromHandshake, after}}
	crossErr := wait.For(func(ctx context.Context) (bool, error) {
		source, readOne := FromConfigDump, readDump
		if check.CrossReads[len(check.CrossReads)-1].Source == FromConfigDump {
			source, readOne = FromHandshake, read
		}
		c, err := readOne(ctx)
		if err != nil {
			lastErr = err
			e.log.Info("certificate cross-check failed", "step", st.Name, "error", err)
			return false, nil
		}
		check.CrossReads = append(check.CrossReads, CertRead{source, c})
		_, _, agreed := agreement(check.CrossReads)
		return agreed || len(check.CrossReads) >= crossCheckReads, nil
	}, wait.WithContext(ctx), wait.WithImmediate(), wait.WithInterval(e.suite.Defaults.Interval.Duration), wait.WithTimeout(timeLeft(ctx)))
	if crossErr != nil && len(check.CrossReads) < 2 {
		return fmt.Errorf("cross-checking the served certificate with %s's config dump: %w (last error: %v)", w.Name, crossErr, lastErr)
	}
	for i := len(check.CrossReads) - 1; i >= 0; i-- { // the first read is a handshake
		if r := check.CrossReads[i]; r.Source == FromHandshake {
			check.After = r.Cert
			break
		}
	}
	if agreed, _, ok := agreement(check.CrossReads); ok {
		check.After = agreed
		if agreed.Serial != after.Serial {
			e.event(sc, st, results.EventSerial, "%s renewed again during the cross-check: serves serial %s, valid from %s", w.Name, agreed.Serial, agreed.NotBefore.Format(time.RFC3339))
		}
	}
	if check.Roots, err = e.meshRoots(ctx, w.Namespace); err != nil {
		return err
	}
	if len(sidecarRoots) > 0 && !sameCerts(sidecarRoots, check.Roots) {
		e.log.Info("the sidecar's ROOTCA differs from the root ConfigMap (a root rotation may be in progress)", "workload", w.Name, "configMap", RootCertConfigMap)
	}
	if err := errors.Join(check.Verify(), traffic.Err()); err != nil {
		return &DeadlineError{Deadlines: []results.Deadline{met}, Err: err}
	}
	return nil
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// observers picks the workloads a rotation check reads and probes from.
func (e *Engine) observers(target string) (outside, inside string) {
	for _, w := range e.suite.Fixtures.Workloads {
		switch {
		case !w.InMesh() && outside == "":
			outside = w.Name
		// The traffic a rotation keeps flowing is mTLS the sidecars
		// originate: a proxyless client would send the target's HTTP as
		// plaintext.
		case w.InMesh() && !w.Proxyless && w.Name != target && inside == "":
			inside = w.Name
		}
	}
	return outside, inside
}

// meshRoots reads the mesh's root certificates as istiod distributes them.
func (e *Engine) meshRoots(ctx context.Context, namespace string) ([]*x509.Certificate, error) {
	var cm corev1.ConfigMap
	if err := e.kube.Get(ctx, client.ObjectKey{Namespace: namespace, Name: RootCertConfigMap}, &cm); err != nil {
		return nil, fmt.Errorf("reading the mesh root from ConfigMap %s/%s: %w", namespace, RootCertConfigMap, err)
	}
	roots, err := ca.ParseCertificatesPEM([]byte(cm.Data[RootCertKey]))
	if err != nil {
		return nil, fmt.Errorf("ConfigMap %s/%s: %w", namespace, RootCertConfigMap, err)
	}
	return roots, nil
}

// awaitFlowing waits, within the step's timeout, until a request from
// inside to workload's port is mTLS, recording what it sees: a rotation's
// traffic is judged from the moment it flows. Workloads deployed just
// before (a scenario's first steps) may not be in each other's Envoy
// endpoints yet (EndpointSlice, istiod's push): a first request fails so
// on a real cluster too, and that is not the rotation's doing.
func (e *Engine) awaitFlowing(ctx context.Context, sc *scenario.Scenario, st *scenario.Step, inside, workload string, port int) error {
	pairs := []scenario.Pair{{From: inside, To: workload, Port: port}}
	expected := results.ExpectedOutcome(scenario.Expectation{From: inside, To: workload, Port: port, Result: scenario.ResultMTLS})
	last := "no request ran"
	err := wait.For(func(ctx context.Context) (bool, error) {
		obs, err := e.probePairs(ctx, sc, st, inside, pairs)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		if ctx.Err() != nil {
			return false, nil // cut short: proves nothing
		}
		flowing := false
		for _, o := range obs {
			o.Expected = expected
			e.rec.Record(o)
			if o.Result == scenario.ResultMTLS {
				flowing = true
			} else {
				last = describeWithError(o)
			}
		}
		return flowing, nil
	}, wait.WithContext(ctx), wait.WithImmediate(), wait.WithInterval(e.suite.Defaults.Interval.Duration), wait.WithTimeout(timeLeft(ctx)))
	if err != nil {
		return fmt.Errorf("mTLS from %s to %s:%d never flowed before the rotation (last: %s): %w", inside, workload, port, last, err)
	}
	return nil
}

// first is the first of obs, nil when there is none.
func first(obs []results.Observation) *results.Observation {
	if len(obs) == 0 {
		return nil
	}
	return &obs[0]
}

// notMTLS are the observations of in-mesh traffic that were not mTLS.
func notMTLS(obs []results.Observation) []results.Observation {
	var out []results.Observation
	for _, o := range obs {
		if o.Result != scenario.ResultMTLS {
			out = append(out, o)
		}
	}
	return out
}

// certHolder names who holds a rotating certificate in messages: "service-b
// serves serial 1f", "ztunnel istio-system/ztunnel-x holds serial 1f for
// amb-b".
type certHolder struct{ subject, verb, of string }

// awaitNewSerial keeps mTLS traffic flowing from inside to workload's port
// while it waits, up to the step's within, for read to return a serial
// other than before's: the new certificate, the traffic (stopped; its Err
// is the caller's), the deadline met, and how many of the requests
// meanwhile were not mTLS. A missed deadline is a DeadlineError.
func (e *Engine) awaitNewSerial(ctx context.Context, sc *scenario.Scenario, st *scenario.Step, h certHolder, inside, workload string, port int, before ServedCert,
	read func(context.Context) (ServedCert, error)) (after ServedCert, traffic *Traffic, met results.Deadline, failed []results.Observation, total int, err error) {
	traffic = e.StartTraffic(ctx, sc, st, scenario.Traffic{
		Pairs: []scenario.Pair{{From: inside, To: workload, Port: port}},
		Every: e.suite.Defaults.Interval,
	}, Expecting([]oracle.Prediction{{From: inside, To: workload, Port: port, Result: scenario.ResultMTLS}}))
	bound := results.Deadline{Name: "new serial within " + st.Rotate.Within.String(), At: e.now().Add(st.Rotate.Within.Duration)}
	waitErr := wait.For(func(ctx context.Context) (bool, error) {
		c, err := read(ctx)
		if err != nil {
			e.log.Info("reading the certificate failed", "step", st.Name, "holder", h.subject, "error", err)
			return false, nil
		}
		after = c
		return c.Serial != before.Serial, nil
	}, wait.WithContext(ctx), wait.WithInterval(e.suite.Defaults.Interval.Duration), wait.WithTimeout(st.Rotate.Within.Duration))
	seen := traffic.Stop()
	failed, total = notMTLS(seen), len(seen)
	if waitErr != nil {
		bound.Detail = fmt.Sprintf("%s still %s serial %s%s", h.subject, h.verb, before.Serial, h.of)
		err := fmt.Errorf("%s still %s serial %s%s after %s (%d of %d mTLS requests failed meanwhile): %w", h.subject, h.verb, before.Serial, h.of, st.Rotate.Within, len(failed), total, waitErr)
		return after, traffic, met, failed, total, &DeadlineError{Deadlines: []results.Deadline{e.deadline(sc, st, bound)}, Err: err}
	}
	e.event(sc, st, results.EventSerial, "%s now %s serial %s%s, valid from %s", h.subject, h.verb, after.Serial, h.of, after.NotBefore.Format(time.RFC3339))
	bound.Met, bound.Detail = true, "serial "+after.Serial
	return after, traffic, e.deadline(sc, st, bound), failed, total, nil
}
