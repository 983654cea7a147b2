// Package ledger records what one meshproof run created on a cluster, so
// that its teardown, and the sweep of a crashed run's leftovers, remove
// exactly that and nothing of the user's.
//
// A run writes its ledger before it creates anything (so a crash between
// the two leaves nothing unlisted) to two places: a ConfigMap
// meshproof-ledger-<run id> in the coordination namespace (lease.Namespace,
// labelled with the run id; another process finds it there after a crash)
// and ledger.json in the run folder (for the user). It lists the
// namespaces, Helm releases, CRDs and other objects the run created, and
// the labels it set on namespaces that existed before it.
//
// Undo (Teardown) deletes only what the ledger lists, and of that only
// what is still the run's: an object recorded with its UID must still have
// it; one recorded before it existed must carry the run's run-id label. A
// namespace that existed before the run is never deleted; labels the run
// set there are restored to what it found (removed if it added them), unless
// someone changed them since. Sweep undoes the ledgers of runs that are no
// longer live (their Lease expired): a crashed run's leftovers, never a
// live run's.
package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/lease"
	"github.com/meshproof/meshproof/harness/ownership"
)

const (
	// FileName is the ledger's file in the run folder.
	FileName = "ledger.json"
	// configMapPrefix + run id names the ledger's ConfigMap.
	configMapPrefix = "meshproof-ledger-"
	dataKey         = "ledger.json"
)

// Record is a ledger's content, as stored.
type Record struct {
	RunID string `json:"runID"`
	// Namespaces the run created; deleted at teardown.
	Namespaces []Object `json:"namespaces,omitempty"`
	// Releases are Helm releases the run installed.
	Releases []Release `json:"releases,omitempty"`
	// CRDs the run installed (directly or through a release).
	CRDs []Object `json:"crds,omitempty"`
	// Objects are the other objects the run created, namespaced or not.
	Objects []Object `json:"objects,omitempty"`
	// Labels the run set on namespaces that existed before it.
	Labels []LabelChange `json:"labels,omitempty"`
	// Removed are namespaces the run created and removed before its
	// teardown (isolated scenarios' own, when each ended): kept for the
	// record, nothing left to undo.
	Removed []Object `json:"removed,omitempty"`
	// TornDown is when Undo removed everything, nil before.
	TornDown *time.Time `json:"tornDown,omitempty"`
}

// Object identifies one object.
type Object struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
	// UID, when known, must still match for the object to be deleted.
	UID types.UID `json:"uid,omitempty"`
}

func (o Object) String() string {
	if o.Namespace == "" {
		return o.Kind + " " + o.Name
	}
	return o.Kind + " " + o.Namespace + "/" + o.Name
}

// Release is a Helm release.
type Release struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// LabelChange is a label the run set on a namespace it did not create.
type LabelChange struct {
	Namespace string `json:"namespace"`
	Key       string `json:"key"`
	Value     string `json:"value"`
	// Previous is the value the run found; nil if the label was absent.
	Previous *string `json:"previous,omitempty"`
}

// Ledger is one run's ledger, open for recording or for teardown. Safe
// for concurrent use.
type Ledger struct {
	c         client.Client
	namespace string
	path      string // "" when loaded from the cluster without a run folder

	mu  sync.Mutex
	rec Record
}

// Option configures Open, Load and List.
type Option func(*Ledger)

// WithNamespace keeps ledgers in ns instead of lease.Namespace.
func WithNamespace(ns string) Option { return func(l *Ledger) { l.namespace = ns } }

// Open starts the ledger of run runID: an empty ConfigMap in the
// coordination namespace (which must exist: lease.Acquire creates it) and
// runDir/ledger.json.
func Open(ctx context.Context, c client.Client, runID, runDir string, opts ...Option) (*Ledger, error) {
	l := &Ledger{c: c, namespace: lease.Namespace, path: filepath.Join(runDir, FileName), rec: Record{RunID: runID}}
	for _, o := range opts {
		o(l)
	}
	if runID == "" {
		return nil, errors.New("ledger: the run id is empty")
	}
	data, err := json.MarshalIndent(l.rec, "", "  ")
	if err != nil {
		return nil, err
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: configMapPrefix + runID, Namespace: l.namespace, Labels: ownership.Labels(runID)},
		Data:       map[string]string{dataKey: string(data)},
	}
	if err := c.Create(ctx, cm); err != nil {
		return nil, fmt.Errorf("ledger: create ConfigMap %s/%s: %w", l.namespace, cm.Name, err)
	}
	if err := l.writeFile(data); err != nil {
		return nil, err
	}
	return l, nil
}

// Load reads run runID's ledger from the cluster, e.g. to sweep the
// leftovers of a run that crashed (check lease.RunIsLive first: a live
// run's ledger must not be undone). The result has no run folder.
func Load(ctx context.Context, c client.Client, runID string, opts ...Option) (*Ledger, error) {
	l := &Ledger{c: c, namespace: lease.Namespace}
	for _, o := range opts {
		o(l)
	}
	var cm corev1.ConfigMap
	if err := c.Get(ctx, client.ObjectKey{Namespace: l.namespace, Name: configMapPrefix + runID}, &cm); err != nil {
		return nil, fmt.Errorf("ledger: read the ledger of run %s: %w", runID, err)
	}
	if err := json.Unmarshal([]byte(cm.Data[dataKey]), &l.rec); err != nil {
		return nil, fmt.Errorf("ledger: ConfigMap %s/%s: %w", l.namespace, cm.Name, err)
	}
	return l, nil
}

// ReadFile reads a ledger file from a run folder.
func ReadFile(path string) (Record, error) {
	var rec Record
	b, err := os.ReadFile(path)
	if err != nil {
		return rec, fmt.Errorf("ledger: %w", err)
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("ledger: %s: %w", path, err)
	}
	return rec, nil
}

// List returns the run ids of the ledgers on the cluster, sorted (run ids
// sort by start time).
func List(ctx context.Context, c client.Client, opts ...Option) ([]string, error) {
	l := &Ledger{namespace: lease.Namespace}
	for _, o := range opts {
		o(l)
	}
	var cms corev1.ConfigMapList
	if err := c.List(ctx, &cms, client.InNamespace(l.namespace), client.HasLabels{ownership.RunIDLabel}, client.MatchingLabels{ownership.ManagedByLabel: ownership.ManagedByValue}); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("ledger: list ledgers in %s: %w", l.namespace, err)
	}
	var ids []string
	for _, cm := range cms.Items {
		if _, ok := cm.Data[dataKey]; ok {
			ids = append(ids, cm.Labels[ownership.RunIDLabel])
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// Record is a copy of what the ledger holds.
func (l *Ledger) Record() Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, _ := json.Marshal(l.rec)
	var out Record
	_ = json.Unmarshal(b, &out)
	return out
}

// Namespace is where the ledger's ConfigMap lives.
func (l *Ledger) Namespace() string { return l.namespace }

// RunID is the run whose ledger this is.
func (l *Ledger) RunID() string { return l.rec.RunID }

// update applies change to the record and saves it, cluster first.
func (l *Ledger) update(ctx context.Context, change func(*Record)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	change(&l.rec)
	data, err := json.MarshalIndent(l.rec, "", "  ")
	if err != nil {
		return err
	}
	patch, err := json.Marshal(map[string]any{"data": map[string]string{dataKey: string(data)}})
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: configMapPrefix + l.rec.RunID, Namespace: l.namespace}}
	if err := l.c.Patch(ctx, cm, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("ledger: save to ConfigMap %s/%s: %w", l.namespace, cm.Name, err)
	}
	return l.writeFile(data)
}

func (l *Ledger) writeFile(data []byte) error {
	if l.path == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	tmp := l.path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	if err := os.Rename(tmp, l.path); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	return nil
}

// RecordRelease records a Helm release before the run installs it.
func (l *Ledger) RecordRelease(ctx context.Context, namespace, name string) error {
	r := Release{Namespace: namespace, Name: name}
	return l.update(ctx, func(rec *Record) {
		if !slices.Contains(rec.Releases, r) {
			rec.Releases = append(rec.Releases, r)
		}
	})
}

// RecordCRD records a CRD the run installed, by name and UID (read now),
// so that a CRD recreated by someone else later is not deleted.
func (l *Ledger) RecordCRD(ctx context.Context, name string) error {
	var crd metav1.PartialObjectMetadata
	crd.SetGroupVersionKind(crdGVK)
	if err := l.c.Get(ctx, client.ObjectKey{Name: name}, &crd); err != nil {
		return fmt.Errorf("ledger: read CRD %s: %w", name, err)
	}
	o := Object{APIVersion: crdGVK.GroupVersion().String(), Kind: crdGVK.Kind, Name: name, UID: crd.UID}
	return l.update(ctx, func(rec *Record) { rec.CRDs = appendObject(rec.CRDs, o) })
}

var crdGVK = schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"}

// RecordObject records an object the run is about to create (call it
// before creating; obj must carry ownership.Labels(runID), which teardown
// checks) or has created (then its UID is kept).
func (l *Ledger) RecordObject(ctx context.Context, obj client.Object) error {
	return l.RecordObjects(ctx, obj)
}

// RecordObjects records several objects as RecordObject does, in one write
// of the ledger.
func (l *Ledger) RecordObjects(ctx context.Context, objs ...client.Object) error {
	entries := make([]Object, len(objs))
	for i, obj := range objs {
		gvk, err := l.c.GroupVersionKindFor(obj)
		if err != nil {
			return fmt.Errorf("ledger: kind of %s: %w", obj.GetName(), err)
		}
		entries[i] = Object{APIVersion: gvk.GroupVersion().String(), Kind: gvk.Kind, Namespace: obj.GetNamespace(), Name: obj.GetName(), UID: obj.GetUID()}
	}
	return l.update(ctx, func(rec *Record) {
		for _, o := range entries {
			if o.Kind == "Namespace" && o.APIVersion == "v1" {
				rec.Namespaces = appendObject(rec.Namespaces, o)
				continue
			}
			rec.Objects = appendObject(rec.Objects, o)
		}
	})
}

// RemoveNamespaces deletes namespaces the run created before its teardown
// (an isolated scenario's, when it ends), with everything in them, and
// takes them and the objects recorded in them off the ledger. Only what is
// still the run's is deleted, as in Undo; it does not wait for the
// deletions to finish.
func (l *Ledger) RemoveNamespaces(ctx context.Context, names ...string) error {
	rec := l.Record()
	var errs []error
	var gone []string
	for _, o := range rec.Namespaces {
		if !slices.Contains(names, o.Name) || o.Name == l.namespace {
			continue
		}
		if err := l.deleteOwned(ctx, o); err != nil {
			errs = append(errs, err)
			continue
		}
		gone = append(gone, o.Name)
	}
	if len(gone) > 0 {
		if err := l.update(ctx, func(rec *Record) {
			for _, o := range rec.Namespaces {
				if slices.Contains(gone, o.Name) {
					rec.Removed = append(rec.Removed, o)
				}
			}
			rec.Namespaces = slices.DeleteFunc(rec.Namespaces, func(o Object) bool { return slices.Contains(gone, o.Name) })
			rec.Objects = slices.DeleteFunc(rec.Objects, func(o Object) bool { return slices.Contains(gone, o.Namespace) })
		}); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// appendObject adds o, or replaces the entry of the same object (a UID
// learnt after creation).
func appendObject(list []Object, o Object) []Object {
	for i, e := range list {
		if e.APIVersion == o.APIVersion && e.Kind == o.Kind && e.Namespace == o.Namespace && e.Name == o.Name {
			if o.UID != "" {
				list[i].UID = o.UID
			}
			return list
		}
	}
	return append(list, o)
}

// RecordCreatedNamespace records a namespace something else created for
// the run just now (lease.Acquire's coordination namespace when
// Held.CreatedNamespace, Istio's namespace), by UID.
func (l *Ledger) RecordCreatedNamespace(ctx context.Context, name string) error {
	var ns corev1.Namespace
	if err := l.c.Get(ctx, client.ObjectKey{Name: name}, &ns); err != nil {
		return fmt.Errorf("ledger: read namespace %s: %w", name, err)
	}
	o := Object{APIVersion: "v1", Kind: "Namespace", Name: name, UID: ns.UID}
	return l.update(ctx, func(rec *Record) { rec.Namespaces = appendObject(rec.Namespaces, o) })
}

// EnsureNamespace makes namespace name exist with labels, for the run. A
// missing namespace is recorded, then created with the run's ownership
// labels; an existing one (the user's) only gets labels, each recorded
// with the value it had, so teardown can restore it. It reports whether
// the run created the namespace.
func (l *Ledger) EnsureNamespace(ctx context.Context, name string, labels map[string]string) (created bool, err error) {
	var ns corev1.Namespace
	err = l.c.Get(ctx, client.ObjectKey{Name: name}, &ns)
	if apierrors.IsNotFound(err) {
		ns = corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: ownership.Labels(l.rec.RunID)}}
		for k, v := range labels {
			ns.Labels[k] = v
		}
		ns.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Namespace"))
		if err := l.RecordObject(ctx, &ns); err != nil {
			return false, err
		}
		err = l.c.Create(ctx, &ns)
		if err == nil {
			return true, l.RecordObject(ctx, &ns) // now with its UID
		}
		if !apierrors.IsAlreadyExists(err) {
			return false, fmt.Errorf("ledger: create namespace %s: %w", name, err)
		}
		// Someone else created it meanwhile: it is theirs. The entry
		// (without a UID) stays harmless: the namespace lacks the run's
		// label, so teardown will not delete it.
		err = l.c.Get(ctx, client.ObjectKey{Name: name}, &ns)
	}
	if err != nil {
		return false, fmt.Errorf("ledger: read namespace %s: %w", name, err)
	}
	return false, l.SetNamespaceLabels(ctx, name, labels)
}

// SetNamespaceLabels sets labels on a namespace the run did not create,
// recording each label's previous value first.
func (l *Ledger) SetNamespaceLabels(ctx context.Context, name string, labels map[string]string) error {
	var ns corev1.Namespace
	if err := l.c.Get(ctx, client.ObjectKey{Name: name}, &ns); err != nil {
		return fmt.Errorf("ledger: read namespace %s: %w", name, err)
	}
	var changes []LabelChange
	for k, v := range labels {
		old, had := ns.Labels[k]
		if had && old == v {
			continue // found as wanted: not the run's to remove
		}
		ch := LabelChange{Namespace: name, Key: k, Value: v}
		if had {
			ch.Previous = &old
		}
		changes = append(changes, ch)
	}
	if len(changes) == 0 {
		return nil
	}
	slices.SortFunc(changes, func(a, b LabelChange) int { return cmpString(a.Key, b.Key) })
	if err := l.update(ctx, func(rec *Record) {
		for _, ch := range changes {
			if !slices.ContainsFunc(rec.Labels, func(e LabelChange) bool { return e.Namespace == ch.Namespace && e.Key == ch.Key }) {
				rec.Labels = append(rec.Labels, ch) // the first value found is the one to restore
			}
		}
	}); err != nil {
		return err
	}
	set := map[string]any{}
	for _, ch := range changes {
		set[ch.Key] = ch.Value
	}
	return patchLabels(ctx, l.c, name, set)
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func patchLabels(ctx context.Context, c client.Client, namespace string, labels map[string]any) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	if err != nil {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if err := c.Patch(ctx, ns, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("ledger: label namespace %s: %w", namespace, err)
	}
	return nil
}

// Uninstaller uninstalls one Helm release (package istio provides one).
type Uninstaller func(ctx context.Context, r Release) error

// Undo removes what the ledger lists, in reverse dependency order: Helm
// releases (through uninstall; nil is refused when releases are listed),
// objects, CRDs, then labels on the user's namespaces, then the namespaces
// the run created, and finally the ledger's ConfigMap. It keeps going past
// failures and returns them all; the ledger survives a failed Undo, so a
// later sweep can finish it. Undo does not wait for deletions to finish.
func (l *Ledger) Undo(ctx context.Context, uninstall Uninstaller) error {
	rec := l.Record()
	var errs []error
	for _, r := range slices.Backward(rec.Releases) {
		if uninstall == nil {
			errs = append(errs, fmt.Errorf("ledger: Helm release %s/%s is listed but no uninstaller was given", r.Namespace, r.Name))
			continue
		}
		if err := uninstall(ctx, r); err != nil {
			errs = append(errs, fmt.Errorf("ledger: uninstall Helm release %s/%s: %w", r.Namespace, r.Name, err))
		}
	}
	for _, group := range [][]Object{rec.Objects, rec.CRDs} {
		for _, o := range slices.Backward(group) {
			if err := l.deleteOwned(ctx, o); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := l.restoreLabels(ctx, rec.Labels); err != nil {
		errs = append(errs, err)
	}
	for _, o := range slices.Backward(rec.Namespaces) {
		if o.Name == l.namespace {
			continue // holds the ledger itself; see below
		}
		if err := l.deleteOwned(ctx, o); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	now := time.Now().UTC()
	if err := l.update(ctx, func(r *Record) { r.TornDown = &now }); err != nil {
		return err
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: configMapPrefix + rec.RunID, Namespace: l.namespace}}
	if err := l.c.Delete(ctx, cm); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("ledger: delete ConfigMap %s/%s: %w", l.namespace, cm.Name, err)
	}
	for _, o := range rec.Namespaces {
		if o.Name == l.namespace {
			return l.deleteCoordinationNamespace(ctx, o)
		}
	}
	return nil
}

// deleteCoordinationNamespace deletes the ledgers' namespace, which this
// run created, unless other runs use it: another ledger (a run that is
// going on, or a crashed one not yet swept) or another run's Lease.
func (l *Ledger) deleteCoordinationNamespace(ctx context.Context, o Object) error {
	var cms corev1.ConfigMapList
	if err := l.c.List(ctx, &cms, client.InNamespace(l.namespace), client.HasLabels{ownership.RunIDLabel}); err != nil {
		return fmt.Errorf("ledger: list ledgers in %s: %w", l.namespace, err)
	}
	var leases coordinationv1.LeaseList
	if err := l.c.List(ctx, &leases, client.InNamespace(l.namespace)); err != nil {
		return fmt.Errorf("ledger: list Leases in %s: %w", l.namespace, err)
	}
	for _, cm := range cms.Items {
		if cm.DeletionTimestamp == nil {
			return nil
		}
	}
	for _, le := range leases.Items {
		if h := le.Spec.HolderIdentity; h != nil && *h != l.rec.RunID {
			return nil
		}
	}
	return l.deleteOwned(ctx, o)
}

// deleteOwned deletes o if it is still the run's: same UID when one was
// recorded, else the run's run-id label. Gone already is fine.
func (l *Ledger) deleteOwned(ctx context.Context, o Object) error {
	gv, err := schema.ParseGroupVersion(o.APIVersion)
	if err != nil {
		return fmt.Errorf("ledger: %s: %w", o, err)
	}
	var cur metav1.PartialObjectMetadata
	cur.SetGroupVersionKind(gv.WithKind(o.Kind))
	err = l.c.Get(ctx, client.ObjectKey{Namespace: o.Namespace, Name: o.Name}, &cur)
	if apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ledger: read %s: %w", o, err)
	}
	switch {
	case o.UID != "" && cur.UID != o.UID:
		return nil // replaced by someone else since: not the run's
	case o.UID == "" && cur.Labels[ownership.RunIDLabel] != l.rec.RunID:
		return nil // recorded, but never created by the run
	}
	uid := cur.UID
	err = l.c.Delete(ctx, &cur, client.Preconditions{UID: &uid}, client.PropagationPolicy(metav1.DeletePropagationBackground))
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("ledger: delete %s: %w", o, err)
	}
	return nil
}

// restoreLabels puts back the labels the run found; a label someone
// changed after the run set it is left as they set it.
func (l *Ledger) restoreLabels(ctx context.Context, changes []LabelChange) error {
	byNS := map[string][]LabelChange{}
	for _, ch := range changes {
		byNS[ch.Namespace] = append(byNS[ch.Namespace], ch)
	}
	var errs []error
	for ns, chs := range byNS {
		var cur corev1.Namespace
		if err := l.c.Get(ctx, client.ObjectKey{Name: ns}, &cur); err != nil {
			if !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("ledger: read namespace %s: %w", ns, err))
			}
			continue
		}
		set := map[string]any{}
		for _, ch := range chs {
			if v, ok := cur.Labels[ch.Key]; !ok || v != ch.Value {
				continue
			}
			if ch.Previous == nil {
				set[ch.Key] = nil // merge patch: null removes the label
			} else {
				set[ch.Key] = *ch.Previous
			}
		}
		if len(set) > 0 {
			if err := patchLabels(ctx, l.c, ns, set); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Sweep undoes the ledgers on the cluster of runs that are no longer live
// (live is usually lease.RunIsLive: a run whose Lease expired or was
// released never works on the cluster again), and returns their run ids.
// A live run's ledger is never touched; nor is the caller's own (skip).
func Sweep(ctx context.Context, c client.Client, skip string, live func(ctx context.Context, runID string) (bool, error), uninstall Uninstaller, opts ...Option) ([]string, error) {
	ids, err := List(ctx, c, opts...)
	if err != nil {
		return nil, err
	}
	var swept []string
	var errs []error
	for _, id := range ids {
		if id == skip {
			continue
		}
		isLive, err := live(ctx, id)
		if err != nil {
			errs = append(errs, fmt.Errorf("ledger: is run %s live: %w", id, err))
			continue
		}
		if isLive {
			continue
		}
		l, err := Load(ctx, c, id, opts...)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := l.Undo(ctx, uninstall); err != nil {
			errs = append(errs, fmt.Errorf("ledger: sweeping run %s: %w", id, err))
			continue
		}
		swept = append(swept, id)
	}
	return swept, errors.Join(errs...)
}
