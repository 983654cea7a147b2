package controlplane

import "net/url"

// EtcdURL exposes where etcd listens, so tests can prove it stopped.
func EtcdURL(e *Env) *url.URL { return e.plane.etcdURL }

// ClaimPort is claimPort, for the child process of
// TestClaimedPortsAreNotHandedOutTwice (run from TestMain).
var ClaimPort = claimPort

// ClaimChildEnv names the port a child test process tries to claim.
const ClaimChildEnv = "MESHPROOF_CLAIM_CHILD"
