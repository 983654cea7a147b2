package lease

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshproof/meshproof/harness/internal/testsupport"
	"github.com/meshproof/meshproof/harness/ownership"
)

var kube testsupport.Shared

func TestMain(m *testing.M) { os.Exit(kube.Main(m)) }

// setup returns a client for the real API server and a namespace name of
// the test's own, not yet created.
func setup(t *testing.T) (context.Context, kubernetes.Interface, string) {
	t.Helper()
	env := kube.Get(t)
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx, cs, "lease-" + rand.String(6)
}

func mustAcquire(t *testing.T, ctx context.Context, cs kubernetes.Interface, holder string, opts ...Option) *Held {
	t.Helper()
	h, err := Acquire(ctx, cs, holder, opts...)
	if err != nil {
		t.Fatalf("Acquire(%s): %v", holder, err)
	}
	return h
}

func stopped(h *Held) bool {
	select {
	case <-h.done:
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

func TestAcquireRenewRelease(t *testing.T) {
	ctx, cs, ns := setup(t)
	h := mustAcquire(t, ctx, cs, "run-a", WithNamespace(ns), WithDuration(3*time.Second))
	if !h.CreatedNamespace() || h.Namespace() != ns || h.TookOverFrom() != "" {
		t.Errorf("created namespace %v, namespace %q, took over from %q; want a new namespace and a free Lease", h.CreatedNamespace(), h.Namespace(), h.TookOverFrom())
	}
	nsObj, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil || nsObj.Labels[ownership.ManagedByLabel] != ownership.ManagedByValue {
		t.Errorf("namespace %s = %v, %v; want it labelled managed-by meshproof", ns, nsObj.Labels, err)
	}
	first, err := cs.CoordinationV1().Leases(ns).Get(ctx, Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ptr.Deref(first.Spec.HolderIdentity, "") != "run-a" || ptr.Deref(first.Spec.LeaseDurationSeconds, 0) != 3 {
		t.Errorf("Lease spec = %+v", first.Spec)
	}
	if live, err := RunIsLive(ctx, cs, "run-a", WithNamespace(ns)); err != nil || !live {
		t.Errorf("RunIsLive(run-a) = %v, %v while it holds the Lease", live, err)
	}
	// Renewed every second: after 2.5s the renew time has moved and the
	// acquire time has not.
	time.Sleep(2500 * time.Millisecond)
	renewed, err := cs.CoordinationV1().Leases(ns).Get(ctx, Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !renewed.Spec.RenewTime.After(first.Spec.RenewTime.Time) || !renewed.Spec.AcquireTime.Equal(first.Spec.AcquireTime) {
		t.Errorf("renew time %v -> %v, acquire time %v -> %v; want renewed, acquire kept", first.Spec.RenewTime, renewed.Spec.RenewTime, first.Spec.AcquireTime, renewed.Spec.AcquireTime)
	}

	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if !stopped(h) {
		t.Error("the renewing goroutine still runs after Release")
	}
	if _, err := cs.CoordinationV1().Leases(ns).Get(ctx, Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("Lease after Release: %v, want it deleted", err)
	}
	if err := h.Release(ctx); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if live, _ := RunIsLive(ctx, cs, "run-a", WithNamespace(ns)); live {
		t.Error("RunIsLive(run-a) after Release")
	}
	again := mustAcquire(t, ctx, cs, "run-b", WithNamespace(ns), WithWait(0))
	defer again.Release(ctx)
	if again.CreatedNamespace() {
		t.Error("a second run reports creating the namespace the first created")
	}
}

func TestSecondRunWaitsThenFailsNamingHolder(t *testing.T) {
	ctx, cs, ns := setup(t)
	a := mustAcquire(t, ctx, cs, "run-a", WithNamespace(ns), WithDuration(3*time.Second))
	defer a.Release(ctx)

	var logs bytes.Buffer
	start := time.Now()
	_, err := Acquire(ctx, cs, "run-b", WithNamespace(ns), WithWait(4*time.Second), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	waited := time.Since(start)
	var busy *BusyError
	if !errors.As(err, &busy) {
		t.Fatalf("second Acquire = %v, want a BusyError", err)
	}
	// run-a renews every second, so its Lease never expires while run-b
	// waits: run-b gives up after its bound, not earlier.
	if waited < 4*time.Second || busy.Waited < 4*time.Second {
		t.Errorf("gave up after %s (reported %s), want the full 4s wait", waited, busy.Waited)
	}
	if busy.Holder != "run-a" || busy.Age < 4*time.Second || busy.Renew > 2*time.Second {
		t.Errorf("BusyError = %+v; want holder run-a, held at least 4s, renewed within 2s", busy)
	}
	for _, want := range []string{"in use by meshproof run run-a", "Lease " + ns + "/" + Name, "waited 4s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if !strings.Contains(logs.String(), "waiting for it") || !strings.Contains(logs.String(), "holder=run-a") {
		t.Errorf("no progress line about waiting; log:\n%s", logs.String())
	}
	if _, err := Acquire(ctx, cs, "run-c", WithNamespace(ns), WithWait(0)); !errors.As(err, &busy) {
		t.Errorf("Acquire without waiting = %v, want a BusyError at once", err)
	}
}

func TestSecondRunGetsTheLeaseWhenTheFirstReleases(t *testing.T) {
	ctx, cs, ns := setup(t)
	a := mustAcquire(t, ctx, cs, "run-a", WithNamespace(ns), WithDuration(30*time.Second))
	var wg sync.WaitGroup
	wg.Go(func() {
		time.Sleep(time.Second)
		if err := a.Release(ctx); err != nil {
			t.Error(err)
		}
	})
	b := mustAcquire(t, ctx, cs, "run-b", WithNamespace(ns), WithWait(20*time.Second))
	wg.Wait()
	defer b.Release(ctx)
	if b.TookOverFrom() != "" {
		t.Errorf("took over from %q, but run-a released its Lease", b.TookOverFrom())
	}
	if live, _ := RunIsLive(ctx, cs, "run-b", WithNamespace(ns)); !live {
		t.Error("run-b is not live after acquiring")
	}
}

// TestCrashedRunsLeaseIsTakenOver: a run that stops renewing (its context
// ends without Release, as when the process dies) is not live once its
// Lease expires, and the next run takes the Lease over and learns whose
// leftovers it may sweep.
func TestCrashedRunsLeaseIsTakenOver(t *testing.T) {
	ctx, cs, ns := setup(t)
	crashCtx, crash := context.WithCancel(ctx)
	a := mustAcquire(t, crashCtx, cs, "run-a", WithNamespace(ns), WithDuration(2*time.Second))
	crash()
	if !stopped(a) {
		t.Fatal("renewal goes on after the run's context ended")
	}
	before, err := cs.CoordinationV1().Leases(ns).Get(ctx, Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if live, _ := RunIsLive(ctx, cs, "run-a", WithNamespace(ns)); !live {
		t.Error("run-a is not live right after it stopped renewing; its Lease has not expired yet")
	}
	b := mustAcquire(t, ctx, cs, "run-b", WithNamespace(ns), WithWait(10*time.Second))
	defer b.Release(ctx)
	if b.TookOverFrom() != "run-a" {
		t.Errorf("TookOverFrom = %q, want run-a", b.TookOverFrom())
	}
	after, err := cs.CoordinationV1().Leases(ns).Get(ctx, Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ptr.Deref(after.Spec.HolderIdentity, "") != "run-b" || ptr.Deref(after.Spec.LeaseTransitions, 0) != ptr.Deref(before.Spec.LeaseTransitions, 0)+1 {
		t.Errorf("Lease after takeover = %+v", after.Spec)
	}
	if live, _ := RunIsLive(ctx, cs, "run-a", WithNamespace(ns)); live {
		t.Error("RunIsLive(run-a) after its Lease expired and was taken over")
	}
	// The crashed run's late Release must not delete run-b's Lease.
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if live, _ := RunIsLive(ctx, cs, "run-b", WithNamespace(ns)); !live {
		t.Error("run-a's Release removed run-b's Lease")
	}
}

func TestLostLeaseIsReported(t *testing.T) {
	ctx, cs, ns := setup(t)
	a := mustAcquire(t, ctx, cs, "run-a", WithNamespace(ns), WithDuration(3*time.Second))
	defer a.Release(ctx)
	cur, err := cs.CoordinationV1().Leases(ns).Get(ctx, Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Spec.HolderIdentity = ptr.To("intruder")
	if _, err := cs.CoordinationV1().Leases(ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("Lost not closed after another holder took the Lease")
	}
	if err := a.Err(); err == nil || !strings.Contains(err.Error(), "now held by run intruder") {
		t.Errorf("Err = %v", err)
	}
	if !stopped(a) {
		t.Error("renewal goes on after the Lease was lost")
	}
}

func TestOptionsAreChecked(t *testing.T) {
	for _, tc := range []struct {
		opts []Option
		want string
	}{
		{[]Option{WithDuration(time.Millisecond)}, "too short"},
		{[]Option{WithWait(-time.Second)}, "negative"},
	} {
		if _, err := Acquire(context.Background(), nil, "run", tc.opts...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Acquire = %v, want %q", err, tc.want)
		}
	}
	if _, err := Acquire(context.Background(), nil, ""); err == nil {
		t.Error("Acquire with an empty holder succeeded")
	}
}
