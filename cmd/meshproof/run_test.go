package main

import (
	"bytes"
	"encoding/xml"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestRunHelp(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"run", "--help"}, &out, &errOut); code != exitOK {
		t.Fatalf("run --help exit %d, stderr %s", code, errOut.String())
	}
	for _, want := range []string{"Usage: meshproof run", "--label-filter", "--reports", "Exit status", "--parallel", "(default 4, for a CI runner of two\ncores", "--shard", "report\nmerge"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("run --help does not mention %q:\n%s", want, out.String())
		}
	}
}

func TestRunUsageErrors(t *testing.T) {
	for name, args := range map[string][]string{
		"two files":    {"run", "a.yaml", "b.yaml"},
		"bad flag":     {"run", "--no-such-flag"},
		"bad filter":   {"run", "../../scenarios.yaml", "--label-filter", "strict &&"},
		"filters none": {"run", "../../scenarios.yaml", "--label-filter", "no-such-label", "--reports", t.TempDir()},
		"parallel 0":   {"run", "../../scenarios.yaml", "--parallel", "0"},
		"bad shard":    {"run", "../../scenarios.yaml", "--shard", "3/2"},
		"shard words":  {"run", "../../scenarios.yaml", "--shard", "first"},
	} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != exitUsage {
			t.Errorf("%s: exit %d, want %d; stderr %s", name, code, exitUsage, errOut.String())
		}
	}
}

// The acceptance case of `meshproof run`: an existing cluster whose API
// server cannot be reached fails the setup within the reach bound, exit 1,
// and the run folder holds the JUnit (the setup a failed test case, every
// step skipped), results.json and report.html.
func TestRunUnreachableExistingCluster(t *testing.T) {
	dir := t.TempDir()
	cache := t.TempDir()
	t.Setenv("MESHPROOF_CACHE", cache)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: gone, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: `+credential+`}}]
contexts: [{name: gone, context: {cluster: gone, user: u}}]
current-context: gone
`), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "staging.yaml")
	if err := os.WriteFile(file, []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters:
- name: staging
  provider: existing
  existing: {kubeconfig: `+kubeconfig+`}
  istio: {version: 1.30.3}
fixtures: {namespace: meshproof-acceptance}
scenarios:
- name: strict
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
  - expect: [{from: service-a, to: service-b, port: 8080, result: mtls}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	reports := filepath.Join(dir, "reports")
	var out, errOut bytes.Buffer
	start := time.Now()
	code := run([]string{"run", file, "--reports", reports}, &out, &errOut)
	took := time.Since(start)
	if code != exitInvalid {
		t.Fatalf("exit %d, want 1\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
	}
	// A printed figure, not an assertion: the reach bound (30 s) is what
	// keeps it under the acceptance's 90 s.
	t.Logf("failed after %s", took.Round(time.Second))
	folder, err := filepath.EvalSymlinks(filepath.Join(reports, "latest"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"junit.xml", "results.json", "report.html"} {
		if _, err := os.Stat(filepath.Join(folder, f)); err != nil {
			t.Errorf("the run folder lacks %s: %v", f, err)
		}
	}
	data, err := os.ReadFile(filepath.Join(folder, "junit.xml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Cases []struct {
			Name    string    `xml:"name,attr"`
			Failure *struct{} `xml:"failure"`
			Skipped *struct{} `xml:"skipped"`
		} `xml:"testsuite>testcase"`
	}
	if err := xml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	var failed, skipped int
	for _, c := range doc.Cases {
		switch {
		case c.Name == "[SynchronizedBeforeSuite]" && c.Failure != nil:
			failed++
		case strings.HasPrefix(c.Name, "[It] strict ") && c.Skipped != nil:
			skipped++
		default:
			t.Errorf("unexpected test case %+v", c)
		}
	}
	if failed != 1 || skipped != 2 {
		t.Errorf("JUnit has %d failed setup and %d skipped steps, want 1 and 2:\n%s", failed, skipped, data)
	}
	if !strings.Contains(out.String(), "FAILED") || !strings.Contains(out.String(), "https://127.0.0.1:1") {
		t.Errorf("the summary does not say what failed:\n%s", out.String())
	}
	finalLinesTellTheFolder(t, out.String(), folder)
	noRepeatedKeys(t, out.String())
	holdsNoCredential(t, reports, out.String()+errOut.String())
	if entries, _ := os.ReadDir(filepath.Join(cache, "kubeconfigs")); len(entries) != 0 {
		t.Errorf("the run's private kubeconfigs outlive it: %v", entries)
	}
}

// credential is a distinctive token the tests' kubeconfigs carry, to find
// any copy of it.
const credential = "meshproof-test-credential-7c1e5d0a93b2"

// holdsNoCredential fails when a file under dir, or output, holds the
// credential.
func holdsNoCredential(t *testing.T, dir, output string) {
	t.Helper()
	if strings.Contains(output, credential) {
		t.Error("the credential was printed")
	}
	files := 0
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err // folders, and latest (a link to the run folder, walked itself)
		}
		files++
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.Contains(data, []byte(credential)) {
			t.Errorf("%s holds the kubeconfig's credential", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files == 0 {
		t.Errorf("no file under %s: nothing was checked", dir)
	}
}

// noRepeatedKeys fails on a progress line that carries an attribute twice
// ("cluster=dev cluster=dev").
func noRepeatedKeys(t *testing.T, stdout string) {
	t.Helper()
	key := regexp.MustCompile(` ([A-Za-z][\w.-]*)=`)
	for _, line := range strings.Split(stdout, "\n") {
		seen := map[string]bool{}
		for _, m := range key.FindAllStringSubmatch(line, -1) {
			if seen[m[1]] {
				t.Errorf("key %s twice in %q", m[1], line)
			}
			seen[m[1]] = true
		}
	}
}

// finalLinesTellTheFolder checks the CLI's last two lines against the run
// folder: report.html's banner says what the summary line says (outcome,
// counts, setup), and the last line lists every file and folder the run
// wrote.
func finalLinesTellTheFolder(t *testing.T, stdout, folder string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) < 2 {
		t.Fatalf("stdout:\n%s", stdout)
	}
	summary := regexp.MustCompile(`^(PASSED|FAILED) in \S+: (\d+ passed, \d+ failed, \d+ skipped)(, setup failed)?$`).FindStringSubmatch(lines[len(lines)-2])
	if summary == nil {
		t.Fatalf("no summary line: %q", lines[len(lines)-2])
	}
	setup := "; setup passed"
	if summary[3] != "" {
		setup = "; setup failed"
	}
	page, err := os.ReadFile(filepath.Join(folder, "report.html"))
	if err != nil {
		t.Fatal(err)
	}
	banner := regexp.MustCompile(`<span class="headline">([A-Z ]+)</span> <span class="counts">[^:<]*: ([^<]*)</span>`).FindSubmatch(page)
	if banner == nil || string(banner[1]) != summary[1] || string(banner[2]) != summary[2]+setup {
		t.Errorf("report.html's banner %q, the CLI's summary %q", banner, summary[0])
	}
	if summary[3] != "" && (bytes.Count(page, []byte(`<div class="failure"`)) != 1 || !bytes.Contains(page, []byte(`<div class="failure" id="failure-setup">`))) {
		t.Errorf("report.html does not list the setup as the one failure")
	}
	entries, err := os.ReadDir(folder)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() {
			name += "/"
		}
		want = append(want, name)
	}
	if last := lines[len(lines)-1]; !strings.HasSuffix(last, "("+strings.Join(want, ", ")+")") || !strings.Contains(last, "events.json") {
		t.Errorf("the last line %q does not list what the run folder holds: %q", last, want)
	}
}

// A shard that gets none of the file's scenarios says so and passes,
// touching no cluster (the file's is unreachable), and still writes its run
// folder, which report merge counts as that shard's; merging it without
// the other shard, or twice, is refused.
func TestRunEmptyShardPasses(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "one.yaml")
	if err := os.WriteFile(file, []byte(`apiVersion: meshproof.dev/v1alpha1
kind: Suite
clusters:
- name: gone
  provider: existing
  existing: {kubeconfig: nowhere, image: {ref: "example.com/echo:1"}}
  istio: {version: 1.30.3}
scenarios:
- name: only
  steps:
  - mtls: {peerAuthentications: [{scope: namespace, mode: STRICT}]}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	reports := filepath.Join(dir, "reports")
	var out, errOut bytes.Buffer
	if code := run([]string{"run", file, "--shard", "2/2", "--reports", reports}, &out, &errOut); code != exitOK {
		t.Fatalf("exit %d, want 0\n%s%s", code, out.String(), errOut.String())
	}
	if !strings.Contains(out.String(), "shard 2/2 gets none of the 1 selected scenarios") || !strings.Contains(out.String(), "PASSED") {
		t.Errorf("the empty shard does not say so:\n%s", out.String())
	}
	latest := filepath.Join(reports, "latest")
	info, err := os.ReadFile(filepath.Join(latest, "run.json"))
	if err != nil || !strings.Contains(string(info), `"shard": "2/2"`) || !strings.Contains(string(info), `"scenarios": []`) {
		t.Errorf("run.json: %s, %v", info, err)
	}
	for name, args := range map[string][]string{
		"shard 1/2 missing": {"report", "merge", latest, "-o", filepath.Join(dir, "m1")},
		"shard twice":       {"report", "merge", latest, latest, "-o", filepath.Join(dir, "m2")},
	} {
		out.Reset()
		errOut.Reset()
		if code := run(args, &out, &errOut); code != exitInvalid {
			t.Errorf("%s: exit %d, want 1", name, code)
		}
		t.Logf("%s: %s", name, errOut.String())
		if !strings.Contains(errOut.String(), "1/2") && !strings.Contains(errOut.String(), "twice") {
			t.Errorf("%s: the error names no shard: %s", name, errOut.String())
		}
	}
	if code := run([]string{"report", "merge"}, &out, &errOut); code != exitUsage {
		t.Errorf("report merge without folders: exit %d, want 2", code)
	}
}

// plan shows the schedule a run follows: the default scenarios together,
// each in namespaces of its own; a file whose scenarios all change
// mesh-wide state one at a time, each saying why; --parallel 1 one at a
// time in file order.
func TestPlanShowsTheSchedule(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"plan", "../../scenarios.yaml"}, &out, &errOut); code != exitOK {
		t.Fatalf("plan: exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"Schedule (--parallel 4)", "up to 4 at once, each in namespaces of its own, longest first:", "workload-cert-rotation (about 38s)",
		"in its own copy of service-a, service-b, legacy, in namespace meshproof-strict-",
		"in its own copy of service-a, service-b, legacy, amb-a, amb-b, in namespace meshproof-ambient-"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("plan of scenarios.yaml lacks %q", want)
		}
	}
	// Setup says that the fixtures are deployed by each scenario, in the
	// operation that deploys them, and keeps its other operations (the
	// wire witness after it) as they are.
	for _, want := range []string{`(?m)^  \d+\. no fixtures at setup: each scenario deploys its own copy of those it uses, in namespaces of its own \(see the schedule\), of meshproof/service-a `,
		`(?m)^  \d+\. deploy the wire witness \(wireWitness on\)`} {
		if !regexp.MustCompile(want).MatchString(out.String()) {
			t.Errorf("plan of scenarios.yaml: no setup operation matches %s:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := run([]string{"plan", "../../harness/rehearsal/testdata/mesh-only.yaml"}, &out, &errOut); code != exitOK {
		t.Fatalf("plan: exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"every scenario runs alone, one after the other, on the fixtures' own namespaces:",
		`mesh-strict: step "1 mtls mesh STRICT" (../../harness/rehearsal/testdata/mesh-only.yaml:19:5) applies a mesh-scope PeerAuthentication`,
		"mesh-dr: step", "mesh-wide DestinationRule"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("plan of mesh-only.yaml lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := run([]string{"plan", "../../scenarios.yaml", "--parallel", "1"}, &out, &errOut); code != exitOK {
		t.Fatalf("plan: exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "every scenario runs alone: --parallel 1") {
		t.Errorf("plan --parallel 1 does not say it runs one at a time")
	}
}
