package scenario

import (
	"testing"
)

// Mistakes a newcomer makes get one exact, positioned message that says
// what to write, and nothing that misleads beside it.
func TestNewcomerMistakesGetOneHelpfulMessage(t *testing.T) {
	const top = "apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nclusters: [{name: c, istio: {version: 1.30.3}}]\n"
	for name, tc := range map[string]struct{ file, want string }{
		"no clusters": {"apiVersion: meshproof.dev/v1alpha1\nkind: Suite\nscenarios:\n- name: s\n  steps:\n  - wait: {duration: 1s}\n",
			`test.yaml:1:1: missing required field "clusters"`},
		"a number for a duration": {top + "scenarios:\n- name: s\n  steps:\n  - wait: {duration: 5}\n",
			"test.yaml:7:22: scenarios[0].steps[0].wait.duration: a duration needs a unit: write 5s (seconds), 5m (minutes) or 5h (hours), not the bare number 5"},
		"a quoted number for a duration": {top + "scenarios:\n- name: s\n  steps:\n  - wait: {duration: \"5\"}\n",
			"test.yaml:7:22: scenarios[0].steps[0].wait.duration: a duration needs a unit: write 5s (seconds), 5m (minutes) or 5h (hours), not the bare number 5"},
		"a misspelt matrix variable": {top + "scenarios:\n- name: s\n  matrix:\n    aResults: [mtls, plaintext]\n  steps:\n  - expect:\n    - {from: service-a, to: service-b, result: \"${aResult}\"}\n",
			`test.yaml:10:48: scenarios[0].steps[0].expect[0].result: unknown matrix variable "aResult" (did you mean "aResults"?); this scenario's matrix defines aResults`},
		"a tab": {top + "scenarios:\n- name: s\n  steps:\n\t- wait: {duration: 1s}\n",
			"test.yaml:7:1: YAML syntax error: a tab character; YAML indents with spaces only: replace the tab with spaces"},
		"a mis-indented mtls block": {top + "scenarios:\n- name: s\n  steps:\n  - mtls:\n    peerAuthentications:\n    - {scope: namespace, mode: STRICT}\n",
			"test.yaml:8:5: scenarios[0].steps[0].peerAuthentications: peerAuthentications is a field of mtls (line 7), but it is indented as a field beside it, so mtls is empty: indent peerAuthentications (and what follows it) further than mtls"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Load("test.yaml", []byte(tc.file))
			if err == nil || err.Error() != tc.want {
				t.Errorf("got:\n%v\nwant exactly:\n%s", err, tc.want)
			}
		})
	}
}
