package plugintest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/host"
)

// Common runs the tests every transport must pass with real plugin processes of binary bin: frames both
// ways, a wrong expected agent ID refused, no inherited environment, and recovery from SIGKILL.
func Common(t *testing.T, name, bin, listenAddr string) {
	t.Run("FramesBothWays", func(t *testing.T) {
		a, b := Start(t, Config(t, name, bin)), Start(t, Config(t, name, bin))
		ca, cb := Pair(t, a, b, listenAddr)
		if cb.PeerAgentID() != a.ID || ca.PeerAgentID() != b.ID {
			t.Errorf("peer IDs %s / %s, want %s / %s", cb.PeerAgentID(), ca.PeerAgentID(), a.ID, b.ID)
		}
		if ca.Transport() != name || ca.RemoteAddr() == "" {
			t.Errorf("transport %q remote %q", ca.Transport(), ca.RemoteAddr())
		}
		frames := [][]byte{[]byte("hello"), {}, Frame(1024), Frame(64 << 10), Frame(transports.MaxFrameSize)}
		Exchange(t, cb, ca, frames)
		Exchange(t, ca, cb, frames)
		// Graceful close: the last frame arrives, then io.EOF.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := ca.WriteFrame(ctx, []byte("bye")); err != nil {
			t.Fatal(err)
		}
		_ = ca.Close()
		if f, err := cb.ReadFrame(ctx); err != nil || string(f) != "bye" {
			t.Fatalf("last frame %q, %v", f, err)
		}
		if err := ExpectEnd(t, cb, 15*time.Second); !errors.Is(err, io.EOF) {
			t.Errorf("after close: %v, want io.EOF", err)
		}
	})
	t.Run("WrongExpectedIDRefused", func(t *testing.T) {
		a, b := Start(t, Config(t, name, bin)), Start(t, Config(t, name, bin))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		l, err := a.T.Listen(ctx, listenAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		other := NewAuthority(t).AgentID()
		_, err = b.T.Dial(ctx, l.Addrs()[0], other)
		if !errors.Is(err, host.ErrPeerMismatch) || !strings.Contains(err.Error(), a.ID) || !strings.Contains(err.Error(), other) {
			t.Fatalf("dial pinning another agent: %v; want ErrPeerMismatch naming %s and %s", err, a.ID, other)
		}
		// The right pin still works.
		c, err := b.T.Dial(ctx, l.Addrs()[0], a.ID)
		if err != nil {
			t.Fatalf("dial with the right pin: %v", err)
		}
		_ = c.Close()
	})
	t.Run("HostEnvironmentNotInherited", func(t *testing.T) {
		t.Setenv("CUSTOS_PASSPHRASE", "hunter2-passphrase-secret")
		t.Setenv("CUSTOS_PKCS11_PIN", "98765-pin-secret")
		h := Start(t, Config(t, name, bin))
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", h.T.PID()))
		if err != nil {
			t.Fatal(err)
		}
		env := string(raw)
		if !strings.Contains(env, transports.MagicCookieKey+"=") {
			t.Fatalf("not the plugin's environment: %q", env)
		}
		for _, s := range []string{"CUSTOS_PASSPHRASE", "hunter2", "CUSTOS_PKCS11_PIN", "98765", "PATH=", "HOME="} {
			if strings.Contains(env, s) {
				t.Errorf("plugin environment contains %q", s)
			}
		}
	})
	t.Run("RestartAfterSIGKILL", func(t *testing.T) {
		a, b := Start(t, Config(t, name, bin)), Start(t, Config(t, name, bin))
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		l, err := a.T.Listen(ctx, listenAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		old, err := b.T.Dial(ctx, l.Addrs()[0], a.ID)
		if err != nil {
			t.Fatal(err)
		}
		defer old.Close()
		oldIn, err := l.Accept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer oldIn.Close()
		pid := a.T.PID()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		select {
		case ev := <-a.Restarts:
			if ev.Restarts != 1 || ev.PID == pid || a.T.Restarts() != 1 {
				t.Errorf("restart event %+v, counter %d, old pid %d", ev, a.T.Restarts(), pid)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no restart within 30s")
		}
		if err := ExpectEnd(t, old, 15*time.Second); err == nil {
			t.Error("the old connection survived the plugin")
		}
		if err := ExpectEnd(t, oldIn, 15*time.Second); err == nil {
			t.Error("the old inbound connection survived the plugin")
		}
		nb, err := b.T.Dial(ctx, l.Addrs()[0], a.ID)
		if err != nil {
			t.Fatalf("dial after restart (%v): %v", l.Addrs(), err)
		}
		defer nb.Close()
		na, err := l.Accept(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer na.Close()
		Exchange(t, nb, na, [][]byte{[]byte("after restart")})
		Exchange(t, na, nb, [][]byte{[]byte("and back")})
	})
}
