// Package hosttest is test support for the plugin host (transports/host): it builds the real transport
// plugin binaries once per test binary, starts hosts around them with IdentityAuthority (a binding
// authority that signs with the identity key, for tests only), and makes the Factory with which each plugin
// transport runs the conformance suite (transports/transporttest). No production binary imports it.
package hosttest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/transports/host"
	"github.com/custos-agent/custos/transports/transporttest"
)

// RaceEnv, set to 1, builds the plugins with the race detector and logs their output at debug level,
// where a "DATA RACE" report of a plugin process shows up.
const RaceEnv = "CUSTOS_PLUGIN_RACE"

// Build compiles cmd/<name> for each name into dir and returns name -> absolute binary path. Call it from
// TestMain with a directory from os.MkdirTemp.
func Build(dir string, names ...string) (map[string]string, error) {
	goBin, err := goTool()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, n := range names {
		p := filepath.Join(dir, n)
		args := []string{"build", "-o", p}
		if os.Getenv(RaceEnv) == "1" {
			args = append(args, "-race")
		}
		cmd := exec.Command(goBin, append(args, "github.com/custos-agent/custos/cmd/"+n)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("go build %s: %v\n%s", n, err, stderr.String())
		}
		out[n] = p
	}
	return out, nil
}

// BuildPath compiles the main package at import path pkg into dir/name.
func BuildPath(dir, name, pkg string) (string, error) {
	goBin, err := goTool()
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, name)
	cmd := exec.Command(goBin, "build", "-o", p, pkg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, stderr.String())
	}
	return p, nil
}

// Host is a started transport with its authority and observed events.
type Host struct {
	T         *host.Transport
	Authority *IdentityAuthority
	ID        string
	Restarts  chan host.RestartEvent
	Crashes   chan host.CrashEvent
	// StartFailures receives each failed launch during a restart.
	StartFailures chan host.StartFailure
	Refused       chan error
	restarted     chan transporttest.Restart
}

type observer struct{ h *Host }

func (o observer) PluginCrashed(ev host.CrashEvent) {
	select {
	case o.h.Crashes <- ev:
	default:
	}
}

func (o observer) PluginStartFailed(f host.StartFailure) {
	select {
	case o.h.StartFailures <- f:
	default:
	}
}

func (o observer) PluginRestarted(ev host.RestartEvent) {
	select {
	case o.h.Restarts <- ev:
	default:
	}
	select {
	case o.h.restarted <- transporttest.Restart{Restarts: ev.Restarts, PID: ev.PID}:
	default:
	}
}

func (o observer) PeerRefused(_, _ string, err error) {
	select {
	case o.h.Refused <- err:
	default:
	}
}

// NewSigner makes a signer of a fresh Ed25519 key, in memory.
func NewSigner(t testing.TB) keystore.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := keystore.NewMemorySigner(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// NewAuthority makes an IdentityAuthority for a fresh Ed25519 agent.
func NewAuthority(t testing.TB) *IdentityAuthority {
	t.Helper()
	a, err := NewIdentityAuthority(NewSigner(t), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Config returns a host configuration for the plugin binary bin of transport name.
func Config(t testing.TB, name, bin string) host.Config {
	t.Helper()
	sum, err := host.FileSHA256(bin)
	if err != nil {
		t.Fatal(err)
	}
	return host.Config{Name: name, Path: bin, SHA256: sum, Authority: NewAuthority(t),
		Logger: Logger(t), HealthInterval: 200 * time.Millisecond, BackoffMin: 50 * time.Millisecond,
		BackoffMax: time.Second}
}

// Start starts a host for cfg (whose Authority must be an IdentityAuthority) and closes it at the end of
// the test.
func Start(t testing.TB, cfg host.Config) *Host {
	t.Helper()
	h := &Host{Restarts: make(chan host.RestartEvent, 8), Crashes: make(chan host.CrashEvent, 8), StartFailures: make(chan host.StartFailure, 8), Refused: make(chan error, 8),
		restarted: make(chan transporttest.Restart, 8)}
	a, ok := cfg.Authority.(*IdentityAuthority)
	if !ok {
		t.Fatalf("hosttest.Start wants an IdentityAuthority")
	}
	h.Authority, h.ID = a, a.AgentID()
	if cfg.Observer == nil {
		cfg.Observer = observer{h}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tr, err := host.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start %s plugin: %v", cfg.Name, err)
	}
	h.T = tr
	t.Cleanup(func() { _ = tr.Close() })
	return h
}

// Endpoint is h as an endpoint of the conformance suite; it implements transporttest.Process.
func (h *Host) Endpoint() transporttest.Endpoint {
	return endpoint{transporttest.EndpointOf[*host.Conn, *host.Listener](h.ID, h.T), h}
}

type endpoint struct {
	transporttest.Endpoint
	h *Host
}

func (e endpoint) PID() int                                { return e.h.T.PID() }
func (e endpoint) Restarts() uint64                        { return e.h.T.Restarts() }
func (e endpoint) Restarted() <-chan transporttest.Restart { return e.h.restarted }

// Pair has a listen on addr and b dial it (pinning a's ID); it returns a's and b's ends.
func Pair(t testing.TB, a, b *Host, addr string) (*host.Conn, *host.Conn) {
	t.Helper()
	ca, cb := transporttest.Pair(t, a.Endpoint(), b.Endpoint(), addr)
	return ca.(*host.Conn), cb.(*host.Conn)
}

// Factory is the conformance suite's factory of transport name (plugin binary bin), listening on
// listenAddr: each endpoint is a host around its own plugin process (Caps.Process).
func Factory(name, bin, listenAddr string) transporttest.Factory {
	return transporttest.Factory{Name: name, ListenAddr: listenAddr, Caps: transporttest.Caps{Process: true},
		New: func(*testing.T) transporttest.Network { return network{name, bin} }}
}

type network struct{ name, bin string }

func (n network) Endpoint(t *testing.T) transporttest.Endpoint {
	return Start(t, Config(t, n.name, n.bin)).Endpoint()
}

func (n network) OtherAgentID(t *testing.T) string { return NewAuthority(t).AgentID() }

// Logger logs through t.Log at Info level (quiet unless the test fails or -v).
func Logger(t testing.TB) *slog.Logger {
	level := slog.LevelInfo
	if os.Getenv(RaceEnv) == "1" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	defer func() { _ = recover() }() // logging after the test ended
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// goTool finds the go command: `go test` puts $GOROOT/bin first on PATH.
func goTool() (string, error) {
	p, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("the go command is not on PATH (needed to build the test plugins): %w", err)
	}
	return p, nil
}
