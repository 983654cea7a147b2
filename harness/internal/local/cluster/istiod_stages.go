package cluster

import (
	"bytes"
	"cmp"
	"fmt"
	"os"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/meshproof/meshproof/harness/internal/local/ztunnel"
)

// servingAnnotation is set by the supervisor on an istiod pod once its
// process answers GET /ready; kwok makes the pod Running and Ready only then.
const servingAnnotation = "meshproof.dev/istiod-serving"

// sidecarServingAnnotation is set by the sidecars' supervisor on a pod
// with an Envoy sidecar once the xDS client standing in for its Envoy holds
// a complete configuration from istiod and its certificates are issued
// (Sidecars); kwok makes the pod Ready only then.
const sidecarServingAnnotation = "meshproof.dev/sidecar-serving"

// proxylessServingAnnotation is set by the proxyless supervisor on a pod
// asking for the grpc-agent template once its echo serves gRPC with
// istiod's listeners (or at once when it was not injected); kwok makes the
// pod Running and Ready only then.
const proxylessServingAnnotation = "meshproof.dev/proxyless-serving"

// readinessGate holds back kwok's pod-ready stage for the pods whose key
// (a kwok stage expression) has one of values until a supervisor has set
// annotation to "true" (or to value, when set).
type readinessGate struct {
	stage      string
	key        string
	values     []any
	annotation string
	value      string
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

// ambientGate: a pod labelled istio.io/dataplane-mode=ambient turns Ready
// only once istio-cni's stand-in (Ambient) has enrolled it. The real
// istio-cni enrols a pod in its CNI ADD, before any of its containers
// starts, so a running ambient pod whose traffic bypasses ztunnel is not a
// state traffic meets on a real cluster; kwok would make it Ready before
// the stand-in annotates it (a pod rolled onto ambient by a moveDataPlane
// step would serve, and call, outside the mesh for a moment). meshproof's
// ambient pods are never injected, which istio-cni's enrolment excludes.
var ambientGate = readinessGate{stage: "meshproof-ambient-pod-ready", key: `.metadata.labels["` + dataplaneModeLabel + `"]`, values: []any{"ambient"},
	annotation: ztunnel.RedirectionAnnotation, value: ztunnel.RedirectionEnabled}

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
				map[string]any{"key": `.metadata.annotations["` + g.annotation + `"]`, "operator": "In", "values": []any{cmp.Or(g.value, "true")}},
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

// The sidecar gate. A pod with an Envoy sidecar is not Ready until its
// Envoy is: istio-proxy's readiness probe (pilot-agent's /healthz/ready)
// fails until Envoy has its listeners and clusters from istiod, and a
// listener warms only once its SDS secrets (the workload certificate from
// istiod's CA) are there. Unlike istiod and proxyless pods, the supervisor
// needs the pod's IP before it can be ready (the xDS node ID holds it),
// while kwok gives the IP in the same stage that makes a pod Ready. So an
// injected pod goes through two stages of its own: Running with an IP and
// not ready; then, once sidecarServingAnnotation is set, Ready with the IP
// it has.
const (
	sidecarRunningStage = "meshproof-sidecar-pod-running"
	sidecarReadyStage   = "meshproof-sidecar-pod-ready"
)

// sidecarPodSelector selects the pods with an Envoy sidecar: injected (the
// injector's status annotation), and not with the grpc-agent template
// (proxylessGate's).
func sidecarPodSelector() []any {
	return []any{
		map[string]any{"key": `.metadata.deletionTimestamp`, "operator": "DoesNotExist"},
		map[string]any{"key": `.metadata.annotations["` + injectionStatusAnnotation + `"]`, "operator": "Exists"},
		map[string]any{"key": `.metadata.annotations["` + injectTemplatesAnnotation + `"]`, "operator": "NotIn", "values": []any{GRPCAgentTemplate}},
	}
}

// sidecarPodStatus is kwok's pod status template with the pod's containers
// ready or not, and its IP: the one it has, or a new one from kwok's pool.
func sidecarPodStatus(ready bool) string {
	r, status := "false", "False"
	if ready {
		r, status = "true", "True"
	}
	return `{{ $now := Now }}
conditions:
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: Initialized
- lastTransitionTime: {{ $now | Quote }}
  status: "` + status + `"
  type: Ready
- lastTransitionTime: {{ $now | Quote }}
  status: "` + status + `"
  type: ContainersReady
{{ range .spec.readinessGates }}
- lastTransitionTime: {{ $now | Quote }}
  status: "True"
  type: {{ .conditionType | Quote }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  ready: ` + r + `
  restartCount: 0
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
{{ end }}
initContainerStatuses:
{{ range .spec.initContainers }}
- image: {{ .image | Quote }}
  name: {{ .name | Quote }}
  restartCount: 0
  {{ if eq .restartPolicy "Always" }}
  ready: ` + r + `
  started: true
  state:
    running:
      startedAt: {{ $now | Quote }}
  {{ else }}
  ready: true
  state:
    terminated:
      exitCode: 0
      finishedAt: {{ $now | Quote }}
      reason: Completed
      startedAt: {{ $now | Quote }}
  {{ end }}
{{ end }}
{{ $hostIPs := NodeIPsWith .spec.nodeName }}
{{ with $hostIPs }}
hostIP: {{ index . 0 | Quote }}
hostIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
{{ with .status.podIP }}
podIP: {{ . | Quote }}
{{ else }}
{{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}
{{ with $podIPs }}
podIP: {{ index . 0 | Quote }}
podIPs:
{{ range . }}
- ip: {{ . | Quote }}
{{ end }}
{{ end }}
{{ end }}
phase: Running
{{ with .status.startTime }}
startTime: {{ . | Quote }}
{{ else }}
startTime: {{ $now | Quote }}
{{ end }}
`
}

// gateSidecars edits kwok's stages so that kwok's pod-ready stage skips
// the pods with an Envoy sidecar, and two stages of their own (see
// sidecarRunningStage) take them.
func gateSidecars(file string) error {
	return editStage(file, "pod-ready", "gate the sidecars' readiness on", func(stage map[string]any, out *bytes.Buffer) error {
		running := sidecarStage(sidecarRunningStage, false,
			map[string]any{"key": ".status.phase", "operator": "In", "values": []any{"Pending"}})
		ready := sidecarStage(sidecarReadyStage, true,
			map[string]any{"key": ".status.phase", "operator": "In", "values": []any{"Running"}},
			map[string]any{"key": `.status.conditions.[] | select( .type == "Ready" ) | .status`, "operator": "NotIn", "values": []any{"True"}},
			map[string]any{"key": `.metadata.annotations["` + sidecarServingAnnotation + `"]`, "operator": "In", "values": []any{"true"}})
		if err := addSelectorExpressions(stage,
			map[string]any{"key": `.metadata.annotations["` + injectionStatusAnnotation + `"]`, "operator": "DoesNotExist"},
		); err != nil {
			return err
		}
		// An injected proxyless pod is its gate's (it was skipped by
		// pod-ready's selector before, and still is).
		for _, s := range []map[string]any{running, ready} {
			if err := writeYAMLDoc(out, s); err != nil {
				return err
			}
		}
		return nil
	})
}

func sidecarStage(name string, ready bool, exprs ...any) map[string]any {
	return map[string]any{
		"apiVersion": "kwok.x-k8s.io/v1alpha1",
		"kind":       "Stage",
		"metadata":   map[string]any{"name": name},
		"spec": map[string]any{
			"resourceRef": map[string]any{"apiGroup": "v1", "kind": "Pod"},
			"selector":    map[string]any{"matchExpressions": append(sidecarPodSelector(), exprs...)},
			"next":        map[string]any{"statusTemplate": sidecarPodStatus(ready)},
		},
	}
}
