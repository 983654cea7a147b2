// Package lease makes runs on one cluster take turns: a run holds a
// coordination.k8s.io/v1 Lease (Name in Namespace) for as long as it
// works on the cluster and renews it in the background; a second run waits
// for the Lease up to a bound, then fails naming the holder and how long it
// has held the cluster. A run that crashed stops renewing, its Lease
// expires, and the next run takes it over; that run may then sweep the
// crashed run's leftovers, which RunIsLive tells apart from a live run's.
//
// Expiry is judged from the Lease's renewTime and the local clock, so the
// machines that run meshproof against one cluster are assumed to keep time
// within a few seconds of each other (NTP); the default duration leaves
// ample margin.
package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/meshproof/meshproof/harness/ownership"
)

const (
	// Namespace is the namespace meshproof owns on a cluster for its run
	// coordination: the Lease lives here, and run ledgers are kept here.
	// It is created by the first run that needs it (Held.CreatedNamespace
	// says so, for the ledger) and labelled managed-by meshproof.
	Namespace = "meshproof-system"
	// Name is the Lease's name: one per cluster, so one run at a time.
	Name = "meshproof-run"

	defaultDuration = 60 * time.Second
	defaultWait     = 10 * time.Minute
)

// Option configures Acquire and RunIsLive.
type Option func(*options)

type options struct {
	namespace, name string
	duration        time.Duration
	renewEvery      time.Duration
	wait            time.Duration
	poll            time.Duration
	logger          *slog.Logger
	now             func() time.Time
}

// WithNamespace and WithName place the Lease elsewhere (tests; two tools
// sharing a cluster must agree on both).
func WithNamespace(ns string) Option { return func(o *options) { o.namespace = ns } }

// WithDuration is how long the Lease stays valid without renewal: a crashed
// run blocks the cluster that long. Default 60s. The Lease is renewed every
// third of it.
func WithDuration(d time.Duration) Option { return func(o *options) { o.duration = d } }

// WithWait bounds how long Acquire waits for another run's Lease. Default
// 10m; 0 fails at once.
func WithWait(d time.Duration) Option { return func(o *options) { o.wait = d } }

// WithLogger receives progress: waiting for another run, taking over an
// expired Lease, a failed renewal.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

func newOptions(opts []Option) (options, error) {
	o := options{namespace: Namespace, name: Name, duration: defaultDuration, wait: defaultWait, logger: slog.New(slog.DiscardHandler), now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if o.duration < time.Second {
		return o, fmt.Errorf("lease: duration %s is too short; at least 1s", o.duration)
	}
	if o.wait < 0 {
		return o, fmt.Errorf("lease: wait %s is negative", o.wait)
	}
	o.renewEvery = o.duration / 3
	o.poll = min(o.renewEvery, 2*time.Second)
	return o, nil
}

// BusyError is Acquire's failure when another run held the Lease for the
// whole wait.
type BusyError struct {
	Lease  string        // namespace/name
	Holder string        // the other run's id
	Age    time.Duration // how long it has held the Lease
	Renew  time.Duration // since it last renewed
	Waited time.Duration
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("the cluster is in use by meshproof run %s: it has held Lease %s for %s (renewed %s ago); waited %s. Run again when it has finished, or, if it crashed, once its Lease expires",
		e.Holder, e.Lease, e.Age.Round(time.Second), e.Renew.Round(time.Second), e.Waited.Round(time.Second))
}

// Held is a Lease this run holds. Release it when the run is over.
type Held struct {
	o                options
	cs               kubernetes.Interface
	holder           string
	createdNamespace bool
	tookOverFrom     string

	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	err    error // why renewal stopped before Release, if it did
	lost   chan struct{}
}

// Acquire takes the cluster's Lease for run holder (its run id), creating
// the Namespace and the Lease if needed, waiting while another run holds a
// Lease that has not expired and taking over one that has. The returned
// Held renews the Lease until Release or until ctx ends.
func Acquire(ctx context.Context, cs kubernetes.Interface, holder string, opts ...Option) (*Held, error) {
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	if holder == "" {
		return nil, errors.New("lease: the holder (run id) is empty")
	}
	h := &Held{o: o, cs: cs, holder: holder, lost: make(chan struct{})}
	if h.createdNamespace, err = ensureNamespace(ctx, cs, o.namespace); err != nil {
		return nil, err
	}
	start := o.now()
	var busy *coordinationv1.Lease // the other run's, as last seen
	logged := false
	// Attempts use the run's ctx, not the poll's: the poll's deadline
	// would otherwise turn the last attempt into a client-side error
	// instead of the BusyError the wait ends with.
	try := func(context.Context) (bool, error) {
		got, other, err := h.tryAcquire(ctx)
		if err != nil || got {
			return got, err
		}
		if other == nil {
			return false, nil // no holder seen (a conflict, the namespace re-created): look again
		}
		busy = other
		if !logged {
			e := h.busy(other, 0)
			o.logger.Info("another meshproof run holds the cluster; waiting for it", "lease", e.Lease, "holder", e.Holder, "held", e.Age.Round(time.Second), "wait", o.wait)
			logged = true
		}
		return false, nil
	}
	gaveUp := func() error {
		if busy == nil {
			return fmt.Errorf("lease %s/%s: not acquired within %s (other runs kept writing it)", o.namespace, o.name, o.wait)
		}
		return h.busy(busy, o.now().Sub(start))
	}
	if got, err := try(ctx); err != nil {
		return nil, err
	} else if !got {
		if o.wait == 0 {
			return nil, gaveUp()
		}
		err := wait.PollUntilContextTimeout(ctx, o.poll, o.wait, false, try)
		if err != nil {
			if ctx.Err() != nil || !wait.Interrupted(err) {
				return nil, fmt.Errorf("lease %s/%s: %w", o.namespace, o.name, err)
			}
			// A last look at the bound, so that the error describes the
			// holder as it is now (the poll may have slept since).
			if got, err := try(ctx); err != nil {
				return nil, err
			} else if !got {
				return nil, gaveUp()
			}
		}
	}
	if h.tookOverFrom != "" {
		o.logger.Info("took over the expired Lease of a run that stopped renewing it", "lease", o.namespace+"/"+o.name, "previous", h.tookOverFrom)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	h.cancel, h.done = cancel, make(chan struct{})
	go h.renewLoop(ctx, rctx)
	return h, nil
}

// ensureNamespace creates ns, labelled as meshproof's, if it does not
// exist, and reports whether it did.
func ensureNamespace(ctx context.Context, cs kubernetes.Interface, ns string) (bool, error) {
	_, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err == nil {
		return false, nil
	}
	if !apierrors.IsNotFound(err) {
		return false, fmt.Errorf("lease: read namespace %s: %w", ns, err)
	}
	labels := map[string]string{ownership.ManagedByLabel: ownership.ManagedByValue}
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsAlreadyExists(err): // another run was first
		return false, nil
	default:
		return false, fmt.Errorf("lease: create namespace %s: %w", ns, err)
	}
}

// tryAcquire makes one attempt. It returns the other holder when the Lease
// is validly held by another run. Conflicts (another run wrote first) and
// a namespace being deleted are not errors: the next attempt decides.
func (h *Held) tryAcquire(ctx context.Context) (bool, *coordinationv1.Lease, error) {
	leases := h.cs.CoordinationV1().Leases(h.o.namespace)
	now := metav1.NewMicroTime(h.o.now())
	cur, err := leases.Get(ctx, h.o.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l := &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: h.o.name, Namespace: h.o.namespace, Labels: map[string]string{ownership.ManagedByLabel: ownership.ManagedByValue}},
			Spec:       h.spec(now, 0),
		}
		_, err = leases.Create(ctx, l, metav1.CreateOptions{})
		if apierrors.IsNotFound(err) {
			// The namespace was deleted since Acquire looked (the end of
			// the run that created it): create it again.
			created, err := ensureNamespace(ctx, h.cs, h.o.namespace)
			h.createdNamespace = h.createdNamespace || created
			return false, nil, err
		}
		return retryable(err)
	}
	if err != nil {
		return false, nil, fmt.Errorf("lease: read %s/%s: %w", h.o.namespace, h.o.name, err)
	}
	holder := ptr.Deref(cur.Spec.HolderIdentity, "")
	if holder != "" && holder != h.holder && !expired(cur, h.o.now()) {
		return false, cur, nil
	}
	transitions := ptr.Deref(cur.Spec.LeaseTransitions, 0)
	if holder != h.holder {
		transitions++
	}
	next := cur.DeepCopy()
	next.Spec = h.spec(now, transitions)
	if holder == h.holder && cur.Spec.AcquireTime != nil {
		next.Spec.AcquireTime = cur.Spec.AcquireTime
	}
	// The update carries cur's resourceVersion: if another run took the
	// Lease since we read it, it fails with a conflict and we look again.
	if _, err := leases.Update(ctx, next, metav1.UpdateOptions{}); err != nil {
		return retryable(err)
	}
	if holder != "" && holder != h.holder {
		h.tookOverFrom = holder
	}
	return true, nil, nil
}

func retryable(err error) (bool, *coordinationv1.Lease, error) {
	switch {
	case err == nil:
		return true, nil, nil
	case apierrors.IsConflict(err), apierrors.IsAlreadyExists(err):
		return false, nil, nil
	case apierrors.IsForbidden(err) && apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause):
		return false, nil, nil
	default:
		return false, nil, fmt.Errorf("lease: %w", err)
	}
}

func (h *Held) spec(now metav1.MicroTime, transitions int32) coordinationv1.LeaseSpec {
	return coordinationv1.LeaseSpec{
		HolderIdentity:       ptr.To(h.holder),
		LeaseDurationSeconds: ptr.To(int32(h.o.duration / time.Second)),
		AcquireTime:          &now,
		RenewTime:            &now,
		LeaseTransitions:     ptr.To(transitions),
	}
}

func (h *Held) busy(l *coordinationv1.Lease, waited time.Duration) *BusyError {
	now := h.o.now()
	e := &BusyError{Lease: h.o.namespace + "/" + h.o.name, Holder: ptr.Deref(l.Spec.HolderIdentity, ""), Waited: waited}
	if l.Spec.AcquireTime != nil {
		e.Age = now.Sub(l.Spec.AcquireTime.Time)
	}
	if l.Spec.RenewTime != nil {
		e.Renew = now.Sub(l.Spec.RenewTime.Time)
	}
	return e
}

// expired reports whether l's holder has not renewed it within its
// duration.
func expired(l *coordinationv1.Lease, now time.Time) bool {
	last := l.Spec.RenewTime
	if last == nil {
		last = l.Spec.AcquireTime
	}
	if last == nil || l.Spec.LeaseDurationSeconds == nil {
		return true
	}
	return now.After(last.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second))
}

// renewLoop renews the Lease every third of its duration until Release
// (rctx) or the run's context (ctx) ends. A failed renewal is retried at
// the next tick; losing the Lease to another run (it expired meanwhile)
// ends the loop and closes Lost.
func (h *Held) renewLoop(ctx, rctx context.Context) {
	defer close(h.done)
	t := time.NewTicker(h.o.renewEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-rctx.Done():
			return
		case <-t.C:
		}
		err := h.renew(rctx)
		if err == nil || rctx.Err() != nil {
			continue
		}
		var lost *lostError
		if errors.As(err, &lost) {
			h.mu.Lock()
			h.err = err
			h.mu.Unlock()
			close(h.lost)
			h.o.logger.Error("lost the cluster's Lease: another run may now use the cluster", "lease", h.o.namespace+"/"+h.o.name, "err", err)
			return
		}
		h.o.logger.Warn("renewing the cluster's Lease failed; retrying", "lease", h.o.namespace+"/"+h.o.name, "err", err)
	}
}

type lostError struct{ holder string }

func (e *lostError) Error() string {
	if e.holder == "" {
		return "the Lease was released or deleted by someone else"
	}
	return fmt.Sprintf("the Lease is now held by run %s", e.holder)
}

func (h *Held) renew(ctx context.Context) error {
	leases := h.cs.CoordinationV1().Leases(h.o.namespace)
	cur, err := leases.Get(ctx, h.o.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return &lostError{}
	}
	if err != nil {
		return err
	}
	if holder := ptr.Deref(cur.Spec.HolderIdentity, ""); holder != h.holder {
		return &lostError{holder: holder}
	}
	cur.Spec.RenewTime = ptr.To(metav1.NewMicroTime(h.o.now()))
	_, err = leases.Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

// CreatedNamespace reports that Acquire created Namespace, for the run's
// ledger.
func (h *Held) CreatedNamespace() bool { return h.createdNamespace }

// Namespace is where the Lease lives.
func (h *Held) Namespace() string { return h.o.namespace }

// TookOverFrom is the run whose expired Lease Acquire took over ("" if the
// Lease was free): that run stopped without releasing it, so its leftovers
// may be swept.
func (h *Held) TookOverFrom() string { return h.tookOverFrom }

// Lost is closed when the Lease was lost (another run took it after a
// renewal gap longer than its duration, or it was deleted); Err says why.
func (h *Held) Lost() <-chan struct{} { return h.lost }

// Err is why the Lease was lost, nil while it is held.
func (h *Held) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// Release stops renewing, waits for the renewing goroutine to end and
// deletes the Lease if this run still holds it, so the next run need not
// wait for it to expire. It is safe to call more than once.
func (h *Held) Release(ctx context.Context) error {
	h.cancel()
	<-h.done
	leases := h.cs.CoordinationV1().Leases(h.o.namespace)
	cur, err := leases.Get(ctx, h.o.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("lease: release %s/%s: %w", h.o.namespace, h.o.name, err)
	}
	if ptr.Deref(cur.Spec.HolderIdentity, "") != h.holder {
		return nil // another run's now; not ours to delete
	}
	// The preconditions make the delete fail rather than remove a Lease
	// that another run took over since the read.
	err = leases.Delete(ctx, h.o.name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &cur.UID, ResourceVersion: &cur.ResourceVersion}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("lease: release %s/%s: %w", h.o.namespace, h.o.name, err)
	}
	return nil
}

// RunIsLive reports whether run runID currently holds the cluster's Lease
// and has renewed it within its duration. A run that is not live never
// works on the cluster again, so what its ledger lists may be swept; a
// live run's objects are never touched.
func RunIsLive(ctx context.Context, cs kubernetes.Interface, runID string, opts ...Option) (bool, error) {
	o, err := newOptions(opts)
	if err != nil {
		return false, err
	}
	l, err := cs.CoordinationV1().Leases(o.namespace).Get(ctx, o.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("lease: read %s/%s: %w", o.namespace, o.name, err)
	}
	return ptr.Deref(l.Spec.HolderIdentity, "") == runID && !expired(l, o.now()), nil
}
