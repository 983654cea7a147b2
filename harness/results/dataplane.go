package results

import (
	"slices"
	"strings"
)

// A step's requests can be answered by more than one data plane: in a
// rehearsal, the simulated sidecars answer some and real proxyless gRPC
// processes others (Observation.DataPlane says which, per request). Its
// verdict says all of them in one Verdict.DataPlane, which JUnit's
// dataPlane property and the report carry as they are.
const (
	// mixedDataPlanes starts the DataPlane of a verdict whose requests
	// several data planes answered; the labels follow, separated by
	// dataPlaneSeparator: "mixed: <label> | <label>".
	mixedDataPlanes    = "mixed: "
	dataPlaneSeparator = " | "
	// OwnDataPlane stands for an observation without a label (the
	// cluster's own sidecars answered it) among labelled ones.
	OwnDataPlane = "the cluster's own data plane"
)

// StepDataPlane is the DataPlane of a verdict whose observations carried
// labels: "" when none did (all were the cluster's own), the label when
// they all share one, else "mixed: " and each label once, in the order
// first seen, separated by " | " (an unlabelled observation among labelled
// ones counts as OwnDataPlane).
func StepDataPlane(labels []string) string {
	var distinct []string
	for _, l := range labels {
		if !slices.Contains(distinct, l) {
			distinct = append(distinct, l)
		}
	}
	switch len(distinct) {
	case 0:
		return ""
	case 1:
		return distinct[0]
	}
	for i, l := range distinct {
		if l == "" {
			distinct[i] = OwnDataPlane
		}
	}
	return mixedDataPlanes + strings.Join(distinct, dataPlaneSeparator)
}

// DataPlanes are the labels a verdict's DataPlane names: itself, or each
// of a mixed one's; none for "".
func DataPlanes(dataPlane string) []string {
	if dataPlane == "" {
		return nil
	}
	rest, ok := strings.CutPrefix(dataPlane, mixedDataPlanes)
	if !ok {
		return []string{dataPlane}
	}
	return strings.Split(rest, dataPlaneSeparator)
}
