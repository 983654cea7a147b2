package diagnose

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"path/filepath"
	"regexp"

	"github.com/meshproof/meshproof/harness/internal/probe"
	"github.com/meshproof/meshproof/harness/results"
)

// ConfigDumpCommand asks a sidecar's Envoy, through pilot-agent in the
// istio-proxy container, for its whole configuration.
var ConfigDumpCommand = []string{"pilot-agent", "request", "GET", "config_dump"}

// collectConfigDump writes a sidecar's config dump, private keys scrubbed,
// to <ns>/<pod>/config_dump.json.
func (c *Collector) collectConfigDump(ctx context.Context, dir string, p podRef, s *summary) {
	rel := filepath.Join(p.namespace, p.name, ConfigDumpFile)
	what := "Envoy config dump of the " + probe.ProxyContainer + " sidecar"
	ictx, cancel := c.itemContext(ctx)
	defer cancel()
	stdout, _, err := c.execer.Exec(ictx, probe.Command{
		Pod:       results.Pod{Namespace: p.namespace, Name: p.name},
		Container: probe.ProxyContainer,
		Argv:      ConfigDumpCommand,
	})
	if err != nil {
		// The probe.ExecError already carries the command's stderr.
		s.fail(rel, what, err)
		return
	}
	if len(bytes.TrimSpace(stdout)) == 0 {
		s.fail(rel, what, fmt.Errorf("%q printed nothing", ConfigDumpCommand))
		return
	}
	scrubbed, n := ScrubPrivateKeys(stdout)
	if err := writeFile(dir, rel, scrubbed); err != nil {
		s.fail(rel, what, err)
		return
	}
	if n > 0 {
		what += fmt.Sprintf(", %d private keys scrubbed", n)
	}
	s.collected(rel, what)
}

// Redacted replaces every private key ScrubPrivateKeys finds.
const Redacted = "[private key redacted by meshproof]"

var (
	// pemPrivateKey is a whole PEM private key block of any type (PKCS#8,
	// RSA, EC, ENCRYPTED). Inside a JSON string its line breaks are the
	// two characters `\n`, which (?s) and the lazy match span just the same.
	pemPrivateKey = regexp.MustCompile(`(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?-----END [A-Z0-9 ]*PRIVATE KEY-----`)
	// pemPrivateKeyUnterminated is a block whose end marker is missing (a
	// cut output): everything to the end of the JSON string goes.
	pemPrivateKeyUnterminated = regexp.MustCompile(`-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[^"]*`)
	// base64Run is a run long enough to hold an encoded key. Envoy's dump
	// shows DataSource.inline_bytes as base64, so a key that escaped
	// Envoy's own redaction would appear encoded.
	base64Run = regexp.MustCompile(`[A-Za-z0-9+/]{64,}={0,2}`)
)

// ScrubPrivateKeys replaces every PEM private key in data, plain or
// base64-encoded, with Redacted, and says how many it replaced. Envoy
// already prints "[redacted]" for the private keys in its config dump;
// this is the second line of defence, so a diagnostics folder never holds
// a workload's key whatever Envoy's version does.
func ScrubPrivateKeys(data []byte) ([]byte, int) {
	n := 0
	redact := func([]byte) []byte { n++; return []byte(Redacted) }
	out := data
	// The regular expressions are slow on megabytes of dump; the plain
	// searches skip them for the usual dump, whose keys Envoy redacted.
	if bytes.Contains(out, privateKeyMarker) {
		out = pemPrivateKey.ReplaceAllFunc(out, redact)
		out = pemPrivateKeyUnterminated.ReplaceAllFunc(out, redact)
	}
	if !containsAny(out, encodedMarkers) {
		return out, n
	}
	out = base64Run.ReplaceAllFunc(out, func(run []byte) []byte {
		decoded, err := base64.StdEncoding.DecodeString(string(run))
		if err != nil {
			// Not base64 with padding; try without (the run may have lost
			// its padding to the regexp's bound).
			decoded, err = base64.RawStdEncoding.DecodeString(string(bytes.TrimRight(run, "=")))
			if err != nil {
				return run
			}
		}
		if bytes.Contains(decoded, []byte("PRIVATE KEY-----")) {
			return redact(run)
		}
		return run
	})
	return out, n
}

var (
	privateKeyMarker = []byte("PRIVATE KEY-----")
	// encodedMarkers are privateKeyMarker as it shows inside base64 at
	// each of the three alignments to the 3-byte groups base64 encodes.
	encodedMarkers = base64Signatures(privateKeyMarker)
)

// base64Signatures returns, for each alignment of m in an encoded stream,
// the base64 characters that depend on m's bytes alone.
func base64Signatures(m []byte) [][]byte {
	sigs := make([][]byte, 0, 3)
	for k := range 3 {
		enc := base64.StdEncoding.EncodeToString(append(make([]byte, k), m...))
		// Character i holds bits [6i, 6i+6) of the input; keep those
		// entirely inside m, which starts at bit 8k.
		first := (8*k + 5) / 6
		last := (8*(k+len(m)))/6 - 1
		sigs = append(sigs, []byte(enc[first:last+1]))
	}
	return sigs
}

func containsAny(data []byte, subs [][]byte) bool {
	for _, sub := range subs {
		if bytes.Contains(data, sub) {
			return true
		}
	}
	return false
}
