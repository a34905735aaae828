// Command profplugin is a Custos transport plugin for profiling: the transport named by
// CUSTOS_PROFPLUGIN_TRANSPORT (tcp, ws or libp2p), exactly as cmd/transport-* build it, writing a CPU
// profile to CUSTOS_PROFPLUGIN_OUT-<pid>.prof while it runs. The agent-level benchmarks (test/bench) use it
// when CUSTOS_BENCH_PROFILE_PLUGINS=DIR is set, to show where the plugin processes spend their time.
package main

import (
	"fmt"
	"os"
	"runtime/pprof"

	"github.com/custos-agent/custos/transports/libp2p"
	"github.com/custos-agent/custos/transports/plugin"
	"github.com/custos-agent/custos/transports/tcp"
	"github.com/custos-agent/custos/transports/ws"
)

func main() {
	if out := os.Getenv("CUSTOS_PROFPLUGIN_OUT"); out != "" {
		f, err := os.Create(fmt.Sprintf("%s-%d.prof", out, os.Getpid()))
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	var n plugin.Network
	switch t := os.Getenv("CUSTOS_PROFPLUGIN_TRANSPORT"); t {
	case tcp.Name:
		n = tcp.New(plugin.Logger(t))
	case ws.Name:
		n = ws.New(plugin.Logger(t))
	case libp2p.Name:
		n = libp2p.New(plugin.Logger(t))
	default:
		fmt.Fprintf(os.Stderr, "profplugin: CUSTOS_PROFPLUGIN_TRANSPORT=%q: want tcp, ws or libp2p\n", t)
		os.Exit(1)
	}
	plugin.Serve(n)
}
