package wire

import "net"

// loopbackName is the loopback interface's name ("lo" on Linux).
func loopbackName() string {
	ifcs, err := net.Interfaces()
	if err == nil {
		for _, ifc := range ifcs {
			if ifc.Flags&net.FlagLoopback != 0 {
				return ifc.Name
			}
		}
	}
	return "lo"
}
