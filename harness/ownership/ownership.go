// Package ownership names the labels meshproof puts on every object it
// creates, so that a later run (or a user) can find and remove leftovers of
// an interrupted run without touching anything else in the cluster.
package ownership

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
)

const (
	// ManagedByLabel is the well-known Kubernetes label; its value is always
	// ManagedByValue on objects meshproof created.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "meshproof"

	// RunIDLabel carries the id of the run that created the object.
	RunIDLabel = "meshproof.dev/run-id"

	// ScenarioLabel and StepLabel mark policies applied by a scenario step,
	// so that the next step can remove exactly the previous step's policies.
	ScenarioLabel = "meshproof.dev/scenario"
	StepLabel     = "meshproof.dev/step"
)

// Labels returns the ownership labels for an object created by run runID.
func Labels(runID string) map[string]string {
	return map[string]string{ManagedByLabel: ManagedByValue, RunIDLabel: runID}
}

// RunSelector selects the objects created by one run.
func RunSelector(runID string) string {
	return fmt.Sprintf("%s=%s,%s=%s", ManagedByLabel, ManagedByValue, RunIDLabel, runID)
}

// AnyRunSelector selects the objects created by any meshproof run; it is
// what a sweep of leftovers lists.
func AnyRunSelector() string {
	return ManagedByLabel + "=" + ManagedByValue
}

// NewRunID returns a run id that sorts by start time and is a valid label
// value: UTC timestamp plus four random bytes, e.g. 20261126-234904-1a2b3c4d.
func NewRunID(now time.Time) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return now.UTC().Format("20060102-150405") + "-" + hex.EncodeToString(b[:])
}

// LabelValue turns a name into a valid label value: at most 63 characters
// of [A-Za-z0-9._-], starting and ending with an alphanumeric. Names that
// had to change get a short hash, so two different names stay different.
func LabelValue(name string) string {
	var b strings.Builder
	changed := false
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
			changed = true
		}
	}
	v := strings.Trim(b.String(), "-_.")
	if v != b.String() {
		changed = true
	}
	if !changed && len(v) <= 63 {
		return v
	}
	sum := sha256.Sum256([]byte(name))
	suffix := hex.EncodeToString(sum[:4])
	if len(v) > 63-len(suffix)-1 {
		v = strings.TrimRight(v[:63-len(suffix)-1], "-_.")
	}
	if v == "" {
		return suffix
	}
	return v + "-" + suffix
}
