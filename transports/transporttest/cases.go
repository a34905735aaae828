package transporttest

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
)

// Pair has a listen on addr and b dial it (expecting a's agent ID); it returns a's and b's ends, closed
// when t ends.
func Pair(t testing.TB, a, b Endpoint, addr string) (Conn, Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := a.Listen(ctx, addr)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	cb, err := b.Dial(ctx, l.Addrs()[0], a.AgentID())
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

func testFramesBothWays(t *testing.T, f Factory) {
	n := f.New(t)
	a, b := n.Endpoint(t), n.Endpoint(t)
	ca, cb := Pair(t, a, b, f.ListenAddr)
	if cb.PeerAgentID() != a.AgentID() || ca.PeerAgentID() != b.AgentID() {
		t.Errorf("peer IDs %s / %s, want %s / %s", cb.PeerAgentID(), ca.PeerAgentID(), a.AgentID(), b.AgentID())
	}
	if ca.Transport() != f.Name || ca.RemoteAddr() == "" {
		t.Errorf("transport %q remote %q", ca.Transport(), ca.RemoteAddr())
	}
	frames := [][]byte{[]byte("hello"), {}, Frame(1024), Frame(64 << 10), Frame(transports.MaxFrameSize)}
	Exchange(t, cb, ca, frames)
	Exchange(t, ca, cb, frames)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := ca.WriteFrame(ctx, Frame(transports.MaxFrameSize+1)); !errors.Is(err, transports.ErrFrameTooLarge) {
		t.Errorf("oversized frame: %v, want ErrFrameTooLarge", err)
	}
	// Graceful close: the last frame arrives, then io.EOF.
	if err := ca.WriteFrame(ctx, []byte("bye")); err != nil {
		t.Fatal(err)
	}
	_ = ca.Close()
	if got, err := cb.ReadFrame(ctx); err != nil || string(got) != "bye" {
		t.Fatalf("last frame %q, %v", got, err)
	}
	// The very next read ends: nothing but the written frames arrives.
	endCtx, endCancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer endCancel()
	if got, err := cb.ReadFrame(endCtx); !errors.Is(err, io.EOF) {
		t.Errorf("after close: %d bytes, %v; want io.EOF", len(got), err)
	}
	if _, err := ca.ReadFrame(ctx); !errors.Is(err, transports.ErrClosed) {
		t.Errorf("read on the closed end: %v, want ErrClosed", err)
	}
}

func testWrongExpectedIDRefused(t *testing.T, f Factory) {
	n := f.New(t)
	a, b := n.Endpoint(t), n.Endpoint(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := a.Listen(ctx, f.ListenAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	other := n.OtherAgentID(t)
	_, err = b.Dial(ctx, l.Addrs()[0], other)
	if !errors.Is(err, transports.ErrPeerMismatch) || !strings.Contains(err.Error(), a.AgentID()) || !strings.Contains(err.Error(), other) {
		t.Fatalf("dial pinning another agent: %v; want ErrPeerMismatch naming %s and %s", err, a.AgentID(), other)
	}
	// The right pin still works.
	c, err := b.Dial(ctx, l.Addrs()[0], a.AgentID())
	if err != nil {
		t.Fatalf("dial with the right pin: %v", err)
	}
	_ = c.Close()
}

func testHostEnvironmentNotInherited(t *testing.T, f Factory) {
	t.Setenv("CUSTOS_PASSPHRASE", "hunter2-passphrase-secret")
	t.Setenv("CUSTOS_PKCS11_PIN", "98765-pin-secret")
	p := process(t, f, f.New(t).Endpoint(t))
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.PID()))
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
}

func testRestartAfterSIGKILL(t *testing.T, f Factory) {
	n := f.New(t)
	a, b := n.Endpoint(t), n.Endpoint(t)
	pa := process(t, f, a)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := a.Listen(ctx, f.ListenAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	old, err := b.Dial(ctx, l.Addrs()[0], a.AgentID())
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	oldIn, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer oldIn.Close()
	pid := pa.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-pa.Restarted():
		if ev.Restarts != 1 || ev.PID == pid || pa.Restarts() != 1 {
			t.Errorf("restart event %+v, counter %d, old pid %d", ev, pa.Restarts(), pid)
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
	nb, err := b.Dial(ctx, l.Addrs()[0], a.AgentID())
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
}
