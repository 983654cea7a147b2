package scenario

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// describe names the data plane the way messages do.
func (d DataPlane) describe() string {
	switch d {
	case DataPlaneNone:
		return "out of the mesh"
	case DataPlaneProxyless:
		return "proxyless gRPC"
	case DataPlaneAmbient:
		return "ambient"
	}
	return "in the mesh with a sidecar"
}

// Capability is something a step needs meshproof to do with a workload,
// which not every data plane allows.
type Capability string

// The capabilities steps need.
const (
	// CapServedCertificate: read the certificate the workload serves and
	// its trust bundle, to see it rotate (rotate, rotateRoot). meshproof
	// reads it through the workload's Envoy: a handshake offering Istio's
	// ALPN, and the config dump of its SDS secrets.
	CapServedCertificate Capability = "read the certificate it serves"
	// CapRootRotation: see the workload's served certificate and trust
	// bundle move to a new root (rotateRoot), which meshproof checks
	// through the workload's Envoy (handshakes and SDS secrets) as the
	// rotation proceeds.
	CapRootRotation Capability = "follow a root rotation through its proxy"
)

// capabilities lists, per data plane, what meshproof cannot do with its
// workloads and why; everything else it can. Validation (so `meshproof
// validate`) and the engine (so `meshproof run`) both read this table: a
// step validate accepts is one run can run. A new data plane is a row.
var capabilities = map[DataPlane]map[Capability]string{
	DataPlaneSidecar: {},
	DataPlaneProxyless: {
		CapServedCertificate: "a proxyless pod has no Envoy to handshake with or dump its secrets: pilot-agent hands its certificates to grpc-go, which answers neither",
	},
	DataPlaneAmbient: {
		// A rotate step reads an ambient workload's certificate from its
		// node's ztunnel (config dump, port 15000, through a port-forward).
		CapRootRotation: "an ambient pod has no sidecar: its certificates live in its node's ztunnel, which serves them only over HBONE, and meshproof follows a root rotation through Envoy",
	},
	DataPlaneNone: {
		CapServedCertificate: "it has no workload certificate",
	},
}

// Cannot says why meshproof cannot do c with a workload on data plane d,
// or "" when it can.
func (d DataPlane) Cannot(c Capability) string { return capabilities[d][c] }

// needs are the capabilities each step asks of which workloads, as errors
// at the step: what the table above refuses.
func (v *validator) capabilities(st *Step, path string) {
	switch {
	case st.Rotate != nil:
		w := v.s.Workload(st.Rotate.Workload)
		if w == nil {
			return
		}
		if why := w.Plane().Cannot(CapServedCertificate); why != "" {
			v.errorf(st.Rotate.Source.At("workload"), path+".rotate.workload", "workload %q is %s, and a rotate step needs to %s: %s",
				w.Name, w.Plane().describe(), CapServedCertificate, why)
		}
	case st.RotateRoot != nil:
		// Every in-mesh workload's served certificate and trust bundle
		// must move to the new root.
		byPlane := map[DataPlane][]string{}
		cannot := func(d DataPlane) string { return cmp.Or(d.Cannot(CapServedCertificate), d.Cannot(CapRootRotation)) }
		for _, w := range v.s.Fixtures.Workloads {
			if d := w.Plane(); d != DataPlaneNone && cannot(d) != "" {
				byPlane[d] = append(byPlane[d], w.Name)
			}
		}
		planes := make([]DataPlane, 0, len(byPlane))
		for d := range byPlane {
			planes = append(planes, d)
		}
		slices.Sort(planes)
		for _, d := range planes {
			v.errorf(st.Source.At("rotateRoot"), path+".rotateRoot", "rotateRoot needs to %s for every in-mesh workload, which meshproof cannot for %s %s: %s; move them to a suite without rotateRoot",
				CapServedCertificate, d.describe(), strings.Join(byPlane[d], ", "), cannot(d))
		}
	}
}

// Unsupported reports the steps of s that need what their workloads' data
// planes cannot give, at their positions: what validation refuses. The
// engine calls it too, for suites built in code rather than loaded.
func Unsupported(s *Suite) ErrorList {
	v := &validator{s: s}
	for i := range s.Scenarios {
		sc := &s.Scenarios[i]
		for j := range sc.Steps {
			v.capabilities(&sc.Steps[j], fmt.Sprintf("scenarios[%d].steps[%d]", i, j))
		}
	}
	return v.errs.sortAndDedupe()
}
