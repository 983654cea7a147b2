package localcluster

import (
	"bytes"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// servingAnnotation is set by the supervisor on an istiod pod once its
// process answers GET /ready; kwok makes the pod Running and Ready only then.
const servingAnnotation = "meshproof.dev/istiod-serving"

// gateIstiodReadiness edits kwok's stages (the file written for --config) so
// that an istiod pod turns Ready when its istiod process is ready, as the
// chart's readinessProbe (GET /ready) makes a kubelet do, not at once: kwok's
// pod-ready stage skips istiod pods, and a copy of it takes only those the
// supervisor marked with servingAnnotation. A rollout of istiod (a restart, an
// upgrade) then completes only once the new istiod serves, and one whose
// istiod never serves never does.
func gateIstiodReadiness(file string) error {
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
		if u.GetKind() == "Stage" && u.GetName() == "pod-ready" {
			found = true
			gated := u.DeepCopy()
			gated.SetName("meshproof-istiod-pod-ready")
			if err := addSelectorExpressions(gated.Object,
				map[string]any{"key": ".metadata.labels.app", "operator": "In", "values": []any{"istiod"}},
				map[string]any{"key": `.metadata.annotations["` + servingAnnotation + `"]`, "operator": "In", "values": []any{"true"}},
			); err != nil {
				return err
			}
			if err := addSelectorExpressions(stage,
				map[string]any{"key": ".metadata.labels.app", "operator": "NotIn", "values": []any{"istiod"}},
			); err != nil {
				return err
			}
			if err := writeYAMLDoc(&out, gated.Object); err != nil {
				return err
			}
		}
		if err := writeYAMLDoc(&out, stage); err != nil {
			return err
		}
	}
	if !found {
		return fmt.Errorf("local cluster: kwok's stages in %s have no pod-ready stage to gate istiod's readiness on", file)
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
