package testenv

// Kubeconfig is a kubeconfig file's content for the control plane (cluster
// admin), for code that reaches a cluster through a kubeconfig, as cluster
// providers hand one out.
func (e *Env) Kubeconfig() []byte { return e.environment.KubeConfig }
