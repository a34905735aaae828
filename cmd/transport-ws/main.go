// Command transport-ws is the Custos WebSocket transport plugin (wss://, TLS 1.3, mutual, binding-pinned).
// The agent launches it; started by hand it explains that and exits.
package main

import (
	"github.com/custos-agent/custos/transports/plugin"
	"github.com/custos-agent/custos/transports/ws"
)

func main() {
	plugin.Serve(ws.New(plugin.Logger(ws.Name)))
}
