package cluster

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"helm.sh/helm/v4/pkg/postrenderer"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// PostRenderer returns the Helm post-renderer (istio.WithPostRenderer) that
// makes Istio's charts work with istiod processes: every webhook of a
// MutatingWebhookConfiguration or ValidatingWebhookConfiguration whose
// clientConfig.service is istiod or istiod-<revision> in istio-system gets
// clientConfig.url https://127.0.0.1:<that revision's webhook port><path>
// instead. Nothing serves those Services here, and the API server must never
// look their names up through the machine's DNS. The caBundle is left as
// rendered: istiod's own patcher sets it, as in a real cluster.
//
// A revision's ports are reserved here if no pod of it was seen yet, so the
// URL holds for the process started once its pod runs.
func (s *Istiod) PostRenderer() postrenderer.PostRenderer { return webhookRewriter{s} }

type webhookRewriter struct{ s *Istiod }

func (w webhookRewriter) Run(rendered *bytes.Buffer) (*bytes.Buffer, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(rendered))
	var out bytes.Buffer
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return &out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("local cluster: reading rendered manifests: %w", err)
		}
		if doc, err = w.rewrite(doc); err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		out.WriteString("---\n")
		out.Write(doc)
		if !bytes.HasSuffix(doc, []byte("\n")) {
			out.WriteByte('\n')
		}
	}
}

// rewrite returns doc with istiod's webhooks pointed at 127.0.0.1; any other
// document comes back as it was.
func (w webhookRewriter) rewrite(doc []byte) ([]byte, error) {
	var obj map[string]any
	if err := yaml.Unmarshal(doc, &obj); err != nil {
		return nil, fmt.Errorf("local cluster: parsing a rendered manifest: %w", err)
	}
	u := unstructured.Unstructured{Object: obj}
	if len(obj) == 0 || u.GroupVersionKind().Group != "admissionregistration.k8s.io" ||
		(u.GetKind() != "MutatingWebhookConfiguration" && u.GetKind() != "ValidatingWebhookConfiguration") {
		return doc, nil
	}
	webhooks, _, err := unstructured.NestedSlice(obj, "webhooks")
	if err != nil {
		return nil, fmt.Errorf("local cluster: %s %s: %w", u.GetKind(), u.GetName(), err)
	}
	changed := false
	for i, wh := range webhooks {
		hook, ok := wh.(map[string]any)
		if !ok {
			continue
		}
		svc, found, _ := unstructured.NestedMap(hook, "clientConfig", "service")
		if !found {
			continue
		}
		name, _ := svc["name"].(string)
		ns, _ := svc["namespace"].(string)
		rev, isIstiod := istiodServiceRevision(name)
		if ns != IstioNamespace || !isIstiod {
			continue
		}
		ports, err := w.s.reserve(rev)
		if err != nil {
			return nil, err
		}
		path, _ := svc["path"].(string)
		if path != "" && !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		unstructured.RemoveNestedField(hook, "clientConfig", "service")
		if err := unstructured.SetNestedField(hook, fmt.Sprintf("https://%s%s", loopback(ports.https), path), "clientConfig", "url"); err != nil {
			return nil, err
		}
		webhooks[i] = hook
		changed = true
	}
	if !changed {
		return doc, nil
	}
	if err := unstructured.SetNestedSlice(obj, webhooks, "webhooks"); err != nil {
		return nil, err
	}
	return yaml.Marshal(obj)
}

// istiodServiceRevision is the revision whose istiod the chart's Service
// name stands for: istiod is the default revision, istiod-<rev> is <rev>.
func istiodServiceRevision(service string) (string, bool) {
	if service == "istiod" {
		return defaultRev, true
	}
	rev, ok := strings.CutPrefix(service, "istiod-")
	return rev, ok && rev != ""
}
