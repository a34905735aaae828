// Command profplugin is a Custos transport plugin for profiling: the transport named by
// CUSTOS_PROFPLUGIN_TRANSPORT (tcp, ws or libp2p), exactly as cmd/transport-* build it, writing a CPU
// profile to CUSTOS_PROFPLUGIN_OUT-<pid>.prof while it runs. The agent-level benchmarks (test/bench) use it
// when CUSTOS_BENCH_PROFILE_PLUGINS=DIR is set, to show where the plugin processes spend their time. On
// SIGUSR1 it also writes a heap profile and its goroutines (BenchmarkSessions; CUSTOS_PROFPLUGIN_HEAP=1
// samples the heap finely).
package main

import (
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"

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
	if out := os.Getenv("CUSTOS_PROFPLUGIN_OUT"); out != "" {
		// SIGUSR1: a heap profile (after a GC) and the goroutines, for BenchmarkSessions (issue 19).
		usr1 := make(chan os.Signal, 1)
		signal.Notify(usr1, syscall.SIGUSR1)
		go func() {
			for i := 1; ; i++ {
				<-usr1
				runtime.GC()
				if f, err := os.Create(fmt.Sprintf("%s-%d-heap-%d.prof", out, os.Getpid(), i)); err == nil {
					_ = pprof.Lookup("heap").WriteTo(f, 0)
					f.Close()
				}
				if f, err := os.Create(fmt.Sprintf("%s-%d-heap-%d.goroutines", out, os.Getpid(), i)); err == nil {
					_ = pprof.Lookup("goroutine").WriteTo(f, 1)
					f.Close()
				}
			}
		}()
		if os.Getenv("CUSTOS_PROFPLUGIN_HEAP") != "" {
			runtime.MemProfileRate = 1024
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
