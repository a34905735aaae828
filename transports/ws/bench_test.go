package ws_test

import (
	"testing"

	"github.com/custos-agent/custos/transports/host/hosttest"
)

// BenchmarkPlugin streams frames host -> plugin -> wss:// -> plugin -> host.
func BenchmarkPlugin(b *testing.B) {
	hosttest.BenchPlugin(b, "ws", bins["transport-ws"], "127.0.0.1:0")
}
