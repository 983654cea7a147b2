package istio

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
)

// caSecretName is the Secret a plugged-in CA lives in; istiod uses it
// instead of its self-signed root when it exists.
const caSecretName = "cacerts"

// Installation is the Istio that runs on a cluster, as Detect found it.
type Installation struct {
	Namespace string
	// Releases are the Helm releases of Istio's charts in Namespace (none
	// when Istio was installed otherwise, e.g. by istioctl).
	Releases []HelmRelease
	// ControlPlanes are the istiod Deployments, one per revision.
	ControlPlanes []ControlPlane
	// PluggedCA: the cacerts Secret exists, so istiod signs with that CA.
	PluggedCA bool
	// NodeAgents are ambient mode's DaemonSets found (istio-cni-node,
	// ztunnel); none on a cluster without ambient.
	NodeAgents []NodeAgent
}

// NodeAgent is one of ambient mode's DaemonSets.
type NodeAgent struct {
	DaemonSet string
	// Ready: an updated, ready pod on every node that should run one.
	Ready bool
	State string
}

// AmbientHealthy is nil when both of ambient mode's node agents run and
// are ready on every node, else an error naming what is missing or not
// ready.
func (inst *Installation) AmbientHealthy() error {
	var errs []error
	for _, name := range []string{CNIDaemonSet, ZtunnelDaemonSet} {
		idx := slices.IndexFunc(inst.NodeAgents, func(a NodeAgent) bool { return a.DaemonSet == name })
		switch {
		case idx < 0:
			errs = append(errs, fmt.Errorf("no DaemonSet %s/%s: ambient mode is not installed (Istio's ambient profile installs the cni and ztunnel charts)", inst.Namespace, name))
		case !inst.NodeAgents[idx].Ready:
			errs = append(errs, fmt.Errorf("DaemonSet %s/%s is not ready on every node: %s", inst.Namespace, name, inst.NodeAgents[idx].State))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("istio: ambient mode is not healthy: %w", errors.Join(errs...))
	}
	return nil
}

// ControlPlane is one istiod Deployment.
type ControlPlane struct {
	Deployment string
	// Revision is the istio.io/rev label, "default" for the unrevisioned one.
	Revision string
	// Version is Istio's version, from the istiod image tag or else from the
	// release that installed it ("" when neither tells).
	Version string
	Image   string
	// MultiRoot: istiod runs with ISTIO_MULTIROOT_MESH=true.
	MultiRoot bool
	// Available and State come from the Deployment's status.
	Available bool
	State     string
}

func (i *Installer) detect(ctx context.Context) (*Installation, error) {
	cs, err := i.clientset()
	if err != nil {
		return nil, err
	}
	inst := &Installation{Namespace: i.s.namespace}
	if inst.Releases, err = i.Releases(ctx); err != nil {
		return nil, err
	}
	deps, err := cs.AppsV1().Deployments(i.s.namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
	if err != nil {
		return nil, fmt.Errorf("istio: listing istiod Deployments in %s: %w", i.s.namespace, err)
	}
	for _, d := range deps.Items {
		cp := ControlPlane{Deployment: d.Name, Revision: d.Labels["istio.io/rev"]}
		if cp.Revision == "" {
			cp.Revision = "default"
		}
		for _, c := range d.Spec.Template.Spec.Containers {
			if c.Name != "discovery" {
				continue
			}
			cp.Image = c.Image
			cp.Version = versionFromImage(c.Image)
			for _, e := range c.Env {
				if e.Name == "ISTIO_MULTIROOT_MESH" && e.Value == "true" {
					cp.MultiRoot = true
				}
			}
		}
		if cp.Version == "" {
			cp.Version = versionFromRelease(inst.Releases, d.Annotations["meta.helm.sh/release-name"])
		}
		cp.Available, cp.State, err = deploymentAvailable(ctx, cs, d.Namespace, d.Name)
		if err != nil {
			return nil, fmt.Errorf("istio: reading Deployment %s/%s: %w", d.Namespace, d.Name, err)
		}
		inst.ControlPlanes = append(inst.ControlPlanes, cp)
	}
	slices.SortFunc(inst.ControlPlanes, func(a, b ControlPlane) int { return strings.Compare(a.Revision, b.Revision) })
	for _, name := range []string{CNIDaemonSet, ZtunnelDaemonSet} {
		ready, state, err := daemonSetRolledOut(ctx, cs, i.s.namespace, name)
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return nil, fmt.Errorf("istio: reading DaemonSet %s/%s: %w", i.s.namespace, name, err)
		}
		inst.NodeAgents = append(inst.NodeAgents, NodeAgent{DaemonSet: name, Ready: ready, State: state})
	}
	_, err = cs.CoreV1().Secrets(i.s.namespace).Get(ctx, caSecretName, metav1.GetOptions{})
	switch {
	case err == nil:
		inst.PluggedCA = true
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("istio: reading Secret %s/%s: %w", i.s.namespace, caSecretName, err)
	}
	return inst, nil
}

// versionFromImage reads a release version from an image tag such as
// docker.io/istio/pilot:1.30.3 or ...:1.30.3-distroless; "" for a digest or
// a tag that is no version.
func versionFromImage(image string) string {
	if strings.Contains(image, "@") {
		return ""
	}
	slash := strings.LastIndexByte(image, '/')
	colon := strings.LastIndexByte(image, ':')
	if colon < 0 || colon < slash {
		return ""
	}
	tag := image[colon+1:]
	for _, variant := range []string{"-distroless", "-debug"} {
		tag = strings.TrimSuffix(tag, variant)
	}
	if validateVersion(tag) != nil {
		return ""
	}
	return tag
}

func versionFromRelease(rels []HelmRelease, name string) string {
	for _, r := range rels {
		if r.Name == name {
			return r.AppVersion
		}
	}
	return ""
}

// Healthy is nil when there is at least one control plane and every one
// is Available, else an error naming what is not.
func (inst *Installation) Healthy() error {
	if len(inst.ControlPlanes) == 0 {
		return fmt.Errorf("istio: no Istio control plane in namespace %s (no Deployment labelled app=istiod); install Istio first, or let meshproof install it with istio.mode: install", inst.Namespace)
	}
	var errs []error
	for _, cp := range inst.ControlPlanes {
		if !cp.Available {
			errs = append(errs, fmt.Errorf("istiod %s/%s (revision %s) is not Available: %s", inst.Namespace, cp.Deployment, cp.Revision, cp.State))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("istio: the installed control plane is not healthy: %w", errors.Join(errs...))
	}
	return nil
}

// Revision returns the control plane of revision ("" or "default" for the
// unrevisioned one), or nil.
func (inst *Installation) Revision(revision string) *ControlPlane {
	if revision == "" {
		revision = "default"
	}
	for idx := range inst.ControlPlanes {
		if inst.ControlPlanes[idx].Revision == revision {
			return &inst.ControlPlanes[idx]
		}
	}
	return nil
}

// UseExisting is use-existing mode's setup: it detects the Istio in
// namespace and waits, up to timeout, until it is healthy. It installs,
// upgrades and deletes nothing; teardown in this mode has nothing of
// Istio's to undo.
//
// With ambient, ambient mode's node agents must be there and ready too.
func UseExisting(ctx context.Context, restConfig *rest.Config, namespace string, timeout time.Duration, ambient bool) (*Installation, error) {
	in, err := New(restConfig, WithNamespace(namespace))
	if err != nil {
		return nil, err
	}
	inst, err := in.detect(ctx)
	if err != nil {
		return nil, err
	}
	if len(inst.ControlPlanes) == 0 {
		return inst, inst.Healthy()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err = poll(ctx, "the installed Istio control plane in "+namespace+" to be healthy", func(ctx context.Context) (bool, string, error) {
		if inst, err = in.detect(ctx); err != nil {
			return false, "", err
		}
		if err := inst.Healthy(); err != nil {
			return false, err.Error(), nil
		}
		if ambient {
			if err := inst.AmbientHealthy(); err != nil {
				return false, err.Error(), nil
			}
		}
		return true, "", nil
	})
	return inst, err
}
