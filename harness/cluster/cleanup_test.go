package cluster

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshproof/meshproof/harness/ownership"
)

var peerAuthentications = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"}

func object(apiVersion, kind, namespace, name string, labels map[string]string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion(apiVersion)
	u.SetKind(kind)
	u.SetNamespace(namespace)
	u.SetName(name)
	u.SetLabels(labels)
	return u
}

func TestDeleteRunObjectsOnlyThisRun(t *testing.T) {
	const run, otherRun = "20261126-234904-1a2b3c4d", "20261126-120000-deadbeef"
	// A label set that has this run's id but not meshproof's managed-by
	// label was not made by meshproof and must survive.
	foreign := map[string]string{ownership.RunIDLabel: run}
	objs := []runtime.Object{
		object("v1", "Namespace", "", "mp-a", ownership.Labels(run)),
		object("v1", "Namespace", "", "mp-old", ownership.Labels(otherRun)),
		object("v1", "Namespace", "", "user-ns", nil),
		object("v1", "Namespace", "", "lookalike", foreign),
		object("security.istio.io/v1", "PeerAuthentication", "istio-system", "mesh-strict", ownership.Labels(run)),
		object("security.istio.io/v1", "PeerAuthentication", "istio-system", "old-strict", ownership.Labels(otherRun)),
		object("security.istio.io/v1", "PeerAuthentication", "team", "users-own", map[string]string{"app": "x"}),
	}
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		namespacesResource:  "NamespaceList",
		peerAuthentications: "PeerAuthenticationList",
	}, objs...)

	deleted, err := DeleteRunObjects(context.Background(), client, run, peerAuthentications)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"peerauthentications istio-system/mesh-strict", "namespaces mp-a"}
	if !slices.Equal(deleted, want) {
		t.Errorf("deleted %v, want %v (policies before namespaces)", deleted, want)
	}

	remaining := func(gvr schema.GroupVersionResource) []string {
		list, err := client.Resource(gvr).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, item := range list.Items {
			names = append(names, item.GetName())
		}
		slices.Sort(names)
		return names
	}
	if got := remaining(namespacesResource); !slices.Equal(got, []string{"lookalike", "mp-old", "user-ns"}) {
		t.Errorf("namespaces left: %v", got)
	}
	if got := remaining(peerAuthentications); !slices.Equal(got, []string{"old-strict", "users-own"}) {
		t.Errorf("peer authentications left: %v", got)
	}
}

func TestDeleteRunObjectsRefusesEmptyRunID(t *testing.T) {
	client := dynamicfake.NewSimpleDynamicClient(runtime.NewScheme())
	_, err := DeleteRunObjects(context.Background(), client, "")
	if err == nil || !strings.Contains(err.Error(), "the run id is empty") {
		t.Fatalf("DeleteRunObjects with an empty run id = %v", err)
	}
	if n := len(client.Actions()); n != 0 {
		t.Errorf("%d API calls made with an empty run id", n)
	}
}

func TestDeleteRunObjectsReportsListFailures(t *testing.T) {
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		namespacesResource:  "NamespaceList",
		peerAuthentications: "PeerAuthenticationList",
	}, object("v1", "Namespace", "", "mp-a", ownership.Labels("r1")))
	// Listing peer authentications fails (as when Istio's CRDs are absent);
	// the namespaces must still be cleaned.
	client.PrependReactor("list", "peerauthentications", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("the server could not find the requested resource")
	})
	deleted, err := DeleteRunObjects(context.Background(), client, "r1", peerAuthentications)
	if err == nil || !strings.Contains(err.Error(), "list peerauthentications of run r1") {
		t.Errorf("error = %v, want the list failure", err)
	}
	if !slices.Equal(deleted, []string{"namespaces mp-a"}) {
		t.Errorf("deleted %v despite the other failure, want the namespace", deleted)
	}
}
