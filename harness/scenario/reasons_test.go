package scenario

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/meshproof/meshproof/fixtures/echo/echoapi"
)

// Every reason the probe reports for a failed gRPC call (echoapi's
// GRPCErrorReason, whatever the status) can be written in an expect row.
func TestEveryGRPCReasonTheProbeReportsIsAccepted(t *testing.T) {
	for c := codes.Canceled; c <= codes.Unauthenticated; c++ {
		// With no transport text, as a status from the server arrives.
		reason := echoapi.GRPCErrorReason(c.String(), "")
		if !slices.Contains(FailReasons, reason) && !slices.Contains(GRPCFailReasons, reason) {
			t.Errorf("the probe reports %s for %s, which an expect row cannot name", reason, c)
		}
	}
}

const grpcWorkloads = header + `fixtures:
  workloads:
  - {name: grpc-a, proxyless: true}
  - {name: grpc-b, proxyless: true}
  - {name: service-b}
`

func TestGRPCReasons(t *testing.T) {
	mustLoad(t, grpcWorkloads+`scenarios:
- name: s
  steps:
  - expect:
    - {from: grpc-a, to: grpc-b, port: 7070, result: fail, reason: unavailable}
    - {from: service-b, to: grpc-b, port: 7070, result: fail, reason: grpc-permission-denied}
    - {from: grpc-b, to: grpc-a, port: 7070, result: fail, reason: reset}
`)
	for _, tc := range []struct{ name, row, want string }{
		{"unavailable on an http port", "{from: grpc-a, to: service-b, port: 8080, result: fail, reason: unavailable}",
			`reason unavailable is what a gRPC call reports, but port 8080 of workload "service-b" is http`},
		{"grpc code on an http port", "{from: grpc-a, to: service-b, port: 8080, result: fail, reason: grpc-unimplemented}",
			"is what a gRPC call reports"},
		{"misspelt grpc code", "{from: grpc-a, to: grpc-b, port: 7070, result: fail, reason: grpc-permision-denied}",
			`unknown reason "grpc-permision-denied"; want one of reset, refused, timeout, eof, tls, dns, upstream-503 or http-<code>; for gRPC also unavailable or grpc-<code>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := loadErrors(t, grpcWorkloads+"scenarios:\n- name: s\n  steps:\n  - expect:\n    - "+tc.row+"\n")
			if len(errs) != 1 || !strings.Contains(errs[0].Message, tc.want) || errs[0].Path != "scenarios[0].steps[0].expect[0].reason" || errs[0].Pos.Line != 15 {
				t.Fatalf("errors:\n%s\nwant one, at line 15, containing %q", errs, tc.want)
			}
		})
	}
	errs := loadErrors(t, grpcWorkloads+"scenarios:\n- name: s\n  steps:\n  - expect:\n    - {from: grpc-a, to: grpc-b, port: 7070, result: fail, reason: grpc-permision-denied}\n")
	if !strings.Contains(errs[0].Message, `did you mean "grpc-permission-denied"`) {
		t.Errorf("no suggestion: %s", errs)
	}
}
