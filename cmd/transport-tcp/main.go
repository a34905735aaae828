// Command transport-tcp is the Custos TCP transport plugin (TLS 1.3, mutual, binding-pinned). The agent
// launches it; started by hand it explains that and exits.
package main

import (
	"github.com/custos-agent/custos/transports/plugin"
	"github.com/custos-agent/custos/transports/tcp"
)

func main() {
	plugin.Serve(tcp.New(plugin.Logger(tcp.Name)))
}
