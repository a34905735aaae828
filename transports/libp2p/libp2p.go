// Package libp2p is the libp2p transport: a go-libp2p host whose identity is the plugin's Ed25519
// transport key, with TCP only (no QUIC, WebRTC or WebTransport), Noise and TLS security, yamux, ping and
// identify. Agent connections are streams of protocol /custos/1.0.0; each side's first frame on a stream
// is its transport binding, which must name the libp2p peer's own public key. cmd/transport-libp2p serves
// it as a plugin.
package libp2p

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	golibp2p "github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/net/swarm"
	noise "github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/binding"
	"github.com/custos-agent/custos/transports/internal/netframe"
	"github.com/custos-agent/custos/transports/plugin"
)

// Name is the transport name.
const Name = "libp2p"

// ProtocolID is the libp2p protocol of agent streams.
const ProtocolID = protocol.ID("/custos/1.0.0")

// OptHandshakeTimeout bounds the binding exchange on a new stream (Go duration, default 10s).
const OptHandshakeTimeout = "handshake_timeout"

// Network implements plugin.Network.
type Network struct {
	log              *slog.Logger
	id               *plugin.Identity
	h                host.Host
	handshakeTimeout time.Duration
	judge            plugin.Judge // set by UseJudge: the DHT runs only with a host to judge records
	dhtClient        bool         // set by UseDHTMode: the DHT only asks, answering no lookup
	dht              *dht.IpfsDHT
	gossip           *gossip // gossipsub topics (ADR 0091), with the DHT

	mu        sync.Mutex
	listeners []*listener
}

// New makes the libp2p network.
func New(log *slog.Logger) *Network { return &Network{log: log} }

// Name implements plugin.Network.
func (n *Network) Name() string { return Name }

// Configure implements plugin.Network: it starts the libp2p host (listening nowhere yet).
func (n *Network) Configure(_ context.Context, id *plugin.Identity, opts map[string]string) error {
	n.id = id
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
	sk, err := crypto.UnmarshalEd25519PrivateKey(id.PrivateKey())
	if err != nil {
		return fmt.Errorf("libp2p key: %w", err)
	}
	rm, cm, err := newLimits()
	if err != nil {
		return err
	}
	h, err := golibp2p.New(
		golibp2p.Identity(sk),
		golibp2p.ResourceManager(rm),
		golibp2p.ConnectionManager(cm),
		golibp2p.NoListenAddrs,
		golibp2p.Transport(tcp.NewTCPTransport),
		golibp2p.Security(noise.ID, noise.New),
		golibp2p.Security(libp2ptls.ID, libp2ptls.New),
		golibp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		golibp2p.Ping(true),
		golibp2p.DisableRelay(),
		golibp2p.UserAgent("custos-transport-libp2p/1"),
	)
	if err != nil {
		return fmt.Errorf("start libp2p host: %w", err)
	}
	n.h = h
	h.SetStreamHandler(ProtocolID, n.handleStream)
	if n.judge != nil {
		if n.dht, err = startDHT(h, n.judge, n.dhtClient); err != nil {
			_ = h.Close()
			return err
		}
		if n.gossip, err = startGossip(h, n.judge, n.log); err != nil {
			_ = n.dht.Close()
			_ = h.Close()
			return err
		}
	}
	return nil
}

// Limits of the libp2p host: explicit, not go-libp2p's memory-scaled defaults, and in line with the TCP
// and WebSocket plugins (at most 64 connections that have not finished their security handshake).
const (
	maxConns          = 512 // established connections, both directions
	maxConnsInbound   = 256
	maxTransientConns = 64 // connections before Noise/TLS and the muxer are up
	maxStreams        = 4096
	maxMemory         = 256 << 20
	maxFD             = 512
	connsLow          = 192 // the connection manager trims to connsLow when more than connsHigh are open
	connsHigh         = 256
)

// newLimits builds the host's resource manager (fixed limits for the system and transient scopes) and a
// connection manager that trims idle connections beyond connsHigh after a grace period.
func newLimits() (network.ResourceManager, *connmgr.BasicConnMgr, error) {
	partial := rcmgr.PartialLimitConfig{
		System: rcmgr.ResourceLimits{
			Conns: maxConns, ConnsInbound: maxConnsInbound, ConnsOutbound: maxConns - maxConnsInbound,
			Streams: maxStreams, FD: maxFD, Memory: maxMemory,
		},
		Transient: rcmgr.ResourceLimits{
			Conns: maxTransientConns, ConnsInbound: maxTransientConns, ConnsOutbound: maxTransientConns,
			Streams: maxTransientConns, FD: maxTransientConns,
		},
	}
	defaults := rcmgr.DefaultLimits
	golibp2p.SetDefaultServiceLimits(&defaults)
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(partial.Build(defaults.Scale(maxMemory, maxFD))))
	if err != nil {
		return nil, nil, fmt.Errorf("libp2p resource manager: %w", err)
	}
	cm, err := connmgr.NewConnManager(connsLow, connsHigh, connmgr.WithGracePeriod(time.Minute))
	if err != nil {
		_ = rm.Close()
		return nil, nil, fmt.Errorf("libp2p connection manager: %w", err)
	}
	return rm, cm, nil
}

// Host is the libp2p host (for tests and benchmarks in this package).
func (n *Network) Host() host.Host { return n.h }

// Listen implements plugin.Network: addr is a multiaddr such as /ip4/127.0.0.1/tcp/0.
func (n *Network) Listen(_ context.Context, addr string) (plugin.Listener, error) {
	m, err := ma.NewMultiaddr(addr)
	if err != nil {
		return nil, fmt.Errorf("listen address %q is not a multiaddr: %w", addr, err)
	}
	before := map[string]bool{}
	for _, a := range n.h.Network().ListenAddresses() {
		before[a.String()] = true
	}
	if err := n.h.Network().Listen(m); err != nil {
		return nil, err
	}
	var bound []ma.Multiaddr
	for _, a := range n.h.Network().ListenAddresses() {
		if !before[a.String()] {
			bound = append(bound, a)
		}
	}
	if len(bound) == 0 {
		return nil, fmt.Errorf("listening on %s produced no new address", addr)
	}
	l := &listener{n: n, bound: bound, ch: make(chan plugin.Conn), done: make(chan struct{})}
	n.mu.Lock()
	n.listeners = append(n.listeners, l)
	n.mu.Unlock()
	return l, nil
}

// Dial implements plugin.Network: addr is a multiaddr ending in /p2p/<peer ID>.
func (n *Network) Dial(ctx context.Context, addr string) (plugin.Conn, error) {
	m, err := ma.NewMultiaddr(addr)
	if err != nil {
		return nil, fmt.Errorf("dial address %q is not a multiaddr: %w", addr, err)
	}
	info, err := peer.AddrInfoFromP2pAddr(m)
	if err != nil {
		return nil, fmt.Errorf("dial address %q must end in /p2p/<peer ID>: %w", addr, err)
	}
	if err := n.h.Connect(ctx, *info); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", info.ID, err)
	}
	s, err := n.h.NewStream(ctx, info.ID, ProtocolID)
	if err != nil {
		return nil, fmt.Errorf("open %s stream to %s: %w", ProtocolID, info.ID, err)
	}
	c, err := n.exchange(ctx, s)
	if err != nil {
		_ = s.Reset()
		return nil, err
	}
	return c, nil
}

// exchange sends this side's binding as the first frame and checks the peer's against the libp2p peer's
// own public key.
func (n *Network) exchange(ctx context.Context, s network.Stream) (*netframe.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, n.handshakeTimeout)
	defer cancel()
	pub := s.Conn().RemotePublicKey()
	if pub == nil {
		return nil, errors.New("peer public key unknown")
	}
	raw, err := pub.Raw()
	if err != nil || pub.Type() != crypto.Ed25519 || len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("peer %s has a %s key; want Ed25519", s.Conn().RemotePeer(), pub.Type())
	}
	key := ed25519.PublicKey(raw)
	own, _, _, ok := n.id.Binding()
	if !ok {
		return nil, errors.New("no transport binding installed yet")
	}
	c := netframe.New(s, s.Conn().RemoteMultiaddr().String(), nil, key)
	werr := make(chan error, 1)
	go func() { werr <- c.WriteFrame(ctx, own) }()
	stop := context.AfterFunc(ctx, func() { _ = s.SetReadDeadline(time.Unix(1, 0)) })
	peerBinding, err := transports.ReadFrameLimit(c.Reader(), transports.MaxBindingSize)
	stop()
	if err != nil {
		return nil, fmt.Errorf("read binding of %s: %w", s.Conn().RemotePeer(), err)
	}
	if err := <-werr; err != nil {
		return nil, fmt.Errorf("send binding to %s: %w", s.Conn().RemotePeer(), err)
	}
	if _, err := binding.CheckFor(peerBinding, Name, key); err != nil {
		return nil, fmt.Errorf("peer %s: %w", s.Conn().RemotePeer(), err)
	}
	_ = s.SetReadDeadline(time.Time{})
	c.SetPeerBinding(peerBinding)
	return c, nil
}

func (n *Network) handleStream(s network.Stream) {
	c, err := n.exchange(context.Background(), s)
	if err != nil {
		n.log.Info("inbound stream refused", "peer", s.Conn().RemotePeer().String(), "err", err)
		_ = s.Reset()
		return
	}
	// Route to the listener the connection came in on, else to the oldest open one.
	local := s.Conn().LocalMultiaddr()
	n.mu.Lock()
	var target *listener
	for _, l := range n.listeners {
		for _, b := range l.bound {
			if b.Equal(local) {
				target = l
			}
		}
	}
	if target == nil && len(n.listeners) > 0 {
		target = n.listeners[0]
	}
	n.mu.Unlock()
	if target == nil {
		n.log.Info("inbound stream without a listener; refused", "peer", s.Conn().RemotePeer().String())
		_ = s.Reset()
		return
	}
	select {
	case target.ch <- c:
	case <-target.done:
		_ = s.Reset()
	}
}

// Close implements plugin.Network.
func (n *Network) Close() error {
	if n.h == nil {
		return nil
	}
	if n.gossip != nil {
		n.gossip.close()
	}
	if n.dht != nil {
		_ = n.dht.Close()
	}
	return n.h.Close()
}

type listener struct {
	n     *Network
	bound []ma.Multiaddr
	ch    chan plugin.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *listener) Addrs() []string {
	p2p := ma.StringCast("/p2p/" + l.n.h.ID().String())
	out := make([]string, 0, len(l.bound))
	for _, b := range l.bound {
		out = append(out, b.Encapsulate(p2p).String())
	}
	return out
}

func (l *listener) BoundAddr() string { return l.bound[0].String() }

func (l *listener) Accept(ctx context.Context) (plugin.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, fmt.Errorf("listener %s: %w", l.bound[0], transports.ErrClosed)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *listener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.n.mu.Lock()
		for i, x := range l.n.listeners {
			if x == l {
				l.n.listeners = append(l.n.listeners[:i], l.n.listeners[i+1:]...)
				break
			}
		}
		l.n.mu.Unlock()
		if sw, ok := l.n.h.Network().(*swarm.Swarm); ok {
			sw.ListenClose(l.bound...)
		}
	})
	return nil
}
