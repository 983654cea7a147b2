package istio

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// restartedAtAnnotation is the pod template annotation `kubectl rollout
// restart` sets; changing it makes the Deployment controller roll every pod.
const restartedAtAnnotation = "kubectl.kubernetes.io/restartedAt"

// MultiRoot reports whether the control planes were installed with
// multi-root trust (WithMultiRoot), which a root CA rotation needs.
func (i *Installer) MultiRoot() bool { return i.s.multiRoot }

// RestartControlPlane restarts the istiod Deployment of every control plane
// the Installer manages (the current one and a canary), as `kubectl rollout
// restart` does, and waits until each has rolled out (deploymentRolledOut:
// every replica of the new template available, no old istiod pod left,
// since an old istiod still running would still sign with the old CA).
//
// istiod reads a plugged-in CA (the cacerts Secret) when it starts, so this
// is how a changed CA takes effect deterministically; istiod's file watch
// of the mounted Secret would also pick it up, but only after the kubelet
// has refreshed the volume, at a time nobody controls.
//
// The wait is bounded by ctx's deadline, or by the ready timeout when ctx
// has none.
func (i *Installer) RestartControlPlane(ctx context.Context) error {
	cs, err := i.clientset()
	if err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, i.s.readyTimeout)
		defer cancel()
	}
	planes := []plane{i.current}
	if i.canary != nil {
		planes = append(planes, *i.canary)
	}
	patch, err := json.Marshal(map[string]any{"spec": map[string]any{"template": map[string]any{"metadata": map[string]any{
		"annotations": map[string]string{restartedAtAnnotation: time.Now().UTC().Format(time.RFC3339Nano)},
	}}}})
	if err != nil {
		return err
	}
	for _, p := range planes {
		name := istiodReleaseName(p.revision) // the Deployment has the release's name
		if _, err := cs.AppsV1().Deployments(i.s.namespace).Patch(ctx, name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("istio: restarting istiod Deployment %s/%s: %w", i.s.namespace, name, err)
		}
		i.s.log.Info("istiod restarted", "namespace", i.s.namespace, "deployment", name)
	}
	for _, p := range planes {
		name := istiodReleaseName(p.revision)
		if err := poll(ctx, "istiod Deployment "+i.s.namespace+"/"+name+" to roll out after the restart", func(ctx context.Context) (bool, string, error) {
			return deploymentRolledOut(ctx, cs, i.s.namespace, name)
		}); err != nil {
			return fmt.Errorf("istio: %w", err)
		}
	}
	return nil
}
