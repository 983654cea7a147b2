// Command kwok-stages prints the kwok Stage objects meshproof's local cluster
// gives kwok with --config: the ones the pinned kwok release ships (node
// initialisation and lease heartbeat, pod ready, complete and delete), taken
// from that release's module so they always match the kwok binary.
package main

import (
	"fmt"
	"strings"

	nodefast "sigs.k8s.io/kwok/kustomize/stage/node/fast"
	nodeheartbeat "sigs.k8s.io/kwok/kustomize/stage/node/heartbeat-with-lease"
	podfast "sigs.k8s.io/kwok/kustomize/stage/pod/fast"
)

func main() {
	docs := []string{
		nodefast.DefaultNodeInit,
		nodeheartbeat.DefaultNodeHeartbeatWithLease,
		podfast.DefaultPodReady,
		podfast.DefaultPodComplete,
		podfast.DefaultPodDelete,
	}
	for i, doc := range docs {
		if i > 0 {
			fmt.Println("---")
		}
		fmt.Println(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(doc), "---")))
	}
}
