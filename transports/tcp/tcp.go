// Package tcp is the TCP transport: TLS 1.3 only, mutually authenticated with self-signed certificates
// over the plugin's transport key that carry the host-signed binding (transports/tlsbind), and
// length-prefixed frames. cmd/transport-tcp serves it as a plugin.
package tcp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/internal/netframe"
	"github.com/custos-agent/custos/transports/plugin"
	"github.com/custos-agent/custos/transports/tlsbind"
)

// Name is the transport name.
const Name = "tcp"

// ALPN is the application protocol both sides require.
const ALPN = "custos/1"

// Options the host may pass.
const (
	// OptHandshakeTimeout bounds an inbound TLS handshake (Go duration, default 10s).
	OptHandshakeTimeout = "handshake_timeout"
)

// maxHandshakes bounds concurrent inbound handshakes per listener.
const maxHandshakes = 64

// Network implements plugin.Network.
type Network struct {
	log              *slog.Logger
	tid              *tlsbind.Identity
	handshakeTimeout time.Duration
}

// New makes the TCP network.
func New(log *slog.Logger) *Network { return &Network{log: log} }

// Name implements plugin.Network.
func (n *Network) Name() string { return Name }

// Configure implements plugin.Network.
func (n *Network) Configure(_ context.Context, id *plugin.Identity, opts map[string]string) error {
	n.tid = tlsbind.New(id)
	n.handshakeTimeout = 10 * time.Second
	for k, v := range opts {
		switch k {
		case OptHandshakeTimeout:
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 || d > 5*time.Minute {
				return fmt.Errorf("option %s=%q: want a duration in (0, 5m]", k, v)
			}
			n.handshakeTimeout = d
		default:
			return fmt.Errorf("unknown option %q (known: %s)", k, OptHandshakeTimeout)
		}
	}
	return nil
}

// Listen implements plugin.Network.
func (n *Network) Listen(_ context.Context, addr string) (plugin.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &listener{n: n, ln: ln, ch: make(chan plugin.Conn), done: make(chan struct{}), sem: make(chan struct{}, maxHandshakes)}
	go l.loop()
	return l, nil
}

// Dial implements plugin.Network.
func (n *Network) Dial(ctx context.Context, addr string) (plugin.Conn, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, n.tid.ClientConfig(ALPN))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	return n.wrap(tc)
}

func (n *Network) wrap(tc *tls.Conn) (plugin.Conn, error) {
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != ALPN {
		_ = tc.Close()
		return nil, fmt.Errorf("peer did not negotiate ALPN %q", ALPN)
	}
	b, key, err := n.tid.Peer(cs)
	if err != nil {
		_ = tc.Close()
		return nil, err
	}
	return netframe.New(tc, tc.RemoteAddr().String(), b, key), nil
}

// Close implements plugin.Network.
func (n *Network) Close() error { return nil }

type listener struct {
	n    *Network
	ln   net.Listener
	ch   chan plugin.Conn
	done chan struct{}
	once sync.Once
	sem  chan struct{}
}

func (l *listener) loop() {
	for {
		raw, err := l.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			l.Close()
			return
		}
		select {
		case l.sem <- struct{}{}:
		default:
			l.n.log.Warn("too many TLS handshakes in progress; dropping connection", "remote", raw.RemoteAddr().String())
			_ = raw.Close()
			continue
		}
		go l.handshake(raw)
	}
}

func (l *listener) handshake(raw net.Conn) {
	defer func() { <-l.sem }()
	ctx, cancel := context.WithTimeout(context.Background(), l.n.handshakeTimeout)
	defer cancel()
	tc := tls.Server(raw, l.n.tid.ServerConfig(ALPN))
	if err := tc.HandshakeContext(ctx); err != nil {
		l.n.log.Info("inbound TLS handshake refused", "remote", raw.RemoteAddr().String(), "err", err)
		_ = raw.Close()
		return
	}
	c, err := l.n.wrap(tc)
	if err != nil {
		l.n.log.Info("inbound peer refused", "remote", raw.RemoteAddr().String(), "err", err)
		return
	}
	select {
	case l.ch <- c:
	case <-l.done:
		_ = c.Close()
	}
}

func (l *listener) Addrs() []string   { return []string{l.ln.Addr().String()} }
func (l *listener) BoundAddr() string { return l.ln.Addr().String() }

func (l *listener) Accept(ctx context.Context) (plugin.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, fmt.Errorf("listener %s: %w", l.ln.Addr(), transports.ErrClosed)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *listener) Close() error {
	l.once.Do(func() {
		close(l.done)
		_ = l.ln.Close()
	})
	return nil
}
