package ownership

import (
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

func TestLabelValue(t *testing.T) {
	for _, name := range []string{"strict", "client-tls[tls=DISABLE]", "-x-", "", "ü", strings.Repeat("a", 80), strings.Repeat("a", 62) + "[b]"} {
		v := LabelValue(name)
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			t.Errorf("LabelValue(%q) = %q: %v", name, v, errs)
		}
	}
	if LabelValue("strict") != "strict" {
		t.Error("a valid name must stay as it is")
	}
	if LabelValue("a[x=1]") == LabelValue("a[x=2]") {
		t.Error("different names must give different values")
	}
}

func TestSelectorsParse(t *testing.T) {
	id := NewRunID(time.Date(2026, 11, 26, 23, 49, 4, 0, time.UTC))
	if !strings.HasPrefix(id, "20261126-234904-") || len(validation.IsValidLabelValue(id)) > 0 {
		t.Errorf("run id %q", id)
	}
	sel, err := labels.Parse(RunSelector(id))
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(Labels(id))) || sel.Matches(labels.Set(Labels("other"))) {
		t.Error("the run selector must match exactly its own run's labels")
	}
	any, err := labels.Parse(AnyRunSelector())
	if err != nil || !any.Matches(labels.Set(Labels("other"))) {
		t.Errorf("any-run selector: %v", err)
	}
}
