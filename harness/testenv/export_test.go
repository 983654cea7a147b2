package testenv

import "net/url"

// EtcdURL exposes where etcd listens, so tests can prove it stopped.
func EtcdURL(e *Env) *url.URL { return e.plane.etcdURL }

// ControlPlanePids are etcd's and kube-apiserver's process ids.
func ControlPlanePids(e *Env) (etcd, apiServer int) {
	return e.plane.etcd.Pid(), e.plane.apiServer.Pid()
}
