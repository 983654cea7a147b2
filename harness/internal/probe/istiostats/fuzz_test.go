package istiostats

import (
	"bytes"
	"os"
	"testing"
)

// FuzzParse checks that Parse never panics and that what it accepts is
// rendered by Format into text that parses to the same rendering, which
// pins the escaping of the parser and of the formatter (the simulated
// data plane's statistics) to each other. Seeds: the sidecar statistics
// of testdata and an escaped sample with a timestamp.
func FuzzParse(f *testing.F) {
	if text, err := os.ReadFile("testdata/server-sidecar.prom"); err == nil {
		f.Add(text)
	}
	f.Add([]byte(`istio_tcp_connections_opened_total{reporter="destination",source_principal="a\\b\"c\nd"} 3 1700000000000`))
	f.Fuzz(func(t *testing.T, text []byte) {
		samples, err := Parse(text)
		if err != nil {
			return
		}
		formatted := Format(samples, "counter")
		again, err := Parse(formatted)
		if err != nil {
			t.Fatalf("re-parsing formatted %q (from %q): %v", formatted, text, err)
		}
		if twice := Format(again, "counter"); !bytes.Equal(formatted, twice) {
			t.Fatalf("round trip changed the samples\ninput  %q\nfirst  %q\nsecond %q", text, formatted, twice)
		}
		_, _ = InboundTCP(samples) // must not panic either
	})
}
