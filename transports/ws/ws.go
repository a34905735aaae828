// Package ws is the WebSocket transport: binary WebSocket messages (one frame each) over wss://, with the
// same TLS 1.3 profile as TCP (mutual, self-signed certificates carrying the host-signed binding,
// transports/tlsbind) and HTTP/1.1 only. cmd/transport-ws serves it as a plugin.
package ws

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/plugin"
	"github.com/custos-agent/custos/transports/tlsbind"
)

// Name is the transport name.
const Name = "ws"

// Path is the HTTP path of the agent endpoint.
const Path = "/custos/v1"

// OptHandshakeTimeout bounds an inbound TLS + HTTP upgrade handshake (Go duration, default 10s).
const OptHandshakeTimeout = "handshake_timeout"

// Network implements plugin.Network.
type Network struct {
	log              *slog.Logger
	tid              *tlsbind.Identity
	handshakeTimeout time.Duration
	client           *http.Client
}

// New makes the WebSocket network.
func New(log *slog.Logger) *Network { return &Network{log: log} }

// Name implements plugin.Network.
func (n *Network) Name() string { return Name }

type remoteKey struct{}

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
	dialer := &net.Dialer{}
	n.client = &http.Client{Transport: &http.Transport{
		TLSClientConfig:    n.tid.ClientConfig("http/1.1"),
		DisableKeepAlives:  true,
		DisableCompression: true,
		Proxy:              nil, // never through a proxy from the environment (there is none anyway)
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err == nil {
				if p, ok := ctx.Value(remoteKey{}).(*string); ok {
					*p = c.RemoteAddr().String()
				}
			}
			return c, err
		},
		TLSHandshakeTimeout: n.handshakeTimeout,
	}, CheckRedirect: func(*http.Request, []*http.Request) error { return errors.New("redirects are refused") }}
	return nil
}

// MaxHandshakes bounds the connections per listener that have not finished the TLS handshake and the
// HTTP upgrade (the TCP plugin's bound on handshakes in progress).
const MaxHandshakes = 64

// Listen implements plugin.Network: addr is host:port.
func (n *Network) Listen(_ context.Context, addr string) (plugin.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &listener{n: n, ln: ln, ch: make(chan plugin.Conn), done: make(chan struct{})}
	lim := &limitListener{Listener: ln, log: n.log, sem: make(chan struct{}, MaxHandshakes)}
	mux := http.NewServeMux()
	mux.HandleFunc(Path, l.handle)
	tc := n.tid.ServerConfig("http/1.1")
	l.srv = &http.Server{
		Handler:           mux,
		TLSConfig:         tc,
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){}, // no HTTP/2
		ReadHeaderTimeout: n.handshakeTimeout,
		IdleTimeout:       n.handshakeTimeout, // a connection never upgraded does not keep its slot
		ConnState:         releaseOnUpgrade,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          log.New(logWriter{n.log}, "", 0),
	}
	go func() {
		err := l.srv.Serve(tls.NewListener(lim, tc))
		if !errors.Is(err, http.ErrServerClosed) {
			n.log.Warn("websocket listener ended", "err", err)
		}
		l.Close()
	}()
	return l, nil
}

// limitListener drops a connection at once when MaxHandshakes connections are already between accept
// and upgrade (as the TCP plugin drops beyond its handshakes in progress). A connection gives its slot
// back when it is upgraded (hijacked by the websocket) or closed.
type limitListener struct {
	net.Listener
	log *slog.Logger
	sem chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			return &slotConn{Conn: c, sem: l.sem}, nil
		default:
			l.log.Warn("too many TLS handshakes and upgrades in progress; dropping connection", "remote", c.RemoteAddr().String())
			_ = c.Close()
		}
	}
}

// slotConn holds one of limitListener's slots until release.
type slotConn struct {
	net.Conn
	sem  chan struct{}
	once sync.Once
}

func (c *slotConn) release() { c.once.Do(func() { <-c.sem }) }

func (c *slotConn) Close() error {
	c.release()
	return c.Conn.Close()
}

// releaseOnUpgrade is the server's ConnState hook: an upgraded connection leaves the handshake limit.
func releaseOnUpgrade(c net.Conn, st http.ConnState) {
	if st != http.StateHijacked && st != http.StateClosed {
		return
	}
	if tc, ok := c.(*tls.Conn); ok {
		if sc, ok := tc.NetConn().(*slotConn); ok {
			sc.release()
		}
	}
}

// logWriter sends net/http's error log (refused TLS handshakes) to slog.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Info("inbound connection refused", "err", string(p))
	return len(p), nil
}

// Dial implements plugin.Network: addr is a wss:// URL.
func (n *Network) Dial(ctx context.Context, addr string) (plugin.Conn, error) {
	u, err := url.Parse(addr)
	if err != nil || u.Scheme != "wss" || u.Host == "" {
		return nil, fmt.Errorf("address %q is not a wss:// URL", addr)
	}
	var remote string
	ctx = context.WithValue(ctx, remoteKey{}, &remote)
	c, resp, err := websocket.Dial(ctx, addr, &websocket.DialOptions{HTTPClient: n.client, CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		return nil, fmt.Errorf("websocket dial %s: %w", addr, err)
	}
	if resp.TLS == nil {
		_ = c.CloseNow()
		return nil, errors.New("websocket response without TLS state")
	}
	b, key, err := n.tid.Peer(*resp.TLS)
	if err != nil {
		_ = c.CloseNow()
		return nil, err
	}
	if remote == "" {
		remote = u.Host
	}
	return newConn(c, remote, b, key), nil
}

// Close implements plugin.Network.
func (n *Network) Close() error { return nil }

type listener struct {
	n    *Network
	ln   net.Listener
	srv  *http.Server
	ch   chan plugin.Conn
	done chan struct{}
	once sync.Once
}

func (l *listener) handle(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil {
		http.Error(w, "TLS required", http.StatusBadRequest)
		return
	}
	b, key, err := l.n.tid.Peer(*r.TLS) // already enforced by VerifyConnection; read it for the conn
	if err != nil {
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		l.n.log.Info("websocket upgrade refused", "remote", r.RemoteAddr, "err", err)
		return
	}
	conn := newConn(c, r.RemoteAddr, b, key)
	select {
	case l.ch <- conn:
	case <-l.done:
		_ = conn.Close()
	}
}

func (l *listener) Addrs() []string   { return []string{"wss://" + l.ln.Addr().String() + Path} }
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
		_ = l.srv.Close() // closes the listener; hijacked WebSocket connections live on
	})
	return nil
}

// conn is one WebSocket connection carrying one frame per binary message.
type conn struct {
	c       *websocket.Conn
	remote  string
	binding []byte
	key     ed25519.PublicKey
	once    sync.Once
}

func newConn(c *websocket.Conn, remote string, b []byte, key ed25519.PublicKey) *conn {
	c.SetReadLimit(transports.MaxFrameSize)
	return &conn{c: c, remote: remote, binding: b, key: key}
}

func (c *conn) ReadFrame(ctx context.Context) ([]byte, error) {
	typ, data, err := c.c.Read(ctx)
	if err != nil {
		switch websocket.CloseStatus(err) {
		case websocket.StatusNormalClosure, websocket.StatusGoingAway:
			return nil, io.EOF
		case websocket.StatusMessageTooBig:
			return nil, fmt.Errorf("peer sent a message above %d bytes: %w", transports.MaxFrameSize, transports.ErrFrameTooLarge)
		}
		return nil, err
	}
	if typ != websocket.MessageBinary {
		_ = c.c.Close(websocket.StatusUnsupportedData, "binary frames only")
		return nil, errors.New("peer sent a text message (binary frames only)")
	}
	return data, nil
}

func (c *conn) WriteFrame(ctx context.Context, frame []byte) error {
	if len(frame) > transports.MaxFrameSize {
		return fmt.Errorf("write frame of %d bytes: %w", len(frame), transports.ErrFrameTooLarge)
	}
	return c.c.Write(ctx, websocket.MessageBinary, frame)
}

func (c *conn) Close() error {
	c.once.Do(func() { _ = c.c.Close(websocket.StatusNormalClosure, "") })
	return nil
}

func (c *conn) RemoteAddr() string         { return c.remote }
func (c *conn) PeerBinding() []byte        { return c.binding }
func (c *conn) PeerKey() ed25519.PublicKey { return c.key }
