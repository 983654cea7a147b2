package cluster

import (
	"bytes"
	"fmt"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// servingAnnotation is set by the supervisor on an istiod pod once its
// process answers GET /ready; kwok makes the pod Running and Ready only then.
const servingAnnotation = "meshproof.dev/istiod-serving"

// proxylessServingAnnotation is set by the proxyless supervisor on a pod
// asking for the grpc-agent template once its echo serves gRPC with
// istiod's listeners (or at once when it was not injected); kwok makes the
// pod Running and Ready only then.
const proxylessServingAnnotation = "meshproof.dev/proxyless-serving"

// readinessGate holds back kwok's pod-ready stage for the pods whose key
// (a kwok stage expression) has one of values until a supervisor has set
// annotation to "true".
type readinessGate struct {
	stage      string
	key        string
	values     []any
	annotation string
}

// istiodGate: an istiod pod turns Ready when its istiod process is ready,
// as the chart's readinessProbe (GET /ready) makes a kubelet do, not at
// once. A rollout of istiod (a restart, an upgrade) then completes only once
// the new istiod serves, and one whose istiod never serves never does.
var istiodGate = readinessGate{stage: "meshproof-istiod-pod-ready", key: ".metadata.labels.app", values: []any{"istiod"}, annotation: servingAnnotation}

// proxylessGate: a pod asking for the grpc-agent template turns Ready when
// its echo serves gRPC with the listeners istiod sent (see Proxyless), as
// its readiness probe on the gRPC port would make a kubelet do.
var proxylessGate = readinessGate{stage: "meshproof-proxyless-pod-ready", key: `.metadata.annotations["` + injectTemplatesAnnotation + `"]`, values: []any{GRPCAgentTemplate}, annotation: proxylessServingAnnotation}

// gateReadiness edits kwok's stages (the file written for --config) so that
// kwok's pod-ready stage skips the pods of every gate, and a copy of it per
// gate takes only those the gate's supervisor marked with its annotation.
func gateReadiness(file string, gates ...readinessGate) error {
	return editStage(file, "pod-ready", "gate readiness on", func(stage map[string]any, out *bytes.Buffer) error {
		original := (&unstructured.Unstructured{Object: stage}).DeepCopy() // before the edits of stage below
		for _, g := range gates {
			gated := original.DeepCopy()
			gated.SetName(g.stage)
			if err := addSelectorExpressions(gated.Object,
				map[string]any{"key": g.key, "operator": "In", "values": g.values},
				map[string]any{"key": `.metadata.annotations["` + g.annotation + `"]`, "operator": "In", "values": []any{"true"}},
			); err != nil {
				return err
			}
			if err := addSelectorExpressions(stage,
				map[string]any{"key": g.key, "operator": "NotIn", "values": g.values},
			); err != nil {
				return err
			}
			if err := writeYAMLDoc(out, gated.Object); err != nil {
				return err
			}
		}
		return nil
	})
}

// editStage rewrites kwok's stages in file: edit gets the stage named
// name (it may change it and write stages of its own to out before it);
// every stage is written back in order. A file without that stage is an
// error saying what the edit was for.
func editStage(file, name, purpose string, edit func(stage map[string]any, out *bytes.Buffer) error) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	found := false
	for _, doc := range bytes.Split(data, []byte("\n---\n")) {
		var stage map[string]any
		if err := yaml.Unmarshal(doc, &stage); err != nil {
			return fmt.Errorf("local cluster: parsing kwok's stages: %w", err)
		}
		if len(stage) == 0 {
			continue
		}
		u := unstructured.Unstructured{Object: stage}
		if u.GetKind() == "Stage" && u.GetName() == name {
			found = true
			if err := edit(stage, &out); err != nil {
				return err
			}
		}
		if err := writeYAMLDoc(&out, stage); err != nil {
			return err
		}
	}
	if !found {
		return fmt.Errorf("local cluster: kwok's stages in %s have no %s stage to %s", file, name, purpose)
	}
	return os.WriteFile(file, out.Bytes(), 0o600)
}

func addSelectorExpressions(stage map[string]any, exprs ...any) error {
	existing, _, err := unstructured.NestedSlice(stage, "spec", "selector", "matchExpressions")
	if err != nil {
		return fmt.Errorf("local cluster: kwok stage: %w", err)
	}
	return unstructured.SetNestedSlice(stage, append(existing, exprs...), "spec", "selector", "matchExpressions")
}

func writeYAMLDoc(out *bytes.Buffer, obj map[string]any) error {
	data, err := yaml.Marshal(obj)
	if err != nil {
		return err
	}
	out.WriteString("---\n")
	out.Write(data)
	return nil
}

// sidecarDrain is how long a pod with an Istio sidecar takes to go once it
// is deleted: its istio-proxy drains for ProxyConfig's
// terminationDrainDuration (5s by default, pkg/config/mesh
// DefaultProxyConfig) and serves meanwhile. kwok's pod-delete stage would
// remove the pod at once, while the sidecars of its clients may still be
// sending to it until istiod's push of its removal reaches them.
const sidecarDrain = 5 * time.Second

// delayInjectedDeletion edits kwok's stages so that a deleted pod with
// an Istio sidecar (sidecar.istio.io/status) is removed sidecarDrain after
// its deletion, as a kubelet would once istio-proxy has drained; other
// pods go at once, as before.
func delayInjectedDeletion(file string) error {
	key := `.metadata.annotations["` + injectionStatusAnnotation + `"]`
	return editStage(file, "pod-delete", "delay", func(stage map[string]any, out *bytes.Buffer) error {
		delayed := (&unstructured.Unstructured{Object: stage}).DeepCopy()
		delayed.SetName("meshproof-sidecar-pod-delete")
		if err := addSelectorExpressions(delayed.Object, map[string]any{"key": key, "operator": "Exists"}); err != nil {
			return err
		}
		if err := unstructured.SetNestedField(delayed.Object, sidecarDrain.Milliseconds(), "spec", "delay", "durationMilliseconds"); err != nil {
			return err
		}
		if err := addSelectorExpressions(stage, map[string]any{"key": key, "operator": "DoesNotExist"}); err != nil {
			return err
		}
		return writeYAMLDoc(out, delayed.Object)
	})
}
