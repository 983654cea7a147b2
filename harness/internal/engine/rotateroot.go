package engine

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"sort"
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

// The root rotation follows the multi-root procedure Istio's maintainers
// presented (KubeCon EU 2024, "Better root cert rotation",
// https://github.com/zirain/istio-root-cert-rotation/tree/main/kubecon-eu-2024)
// and Tetrate documents step by step
// (https://docs.tetrate.io/istio-subscription/howto/root-cert-rotation):
// with old root A and new root B,
//
//	phase       ca-cert/ca-key  cert-chain  root-cert.pem
//	start       A's             A's         A
//	1 trust     A's             A's         A+B
//	2 sign      B's             B's         A+B
//	3 finalize  B's             B's         B
//
// It needs istiod's ISTIO_MULTIROOT_MESH=true (pilot/pkg/features: "mesh
// will support certificates signed by more than one trustAnchor"; without
// it only the first root is trusted) and the proxies'
// PROXY_CONFIG_XDS_AGENT=true, so that istiod pushes the trust bundle to the
// agents (pilot/pkg/bootstrap/certcontroller.go, updateRootCertAndGenKeyCert:
// "Trigger trust anchor update, this will send PCDS to all sidecars").
//
// Where the published procedure relies on istiod's watch of the mounted
// cacerts files (and repeats root B, A+B+B, in phase 2 so that the watch
// sees a changed root file), this step restarts istiod after each change:
// istiod loads cacerts when it starts, so the phase takes effect when the
// restart has rolled out, not when the kubelet refreshes the volume. It
// also restarts the workloads in each phase, which the agents' PCDS makes
// unnecessary on a healthy mesh but makes each phase's end state certain:
// every proxy then holds the trust bundle and certificate of that phase.
//
// istiod writes its root certificates (root-cert.pem as given) into the
// ConfigMap istio-ca-root-cert of every namespace (namespace controller,
// pilot/pkg/serviceregistry/kube/controller/namespacecontroller.go); the
// step waits for it to show each phase's roots.

// RootRotationPhase is one change of the cacerts Secret.
type RootRotationPhase struct {
	Name string
	// Data is the complete content of the cacerts Secret in this phase.
	Data map[string][]byte
	// Signing is the intermediate istiod signs workload certificates with.
	Signing *x509.Certificate
	// Roots are the trust anchors istiod distributes, in order.
	Roots []*x509.Certificate
}

// RootRotationPlan returns the three phases that replace the CA whose
// cacerts Secret holds current with next. current must trust exactly one
// root: several mean an earlier rotation did not finish.
func RootRotationPlan(current map[string][]byte, next *ca.Bundle) ([]RootRotationPhase, error) {
	roots, err := ca.ParseCertificatesPEM(current[ca.RootCertKey])
	if err != nil {
		return nil, fmt.Errorf("the cacerts Secret's %s: %w", ca.RootCertKey, err)
	}
	if len(roots) != 1 {
		return nil, fmt.Errorf("the cacerts Secret's %s holds %d roots: an earlier root rotation did not finish; finish or undo it before rotating again", ca.RootCertKey, len(roots))
	}
	signing, err := ca.ParseCertificatesPEM(current[ca.CACertKey])
	if err != nil {
		return nil, fmt.Errorf("the cacerts Secret's %s: %w", ca.CACertKey, err)
	}
	old := roots[0]
	if old.Equal(next.Root) {
		return nil, errors.New("the new root is the current root")
	}
	trustBoth := maps.Clone(current)
	trustBoth[ca.RootCertKey] = ca.EncodeCertificatesPEM(old, next.Root)
	sign, err := next.SecretTrusting("", nil, old, next.Root)
	if err != nil {
		return nil, err
	}
	final, err := next.SecretTrusting("", nil, next.Root)
	if err != nil {
		return nil, err
	}
	return []RootRotationPhase{
		{Name: "1/3 trust both roots", Data: trustBoth, Signing: signing[0], Roots: []*x509.Certificate{old, next.Root}},
		{Name: "2/3 sign with the new intermediate", Data: sign.Data, Signing: next.Intermediate, Roots: []*x509.Certificate{old, next.Root}},
		{Name: "3/3 drop the old root", Data: final.Data, Signing: next.Intermediate, Roots: []*x509.Certificate{next.Root}},
	}, nil
}

// rotateRoot replaces the mesh's root CA with a new one, in three phases,
// while traffic flows; each wait is bounded by the step's within.
func (e *Engine) rotateRoot(ctx context.Context, sc *scenario.Scenario, index int) error {
	st := &sc.Steps[index]
	r := st.RotateRoot
	mc := e.mesh.control
	switch {
	case mc == nil:
		return fmt.Errorf("%s: the engine has no MeshControl (engine.WithMeshControl): rotateRoot steps cannot run", st.Source.At("rotateRoot"))
	case !mc.MultiRoot():
		return fmt.Errorf("%s: Istio was installed without multi-root trust (istiod env ISTIO_MULTIROOT_MESH=true and proxyMetadata PROXY_CONFIG_XDS_AGENT=true, istio.WithMultiRoot): istiod and the proxies would trust only the first root and mTLS would break when the new intermediate signs; install Istio with it", st.Source.At("rotateRoot"))
	case e.certs == nil:
		return errors.New("the engine has no CertReader: rotateRoot steps cannot check the served certificates")
	}
	predictions, err := oracle.Predict(e.suite, sc, index)
	if err != nil {
		return fmt.Errorf("%s: predicting the traffic under the policies in force: %w", st.Source.At("rotateRoot"), err)
	}
	workloads := e.inMeshWorkloads()
	reader, _ := e.observers("")
	if reader == "" || len(workloads) == 0 {
		return errors.New("a rotateRoot step needs an out-of-mesh workload (to read the served certificates) and in-mesh workloads")
	}

	key := client.ObjectKey{Namespace: mc.Namespace(), Name: ca.SecretName}
	var secret corev1.Secret
	if err := e.kube.Get(ctx, key, &secret); err != nil {
		return fmt.Errorf("reading the plugged CA %s: %w", key, err)
	}
	if err := e.checkPluggedCA(&secret); err != nil {
		return err
	}
	alg := ca.ECDSAP256
	if e.mesh.pluggedCA != nil && e.mesh.pluggedCA.IntermediateKey != nil {
		alg = e.mesh.pluggedCA.IntermediateKey.Algorithm()
	}
	next, err := ca.Generate(ca.WithKeyAlgorithm(alg),
		ca.WithOrganization(fmt.Sprintf("%s (root of %s)", ca.DefaultOrganization, e.now().UTC().Format(time.RFC3339))))
	if err != nil {
		return err
	}
	phases, err := RootRotationPlan(secret.Data, next)
	if err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	old := phases[0].Roots[0]

	traffic := e.StartTraffic(ctx, sc, st, r.Traffic, Expecting(predictions))
	defer traffic.Stop()
	if err := waitObserved(ctx, traffic, r.Traffic, time.Time{}); err != nil {
		return fmt.Errorf("no baseline traffic before the root rotation: %w", err)
	}
	start := e.event(sc, st, results.EventRootRotation, "replacing root %s with %s", certName(old), certName(next.Root))

	for i, ph := range phases {
		if err := e.rotationPhase(ctx, sc, st, key, ph, r.Within.Duration, i == 1, next.Root, reader); err != nil {
			return fmt.Errorf("root rotation, phase %s: %w", ph.Name, err)
		}
	}
	e.mesh.pluggedCA = next

	if err := waitObserved(ctx, traffic, r.Traffic, e.now()); err != nil {
		return fmt.Errorf("no traffic observed after the root rotation: %w", err)
	}
	verdict := JudgeContinuous(traffic.Stop(), predictions)
	return errors.Join(verdict.Verify("the root rotation", r.Traffic.MaxFailures, start), traffic.Err(), e.verifyNewRootOnly(ctx, workloads, reader, old, next.Root))
}

// rotationPhase writes one phase's cacerts, restarts istiod, waits for the
// roots to reach every mesh namespace, restarts the workloads and, in the
// signing phase, waits until every workload serves a chain of the new root.
func (e *Engine) rotationPhase(ctx context.Context, sc *scenario.Scenario, st *scenario.Step, key client.ObjectKey,
	ph RootRotationPhase, within time.Duration, waitNewChains bool, newRoot *x509.Certificate, reader string) error {
	var secret corev1.Secret
	if err := e.kube.Get(ctx, key, &secret); err != nil {
		return fmt.Errorf("reading %s: %w", key, err)
	}
	secret.Data = ph.Data
	if err := e.kube.Update(ctx, &secret); err != nil {
		return fmt.Errorf("writing %s: %w", key, err)
	}
	e.event(sc, st, results.EventRootRotation, "phase %s: %s signs with %s, trusts %s", ph.Name, key, certName(ph.Signing), certNames(ph.Roots))

	bounded := func(what string, f func(context.Context) error) error {
		pctx, cancel := context.WithTimeout(ctx, within)
		defer cancel()
		if err := f(pctx); err != nil {
			return fmt.Errorf("%s (within %s): %w", what, within, err)
		}
		return nil
	}
	if err := bounded("restarting istiod", e.mesh.control.RestartControlPlane); err != nil {
		return err
	}
	if err := bounded("waiting for istiod to distribute the roots", func(ctx context.Context) error { return e.waitMeshRoots(ctx, ph.Roots) }); err != nil {
		return err
	}
	e.event(sc, st, results.EventRootRotation, "phase %s: ConfigMap %s holds %s in %s", ph.Name, RootCertConfigMap, certNames(ph.Roots), strings.Join(e.meshNamespaces(), ", "))
	workloads := e.inMeshWorkloads()
	if err := bounded("restarting the workloads", func(ctx context.Context) error { return e.restart(ctx, workloads) }); err != nil {
		return err
	}
	e.event(sc, st, results.EventRootRotation, "phase %s: %s restarted", ph.Name, strings.Join(workloads, ", "))
	if waitNewChains {
		if err := bounded("waiting for every workload to serve a certificate of the new root", func(ctx context.Context) error {
			return e.waitChainsVerify(ctx, workloads, reader, newRoot)
		}); err != nil {
			return err
		}
		e.event(sc, st, results.EventRootRotation, "phase %s: every workload serves a chain of %s", ph.Name, certName(newRoot))
	}
	return nil
}

// checkPluggedCA checks that the cacerts Secret still holds the CA the
// engine was given, if any: replacing a CA someone else put there would
// rotate away from a root the engine does not know.
func (e *Engine) checkPluggedCA(s *corev1.Secret) error {
	b := e.mesh.pluggedCA
	if b == nil {
		return nil
	}
	roots, err := ca.ParseCertificatesPEM(s.Data[ca.RootCertKey])
	if err != nil {
		return fmt.Errorf("%s/%s: %w", s.Namespace, s.Name, err)
	}
	inter, err := ca.ParseCertificatesPEM(s.Data[ca.CACertKey])
	if err != nil {
		return fmt.Errorf("%s/%s: %w", s.Namespace, s.Name, err)
	}
	if !roots[0].Equal(b.Root) || !inter[0].Equal(b.Intermediate) {
		return fmt.Errorf("%s/%s no longer holds the plugged CA meshproof created (root %s); it holds root %s: something else replaced it", s.Namespace, s.Name, certName(b.Root), certName(roots[0]))
	}
	return nil
}

// waitMeshRoots waits until ConfigMap istio-ca-root-cert of every mesh
// namespace holds exactly roots.
func (e *Engine) waitMeshRoots(ctx context.Context, roots []*x509.Certificate) error {
	namespaces := e.meshNamespaces()
	var last string
	err := wait.For(func(ctx context.Context) (bool, error) {
		for _, ns := range namespaces {
			got, err := e.meshRoots(ctx, ns)
			if err != nil {
				if last == "" { // a failed read does not hide what the last one showed
					last = err.Error()
				}
				return false, nil
			}
			if !sameCertSet(got, roots) {
				last = fmt.Sprintf("%s/%s holds %s", ns, RootCertConfigMap, certNames(got))
				return false, nil
			}
		}
		return true, nil
	}, wait.WithContext(ctx), wait.WithInterval(e.suite.Defaults.Interval.Duration), wait.WithTimeout(timeLeft(ctx)), wait.WithImmediate())
	if err != nil {
		return fmt.Errorf("want %s; last seen: %s: %w", certNames(roots), last, err)
	}
	return nil
}

// waitChainsVerify waits until every workload's served chain verifies
// against root.
func (e *Engine) waitChainsVerify(ctx context.Context, workloads []string, reader string, root *x509.Certificate) error {
	pending := map[string]string{}
	for _, w := range workloads {
		pending[w] = "not read yet"
	}
	err := wait.For(func(ctx context.Context) (bool, error) {
		for _, w := range workloads {
			chain, err := e.servedChain(ctx, reader, w)
			if err != nil {
				// A failed read (the pod is being replaced, the wait is cut
				// short) changes nothing of what the last chain showed.
				if _, ok := pending[w]; ok && pending[w] == "not read yet" {
					pending[w] = err.Error()
				}
				continue
			}
			if _, err := ca.VerifyWorkloadChain(chain, root); err != nil {
				pending[w] = err.Error()
			} else {
				delete(pending, w)
			}
		}
		return len(pending) == 0, nil
	}, wait.WithContext(ctx), wait.WithInterval(e.suite.Defaults.Interval.Duration), wait.WithTimeout(timeLeft(ctx)), wait.WithImmediate())
	if err != nil {
		return fmt.Errorf("still not on %s: %s: %w", certName(root), describePending(pending), err)
	}
	return nil
}

// verifyNewRootOnly checks the end state: every workload serves a chain of
// the new root, with its own identity, that the old root does not verify;
// and its sidecar trusts the new root and not the old one.
func (e *Engine) verifyNewRootOnly(ctx context.Context, workloads []string, reader string, oldRoot, newRoot *x509.Certificate) error {
	var errs []error
	for _, name := range workloads {
		w := e.suite.Workload(name)
		chain, err := e.servedChain(ctx, reader, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		id, err := ca.VerifyWorkloadChain(chain, newRoot)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s's chain does not verify against the new root %s: %w", name, certName(newRoot), err))
		case id != w.SPIFFEID(e.cluster.Istio.TrustDomain):
			errs = append(errs, fmt.Errorf("%s's chain is for %q, want %q", name, id, w.SPIFFEID(e.cluster.Istio.TrustDomain)))
		}
		if _, err := ca.VerifyWorkloadChain(chain, oldRoot); err == nil {
			errs = append(errs, fmt.Errorf("%s's chain still verifies against the old root %s", name, certName(oldRoot)))
		}
		server, err := e.readyPod(ctx, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		_, roots, err := e.certs.SidecarSecrets(ctx, server)
		if err != nil {
			errs = append(errs, fmt.Errorf("reading %s's sidecar trust bundle: %w", name, err))
			continue
		}
		if !sameCertSet(roots, []*x509.Certificate{newRoot}) {
			errs = append(errs, fmt.Errorf("%s's sidecar trusts %s, want only the new root %s", name, certNames(roots), certName(newRoot)))
		}
	}
	return errors.Join(errs...)
}

// servedChain reads the chain a workload's sidecar presents, dialled from
// the out-of-mesh reader.
func (e *Engine) servedChain(ctx context.Context, reader, workload string) ([]*x509.Certificate, error) {
	from, err := e.readyPod(ctx, reader)
	if err != nil {
		return nil, err
	}
	server, err := e.readyPod(ctx, workload)
	if err != nil {
		return nil, err
	}
	w := e.suite.Workload(workload)
	chain, err := e.certs.HandshakeChain(ctx, from, server, w.Ports[0].Target()) // the pod itself: its container port
	if err != nil {
		return nil, fmt.Errorf("reading the certificate %s serves: %w", workload, err)
	}
	return chain, nil
}

// sameCertSet reports whether a and b hold the same certificates, in any
// order.
func sameCertSet(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		found := false
		for _, y := range b {
			found = found || x.Equal(y)
		}
		if !found {
			return false
		}
	}
	return true
}

// certName names a CA certificate for a person: its subject and serial.
func certName(c *x509.Certificate) string {
	if c == nil {
		return "<none>"
	}
	serial := c.SerialNumber.Text(16)
	if len(serial) > 8 {
		serial = serial[:8]
	}
	return fmt.Sprintf("%q (serial %s)", c.Subject.String(), serial)
}

func certNames(cs []*x509.Certificate) string {
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = certName(c)
	}
	return "[" + strings.Join(names, ", ") + "]"
}

func describePending(pending map[string]string) string {
	keys := make([]string, 0, len(pending))
	for k := range pending {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + ": " + pending[k]
	}
	return strings.Join(parts, "; ")
}
