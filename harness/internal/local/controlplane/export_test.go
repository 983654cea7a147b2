package controlplane

import "net/url"

// EtcdURL exposes where etcd listens, so tests can prove it stopped.
func EtcdURL(e *Env) *url.URL { return e.plane.etcdURL }
