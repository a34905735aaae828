package libp2p_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	golibp2p "github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	lhost "github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	noise "github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/host"
	"github.com/custos-agent/custos/transports/host/hosttest"
	"github.com/custos-agent/custos/transports/transporttest"
)

var bins map[string]string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cxbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins, err = hosttest.Build(dir, "transport-libp2p")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// TestConformance runs the transport conformance suite through the plugin host and its subprocesses.
func TestConformance(t *testing.T) {
	transporttest.Run(t, hosttest.Factory("libp2p", bins["transport-libp2p"], "/ip4/127.0.0.1/tcp/0"))
}

func TestListenAddressesNamePeer(t *testing.T) {
	a := hosttest.Start(t, hosttest.Config(t, "libp2p", bins["transport-libp2p"]))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	l, err := a.T.Listen(ctx, "/ip4/127.0.0.1/tcp/0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, addr := range l.Addrs() {
		if !strings.HasPrefix(addr, "/ip4/127.0.0.1/tcp/") || !strings.Contains(addr, "/p2p/12D3KooW") {
			t.Errorf("listen address %q: want /ip4/127.0.0.1/tcp/PORT/p2p/<Ed25519 peer ID>", addr)
		}
	}
}

// rawPeer is a plain go-libp2p host (not a plugin) with the given security transport.
func rawPeer(t testing.TB, security string) (lhost.Host, ed25519.PublicKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sk, err := crypto.UnmarshalEd25519PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	opts := []golibp2p.Option{golibp2p.Identity(sk), golibp2p.NoListenAddrs, golibp2p.Transport(tcp.NewTCPTransport),
		golibp2p.Muxer(yamux.ID, yamux.DefaultTransport), golibp2p.DisableRelay()}
	switch security {
	case "noise":
		opts = append(opts, golibp2p.Security(noise.ID, noise.New))
	case "tls":
		opts = append(opts, golibp2p.Security(libp2ptls.ID, libp2ptls.New))
	}
	h, err := golibp2p.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h, pub
}

func writeFrame(t *testing.T, s network.Stream, f []byte) {
	t.Helper()
	if err := transports.WriteFrame(s, f); err != nil {
		t.Fatal(err)
	}
}

// A raw libp2p peer speaking /custos/1.0.0 is accepted exactly when its first frame is a binding of its
// own libp2p key, whichever security protocol it negotiates.
func TestRawPeers(t *testing.T) {
	a := hosttest.Start(t, hosttest.Config(t, "libp2p", bins["transport-libp2p"]))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	l, err := a.T.Listen(ctx, "/ip4/127.0.0.1/tcp/0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	target, err := peer.AddrInfoFromString(l.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	auth := hosttest.NewAuthority(t)
	otherKey, _, _ := ed25519.GenerateKey(rand.Reader)

	tests := []struct {
		name     string
		security string
		first    func(own ed25519.PublicKey) []byte
		accepted bool
	}{
		{"noise, own binding", "noise", func(own ed25519.PublicKey) []byte { return bind(t, auth, own) }, true},
		{"tls, own binding", "tls", func(own ed25519.PublicKey) []byte { return bind(t, auth, own) }, true},
		{"binding of another key", "noise", func(ed25519.PublicKey) []byte { return bind(t, auth, otherKey) }, false},
		{"garbage first frame", "noise", func(ed25519.PublicKey) []byte { return []byte("hello, I am an agent") }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, own := rawPeer(t, tc.security)
			if err := h.Connect(ctx, *target); err != nil {
				t.Fatal(err)
			}
			s, err := h.NewStream(ctx, target.ID, "/custos/1.0.0")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Reset()
			writeFrame(t, s, tc.first(own))
			// The plugin sends its own binding while it reads ours.
			_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
			theirs, rerr := transports.ReadFrameLimit(s, transports.MaxBindingSize)
			actx, acancel := context.WithTimeout(ctx, 3*time.Second)
			defer acancel()
			if !tc.accepted {
				// The stream is reset (possibly before the plugin's binding was read) and the host sees
				// nothing.
				if rerr == nil {
					_, rerr = s.Read(make([]byte, 1))
				}
				if rerr == nil || !strings.Contains(rerr.Error(), "reset") {
					t.Errorf("stream not reset: %v", rerr)
				}
				if c, err := l.Accept(actx); err == nil {
					_ = c.Close()
					t.Fatal("the host got a connection from a peer with a bad binding")
				}
				return
			}
			if rerr != nil {
				t.Fatalf("read the listener's binding: %v", rerr)
			}
			if _, err := a.Authority.Verify(ctx, "libp2p", theirs, mustRaw(t, s.Conn().RemotePublicKey())); err != nil {
				t.Errorf("listener's binding does not verify against its libp2p key: %v", err)
			}
			writeFrame(t, s, []byte("payload"))
			c, err := l.Accept(actx)
			if err != nil {
				t.Fatalf("accept: %v", err)
			}
			defer c.Close()
			if c.PeerAgentID() != auth.AgentID() {
				t.Errorf("peer agent %s, want %s", c.PeerAgentID(), auth.AgentID())
			}
			f, err := c.ReadFrame(actx)
			if err != nil || string(f) != "payload" {
				t.Errorf("frame %q, %v", f, err)
			}
		})
	}
}

func TestNoQUIC(t *testing.T) {
	a := hosttest.Start(t, hosttest.Config(t, "libp2p", bins["transport-libp2p"]))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if l, err := a.T.Listen(ctx, "/ip4/127.0.0.1/udp/0/quic-v1"); err == nil {
		_ = l.Close()
		t.Fatalf("listening on QUIC succeeded: %v", l.Addrs())
	}
}

func bind(t *testing.T, a *hosttest.IdentityAuthority, key ed25519.PublicKey) []byte {
	t.Helper()
	raw, _, err := a.Bind(context.Background(), "libp2p", key)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func mustRaw(t *testing.T, k crypto.PubKey) ed25519.PublicKey {
	t.Helper()
	raw, err := k.Raw()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestStableKeyAcrossRestart: with a transport key the host keeps (ADR 0070), a plugin killed and
// restarted has the same peer ID, so a /p2p/ address handed out before the restart still dials; without
// one (the old behaviour) the peer ID changes and the old address is refused.
func TestStableKeyAcrossRestart(t *testing.T) {
	key, err := host.LoadTransportKey(t.TempDir() + "/keys/libp2p.key")
	if err != nil {
		t.Fatal(err)
	}
	for _, stable := range []bool{true, false} {
		t.Run(fmt.Sprintf("stable=%v", stable), func(t *testing.T) {
			cfg := hosttest.Config(t, "libp2p", bins["transport-libp2p"])
			if stable {
				cfg.TransportKey = key
			}
			a := hosttest.Start(t, cfg)
			b := hosttest.Start(t, hosttest.Config(t, "libp2p", bins["transport-libp2p"]))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			l, err := a.T.Listen(ctx, "/ip4/127.0.0.1/tcp/0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			before := l.Addrs()[0]
			if err := syscall.Kill(a.T.PID(), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			select {
			case <-a.Restarts:
			case <-time.After(30 * time.Second):
				t.Fatal("no restart within 30s")
			}
			after := l.Addrs()[0]
			if stable != (after == before) {
				t.Fatalf("address before the restart %s, after %s (stable key %v)", before, after, stable)
			}
			c, err := b.T.Dial(ctx, before, a.ID)
			if !stable {
				if err == nil {
					c.Close()
					t.Fatal("the pre-restart address of a plugin without a kept key still dialled")
				}
				return
			}
			if err != nil {
				t.Fatalf("dial the pre-restart address %s: %v", before, err)
			}
			defer c.Close()
			s, err := l.Accept(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			transporttest.Exchange(t, c, s, [][]byte{[]byte("after restart")})
		})
	}
}
