package hosttest

import (
	"testing"

	"github.com/custos-agent/custos/transports/transporttest"
)

// BenchPlugin benchmarks the plugin path of transport name (binary bin) at every transporttest.BenchSizes
// size.
func BenchPlugin(b *testing.B, name, bin, listenAddr string) {
	a, c := Start(b, Config(b, name, bin)), Start(b, Config(b, name, bin))
	ca, cb := Pair(b, a, c, listenAddr)
	for _, s := range transporttest.BenchSizes {
		b.Run(s.Name, func(b *testing.B) { transporttest.Stream(b, cb, ca, s.Size) })
	}
}
