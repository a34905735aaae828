// Package plugintest builds the real transport plugin binaries once per test binary and starts hosts
// around them, for the tests of transports/host and of each transport.
package plugintest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/transports/host"
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
	Authority *host.IdentityAuthority
	ID        string
	Restarts  chan host.RestartEvent
	Refused   chan error
}

type observer struct{ h *Host }

func (o observer) PluginRestarted(ev host.RestartEvent) {
	select {
	case o.h.Restarts <- ev:
	default:
	}
}

func (o observer) PeerRefused(_, _ string, err error) {
	select {
	case o.h.Refused <- err:
	default:
	}
}

// NewAuthority makes an IdentityAuthority for a fresh Ed25519 agent.
func NewAuthority(t testing.TB) *host.IdentityAuthority {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := keystore.NewMemorySigner(priv)
	if err != nil {
		t.Fatal(err)
	}
	a, err := host.NewIdentityAuthority(s, time.Hour)
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

// Start starts a host for cfg (after mod, if any) and closes it at the end of the test.
func Start(t testing.TB, cfg host.Config) *Host {
	t.Helper()
	h := &Host{Restarts: make(chan host.RestartEvent, 8), Refused: make(chan error, 8)}
	a, ok := cfg.Authority.(*host.IdentityAuthority)
	if !ok {
		t.Fatalf("plugintest.Start wants an IdentityAuthority")
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

// Pair has a listen on addr and b dial it (pinning a's ID); it returns a's and b's ends.
func Pair(t testing.TB, a, b *Host, addr string) (*host.Conn, *host.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := a.T.Listen(ctx, addr)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	cb, err := b.T.Dial(ctx, l.Addrs()[0], a.ID)
	if err != nil {
		t.Fatalf("dial %s: %v", l.Addrs()[0], err)
	}
	t.Cleanup(func() { _ = cb.Close() })
	ca, err := l.Accept(ctx)
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { _ = ca.Close() })
	return ca, cb
}

// Exchange sends frames from w to r and checks they arrive intact and in order.
func Exchange(t testing.TB, w, r *host.Conn, frames [][]byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		for _, f := range frames {
			if err := w.WriteFrame(ctx, f); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for i, want := range frames {
		got, err := r.ReadFrame(ctx)
		if err != nil {
			t.Fatalf("frame %d: read: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("frame %d: got %d bytes, want %d (content differs: %v)", i, len(got), len(want), !bytes.Equal(got, want))
		}
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
}

// Frame returns n random bytes.
func Frame(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

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

// ExpectEnd waits for c to end (ReadFrame returns an error) and returns that error.
func ExpectEnd(t testing.TB, c *host.Conn, within time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for {
		_, err := c.ReadFrame(ctx)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("connection still open after %v", within)
			}
			return err
		}
	}
}

// goTool finds the go command: `go test` puts $GOROOT/bin first on PATH.
func goTool() (string, error) {
	p, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("the go command is not on PATH (needed to build the test plugins): %w", err)
	}
	return p, nil
}
