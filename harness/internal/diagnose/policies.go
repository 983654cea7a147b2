package diagnose

import (
	"context"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/meshproof/meshproof/harness/ownership"
)

// PolicyKinds are the kinds written to policies.yaml: the objects a run
// applies to make or loosen the mesh's mTLS.
var PolicyKinds = []schema.GroupVersionKind{
	{Group: "security.istio.io", Version: "v1", Kind: "PeerAuthentication"},
	{Group: "networking.istio.io", Version: "v1", Kind: "DestinationRule"},
}

// collectPolicies writes every policy of the run, in every namespace, to
// policies.yaml. They are read as unstructured objects, so the file shows
// exactly what the API server holds (including fields a typed client of
// another Istio version would drop) and the client's scheme need not know
// Istio's types.
func (c *Collector) collectPolicies(ctx context.Context, dir string, s *summary) {
	selText := ownership.AnyRunSelector()
	if c.runID != "" {
		selText = ownership.RunSelector(c.runID)
	}
	what := "PeerAuthentications and DestinationRules labelled " + selText
	sel, err := labels.Parse(selText)
	if err != nil {
		s.fail(PoliciesFile, what, fmt.Errorf("run id %q does not make a label selector: %w", c.runID, err))
		return
	}
	ictx, cancel := c.itemContext(ctx)
	defer cancel()
	var b strings.Builder
	counts := make([]string, 0, len(PolicyKinds))
	failed := 0
	for _, gvk := range PolicyKinds {
		list := &unstructured.UnstructuredList{}
		list.SetGroupVersionKind(gvk.GroupVersion().WithKind(gvk.Kind + "List"))
		var items []unstructured.Unstructured
		next := ""
		for {
			opts := []client.ListOption{client.MatchingLabelsSelector{Selector: sel}, client.Limit(listPageSize)}
			if next != "" {
				opts = append(opts, client.Continue(next))
			}
			if err := c.kube.List(ictx, list, opts...); err != nil {
				s.fail(PoliciesFile, fmt.Sprintf("%s objects labelled %s", gvk.Kind, selText), err)
				failed++
				items = nil
				break
			}
			items = append(items, list.Items...)
			if next = list.GetContinue(); next == "" {
				break
			}
		}
		for i := range items {
			obj := &items[i]
			obj.SetManagedFields(nil) // who wrote which field is noise here
			out, err := yaml.Marshal(obj.Object)
			if err != nil {
				s.fail(PoliciesFile, fmt.Sprintf("%s %s/%s as YAML", gvk.Kind, obj.GetNamespace(), obj.GetName()), err)
				continue
			}
			b.WriteString("---\n")
			b.Write(out)
		}
		counts = append(counts, fmt.Sprintf("%d %s", len(items), gvk.Kind))
	}
	if failed == len(PolicyKinds) {
		return
	}
	if err := writeFile(dir, PoliciesFile, []byte(b.String())); err != nil {
		s.fail(PoliciesFile, what, err)
		return
	}
	s.collected(PoliciesFile, strings.Join(counts, ", ")+" labelled "+selText)
}
