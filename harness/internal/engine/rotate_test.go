package engine

import (
	"context"
	"crypto/x509"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/results"
	"github.com/meshproof/meshproof/harness/scenario"
)

const wantID = "spiffe://cluster.local/ns/meshproof/sa/service-b"

func issue(t *testing.T, b *ca.Bundle, id string) ServedCert {
	t.Helper()
	leaf, _, chain, err := b.IssueWorkloadCert(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s, err := servedCert(append([]*x509.Certificate{leaf}, chain...))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRotationCheck(t *testing.T) {
	mesh, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	other, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	before := issue(t, mesh, wantID)
	// Certificates issued within the same second share notBefore; the check
	// compares the recorded times, so the earlier one is moved back.
	before.NotBefore = before.NotBefore.Add(-30 * time.Second)
	after := issue(t, mesh, wantID)
	agreeing := []CertRead{{FromHandshake, after}, {FromConfigDump, after}}
	good := RotationCheck{WantID: wantID, Before: before, After: after, CrossReads: agreeing, Roots: []*x509.Certificate{mesh.Root}, TrafficTotal: 20}
	if err := good.Verify(); err != nil {
		t.Fatalf("a good rotation fails: %v", err)
	}
	for name, tc := range map[string]struct {
		mutate func(*RotationCheck)
		want   string
	}{
		"unchanged": {func(r *RotationCheck) { r.After = r.Before }, "did not change"},
		"other identity": {func(r *RotationCheck) {
			r.After = issue(t, mesh, "spiffe://cluster.local/ns/x/sa/y")
		}, "identity changed or is wrong"},
		"older": {func(r *RotationCheck) { r.Before, r.After = r.After, r.Before }, "not newer"},
		"sources disagree persistently": {func(r *RotationCheck) {
			r.CrossReads = []CertRead{{FromHandshake, after}, {FromConfigDump, before}, {FromHandshake, after}, {FromConfigDump, before}}
		}, "config dump and the handshake disagree over 4 alternating reads: the config dump held serial " + before.Serial + ", the handshake presented " + after.Serial},
		"wrong root":     {func(r *RotationCheck) { r.Roots = []*x509.Certificate{other.Root} }, "does not verify against the mesh root"},
		"no root":        {func(r *RotationCheck) { r.Roots = nil }, "no mesh root"},
		"traffic failed": {func(r *RotationCheck) { r.TrafficFailed = 2 }, "2 of 20 mTLS requests failed"},
		"traffic failed, the first named": {func(r *RotationCheck) {
			r.TrafficFailed = 1
			r.FirstFailure = &results.Observation{Time: time.Date(2026, 12, 8, 0, 3, 34, 120e6, time.UTC), From: "service-a", To: "service-b", Port: 8080,
				Result: scenario.ResultFail, Reason: "timeout", Error: "context deadline exceeded"}
		}, "1 of 20 mTLS requests failed during the rotation (the first at 00:03:34.120: service-a→service-b:8080 fail (timeout): context deadline exceeded)"},
		"no traffic": {func(r *RotationCheck) { r.TrafficTotal = 0 }, "no mTLS request ran"},
	} {
		r := good
		r.CrossReads = append([]CertRead(nil), good.CrossReads...)
		tc.mutate(&r)
		if err := r.Verify(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error saying %q", name, err, tc.want)
		}
	}
}

// A renewal between two reads of the cross-check is not a disagreement: the
// config dump's certificate was presented just before or just after.
func TestCrossCheckAgreement(t *testing.T) {
	mesh, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	first, second, third := issue(t, mesh, wantID), issue(t, mesh, wantID), issue(t, mesh, wantID)
	h := func(c ServedCert) CertRead { return CertRead{FromHandshake, c} }
	d := func(c ServedCert) CertRead { return CertRead{FromConfigDump, c} }
	for name, tc := range map[string]struct {
		reads []CertRead
		agree string // the handshake's serial agreed on, "" for none
	}{
		"same serial":                      {[]CertRead{h(first), d(first)}, first.Serial},
		"renewed after the handshake read": {[]CertRead{h(first), d(second), h(second)}, second.Serial},
		"renewed after the dump read":      {[]CertRead{h(first), d(first), h(second)}, first.Serial},
		"renewed twice, agree at last":     {[]CertRead{h(first), d(second), h(third), d(third)}, third.Serial},
		"never adjacent":                   {[]CertRead{h(first), d(second), h(first), d(second)}, ""},
		"one source only":                  {[]CertRead{h(first), h(first)}, ""},
		"no reads":                         {nil, ""},
	} {
		hs, dump, ok := agreement(tc.reads)
		switch {
		case tc.agree == "" && ok:
			t.Errorf("%s: agreed on %s", name, hs.Serial)
		case tc.agree != "" && (!ok || hs.Serial != tc.agree || dump.Serial != tc.agree):
			t.Errorf("%s: agreement = %s/%s %v, want %s", name, hs.Serial, dump.Serial, ok, tc.agree)
		}
	}
}

// renewingCerts is a CertReader whose workload renews its certificate a
// second time right when the cross-check reads the config dump: the
// handshake presented `after`, the config dump already holds `renewed`,
// and every handshake from then on presents it too. With stuck set the
// config dump holds `renewed` while the handshake keeps presenting
// `after`: a disagreement that does not go away.
type renewingCerts struct {
	mu                     sync.Mutex
	reads, switchAfter     int
	before, after, renewed []*x509.Certificate
	dumpRead, stuck        bool
}

func (c *renewingCerts) HandshakeChain(context.Context, results.Pod, results.Pod, int) ([]*x509.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads++
	switch {
	case c.reads <= c.switchAfter:
		return c.before, nil
	case c.dumpRead && !c.stuck:
		return c.renewed, nil
	}
	return c.after, nil
}

func (c *renewingCerts) SidecarSecrets(context.Context, results.Pod) ([]*x509.Certificate, []*x509.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dumpRead = true
	return c.renewed, nil, nil
}

// The cross-check tolerates a renewal between its reads and fails on a
// disagreement that persists.
func TestRotateCrossCheck_ScriptedTransport(t *testing.T) {
	mesh, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		stuck   bool
		wantErr string
	}{
		{"renewal between reads", false, ""},
		{"disagreement", true, "the sidecar's config dump and the handshake disagree over 8 alternating reads"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, ns := suiteIn(t, "  - rotate: {workload: service-b, within: 10s}\n")
			readyPod(t, ns, "service-a", "10.0.0.1")
			readyPod(t, ns, "service-b", "10.0.0.2")
			readyPod(t, ns, "legacy", "10.0.0.3")
			root := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: RootCertConfigMap, Namespace: ns},
				Data: map[string]string{RootCertKey: string(ca.EncodeCertificatesPEM(mesh.Root))}}
			if err := env.Client.Create(context.Background(), root); err != nil {
				t.Fatal(err)
			}
			id := "spiffe://cluster.local/ns/" + ns + "/sa/service-b"
			before, after, renewed := chainFor(t, mesh, id), chainFor(t, mesh, id), chainFor(t, mesh, id)
			before[0].NotBefore = before[0].NotBefore.Add(-time.Minute) // issued "earlier"
			certs := &renewingCerts{switchAfter: 2, before: before, after: after, renewed: renewed, stuck: tc.stuck}
			p := &scriptedProber{script: func(int, results.Pod, echoapi.Target) echoapi.ProbeResult {
				return mtlsResult(ns, "service-a", "service-b")
			}}
			var rec recordedEvents
			err := newEngine(t, s, p, WithCertReader(certs), WithRecorder(&rec)).RunStep(context.Background(), &s.Scenarios[0], 0)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("a renewal between the two reads failed the rotation: %v", err)
				}
				if want := "renewed again during the cross-check: serves serial " + renewed[0].SerialNumber.Text(16); !strings.Contains(rec.kinds(), want) {
					t.Errorf("events lack %q: %s", want, rec.kinds())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an error saying %q", err, tc.wantErr)
			}
			for _, serial := range []string{"config dump held serial " + renewed[0].SerialNumber.Text(16), "the handshake presented " + after[0].SerialNumber.Text(16)} {
				if !strings.Contains(err.Error(), serial) {
					t.Errorf("error %q lacks %q", err, serial)
				}
			}
		})
	}
}
