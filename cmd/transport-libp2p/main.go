// Command transport-libp2p is the Custos libp2p transport plugin (TCP, Noise/TLS, yamux; protocol
// /custos/1.0.0). The agent launches it; started by hand it explains that and exits.
package main

import (
	"github.com/custos-agent/custos/transports/libp2p"
	"github.com/custos-agent/custos/transports/plugin"
)

func main() {
	plugin.Serve(libp2p.New(plugin.Logger(libp2p.Name)))
}
