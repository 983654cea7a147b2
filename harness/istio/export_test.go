package istio

// LocalChartsRoot exposes the chart lookup of the internal tests to the
// external (istio_test) ones.
var LocalChartsRoot = localChartsRoot

// ChartsEnv is the variable naming the local charts directory.
const ChartsEnv = chartsEnv
