// Package plugin is the plugin side of the Custos transport protocol: a transport implements Network
// (dial, listen, frame connections whose peers presented a structurally valid binding of their own key),
// and Serve runs it as a hashicorp/go-plugin gRPC server. This package generates the plugin's Ed25519
// transport key (in memory only, never persisted), proves possession of it to the host, keeps the binding
// the host signs for it, multiplexes inbound connections onto the Accept stream and pumps each
// connection's frames with flow control. It never sees an identity key.
package plugin

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/status"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/binding"
	"github.com/custos-agent/custos/transports/internal/flow"
	pb "github.com/custos-agent/custos/transports/proto"
)

// Network is one transport's implementation.
type Network interface {
	// Name is the transport name ("tcp", "ws", "libp2p").
	Name() string
	// Configure is called once, before anything else, with the plugin's identity and the host's options.
	// It must refuse unknown option keys.
	Configure(ctx context.Context, id *Identity, opts map[string]string) error
	// Listen opens a listener on addr.
	Listen(ctx context.Context, addr string) (Listener, error)
	// Dial connects to addr and completes the transport handshake, including the peer binding check.
	Dial(ctx context.Context, addr string) (Conn, error)
	// Close releases everything.
	Close() error
}

// Listener yields inbound connections that completed the transport handshake.
type Listener interface {
	// Addrs are the addresses peers can dial.
	Addrs() []string
	// BoundAddr is the local address actually bound, which Listen accepts again (the host re-listens
	// there after a plugin restart).
	BoundAddr() string
	// Accept waits for the next connection; it returns an error once the listener is closed.
	Accept(ctx context.Context) (Conn, error)
	Close() error
}

// Conn is a frame connection to an authenticated transport peer.
type Conn interface {
	ReadFrame(ctx context.Context) ([]byte, error)
	WriteFrame(ctx context.Context, frame []byte) error
	Close() error
	// RemoteAddr is the peer's network address.
	RemoteAddr() string
	// PeerBinding is the binding the peer presented (already checked with binding.CheckFor).
	PeerBinding() []byte
	// PeerKey is the peer's transport key as authenticated by the transport handshake.
	PeerKey() ed25519.PublicKey
}

// BufferedWriter is an optional Conn capability: writing frames without flushing while more follow.
// WriteFrame flushes everything buffered before it.
type BufferedWriter interface {
	WriteFrameBuffered(ctx context.Context, frame []byte) error
	Flush(ctx context.Context) error
}

// Identity is the plugin's transport key and the host-signed binding for it.
type Identity struct {
	transport string
	priv      ed25519.PrivateKey
	pub       ed25519.PublicKey

	mu      sync.RWMutex
	binding []byte
	parsed  binding.Binding
	gen     uint64
}

// NewIdentity generates a fresh in-memory Ed25519 transport key for transport.
func NewIdentity(transport string) (*Identity, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate transport key: %w", err)
	}
	return &Identity{transport: transport, priv: priv, pub: pub}, nil
}

// NewIdentityFromSeed makes the identity of transport from a 32-byte Ed25519 seed the host keeps, so that
// the transport key (the libp2p peer ID) survives plugin restarts (ADR 0070).
func NewIdentityFromSeed(transport string, seed []byte) (*Identity, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("transport key seed is %d bytes, want %d", len(seed), ed25519.SeedSize)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	return &Identity{transport: transport, priv: priv, pub: priv.Public().(ed25519.PublicKey)}, nil
}

// Transport is the transport name.
func (id *Identity) Transport() string { return id.transport }

// PrivateKey is the transport private key (for the transport's own handshake only).
func (id *Identity) PrivateKey() ed25519.PrivateKey { return id.priv }

// PublicKey is the transport public key.
func (id *Identity) PublicKey() ed25519.PublicKey { return id.pub }

// Binding returns the current binding, its decoded form and a generation number that changes with every
// SetBinding; ok is false before the host provided one.
func (id *Identity) Binding() (raw []byte, b binding.Binding, gen uint64, ok bool) {
	id.mu.RLock()
	defer id.mu.RUnlock()
	return id.binding, id.parsed, id.gen, id.binding != nil
}

// SetBinding installs a binding after checking that it names this plugin's key and transport.
func (id *Identity) SetBinding(raw []byte) error {
	b, err := binding.CheckFor(raw, id.transport, id.pub)
	if err != nil {
		return err
	}
	id.mu.Lock()
	defer id.mu.Unlock()
	id.binding = append([]byte(nil), raw...)
	id.parsed = b
	id.gen++
	return nil
}

// Limits of the plugin-side bookkeeping.
const (
	acceptQueue   = 64               // inbound connections waiting for the host
	attachTimeout = 30 * time.Second // an announced connection the host never opens is closed
	// maxConns bounds the connections one plugin holds (each costs it two descriptors, the network
	// connection and its data socket, and buffers). An agent must hold thousands of sessions (issue 19:
	// 5,000 through one plugin); the descriptor limit it inherits bounds it too.
	maxConns = 16384
)

// Server implements the gRPC service over a Network.
type Server struct {
	pb.UnimplementedTransportServer
	net Network
	log *slog.Logger

	mu         sync.Mutex
	id         *Identity
	configured bool
	listeners  map[string]Listener
	conns      map[string]*connEntry
	inbound    chan *pb.Inbound
	acceptBusy bool
	judge      *judge
	ctx        context.Context
	cancel     context.CancelFunc
}

type connEntry struct {
	c        Conn
	attached bool
}

// NewServer wraps n.
func NewServer(n Network, log *slog.Logger) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{net: n, log: log, listeners: map[string]Listener{}, conns: map[string]*connEntry{},
		inbound: make(chan *pb.Inbound, acceptQueue), judge: newJudge(), ctx: ctx, cancel: cancel}
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Configure implements the RPC.
func (s *Server) Configure(ctx context.Context, req *pb.ConfigureRequest) (*pb.ConfigureResponse, error) {
	name := s.net.Name()
	if req.GetTransport() != name {
		return nil, status.Errorf(codes.InvalidArgument, "this plugin is transport %q, the host asked for %q", name, req.GetTransport())
	}
	if len(req.GetNonce()) != 32 {
		return nil, status.Errorf(codes.InvalidArgument, "nonce is %d bytes, want 32", len(req.GetNonce()))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.configured {
		return nil, status.Error(codes.FailedPrecondition, "already configured (a plugin process is configured once)")
	}
	var id *Identity
	var err error
	if seed := req.GetTransportKeySeed(); len(seed) > 0 {
		id, err = NewIdentityFromSeed(name, seed)
		clear(seed)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	} else if id, err = NewIdentity(name); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	mode := pb.DhtMode_DHT_MODE_UNSPECIFIED // no DHT here
	if d, ok := s.net.(Discovery); ok {
		d.UseJudge(s.judge)
		switch req.GetDhtMode() {
		case pb.DhtMode_DHT_MODE_UNSPECIFIED, pb.DhtMode_DHT_MODE_SERVER: // unspecified: a host from before the field
			mode = pb.DhtMode_DHT_MODE_SERVER
		case pb.DhtMode_DHT_MODE_CLIENT:
			mode = pb.DhtMode_DHT_MODE_CLIENT
		default:
			return nil, status.Errorf(codes.InvalidArgument, "unknown DHT mode %v", req.GetDhtMode())
		}
		d.UseDHTMode(mode == pb.DhtMode_DHT_MODE_SERVER)
	}
	if err := s.net.Configure(ctx, id, req.GetOptions()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "configure %s: %v", name, err)
	}
	s.id, s.configured = id, true
	proof := ed25519.Sign(id.priv, transports.KeyProofInput(name, req.GetNonce(), id.pub))
	s.log.Info("transport configured", "dht_mode", mode.String()) // the host names the transport
	return &pb.ConfigureResponse{Transport: name, PublicKey: id.pub, Proof: proof, Version: "1", DhtMode: mode}, nil
}

func (s *Server) identity() (*Identity, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.id == nil {
		return nil, status.Error(codes.FailedPrecondition, "not configured yet: call Configure first")
	}
	return s.id, nil
}

func (s *Server) ready() error {
	id, err := s.identity()
	if err != nil {
		return err
	}
	if _, _, _, ok := id.Binding(); !ok {
		return status.Error(codes.FailedPrecondition, "no transport binding yet: call SetBinding first")
	}
	return nil
}

// SetBinding implements the RPC.
func (s *Server) SetBinding(_ context.Context, req *pb.SetBindingRequest) (*pb.SetBindingResponse, error) {
	id, err := s.identity()
	if err != nil {
		return nil, err
	}
	if err := id.SetBinding(req.GetBinding()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "refusing binding: %v", err)
	}
	return &pb.SetBindingResponse{}, nil
}

// Listen implements the RPC.
func (s *Server) Listen(ctx context.Context, req *pb.ListenRequest) (*pb.ListenResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	l, err := s.net.Listen(ctx, req.GetAddress())
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "listen on %q: %v", req.GetAddress(), err)
	}
	lid := newID()
	s.mu.Lock()
	s.listeners[lid] = l
	s.mu.Unlock()
	go s.acceptLoop(lid, l)
	s.log.Debug("listening", "addrs", strings.Join(l.Addrs(), " ")) // the daemon says it at info, once
	return &pb.ListenResponse{ListenerId: lid, Addresses: l.Addrs(), BoundAddress: l.BoundAddr()}, nil
}

func (s *Server) acceptLoop(lid string, l Listener) {
	for {
		c, err := l.Accept(s.ctx)
		if err != nil {
			s.log.Debug("listener ended", "listener", lid, "err", err)
			return
		}
		cid, err := s.register(c, false)
		if err != nil {
			s.log.Warn("dropping inbound connection", "remote", c.RemoteAddr(), "err", err)
			_ = c.Close()
			continue
		}
		in := &pb.Inbound{ListenerId: lid, Conn: describe(cid, c)}
		select {
		case s.inbound <- in:
		default:
			s.log.Warn("host is not accepting fast enough; dropping inbound connection", "remote", c.RemoteAddr())
			s.drop(cid)
		}
	}
}

func describe(cid string, c Conn) *pb.Connection {
	return &pb.Connection{ConnId: cid, RemoteAddr: c.RemoteAddr(), PeerBinding: c.PeerBinding(), PeerKey: c.PeerKey()}
}

func (s *Server) register(c Conn, attached bool) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) >= maxConns {
		return "", fmt.Errorf("%d connections open (limit)", maxConns)
	}
	cid := newID()
	s.conns[cid] = &connEntry{c: c, attached: attached}
	// A connection the host never opens a frame stream for is closed after attachTimeout.
	time.AfterFunc(attachTimeout, func() {
		s.mu.Lock()
		e, ok := s.conns[cid]
		stale := ok && !e.attached
		s.mu.Unlock()
		if stale {
			s.log.Warn("host never opened the connection; closing it", "conn", cid)
			s.drop(cid)
		}
	})
	return cid, nil
}

func (s *Server) drop(cid string) {
	s.mu.Lock()
	e, ok := s.conns[cid]
	delete(s.conns, cid)
	s.mu.Unlock()
	if ok {
		_ = e.c.Close()
	}
}

// Dial implements the RPC.
func (s *Server) Dial(ctx context.Context, req *pb.DialRequest) (*pb.DialResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	if t := req.GetTimeoutMs(); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(t)*time.Millisecond)
		defer cancel()
	}
	c, err := s.net.Dial(ctx, req.GetAddress())
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "dial %q: %v", req.GetAddress(), err)
	}
	cid, err := s.register(c, false)
	if err != nil {
		_ = c.Close()
		return nil, status.Error(codes.ResourceExhausted, err.Error())
	}
	return &pb.DialResponse{Conn: describe(cid, c)}, nil
}

// CloseListener implements the RPC.
func (s *Server) CloseListener(_ context.Context, req *pb.CloseListenerRequest) (*pb.CloseResponse, error) {
	s.mu.Lock()
	l, ok := s.listeners[req.GetListenerId()]
	delete(s.listeners, req.GetListenerId())
	s.mu.Unlock()
	if ok {
		_ = l.Close()
	}
	return &pb.CloseResponse{}, nil
}

// CloseConn implements the RPC.
func (s *Server) CloseConn(_ context.Context, req *pb.CloseConnRequest) (*pb.CloseResponse, error) {
	s.drop(req.GetConnId())
	return &pb.CloseResponse{}, nil
}

// Accept implements the RPC: one stream at a time.
func (s *Server) Accept(_ *pb.AcceptRequest, stream grpc.ServerStreamingServer[pb.Inbound]) error {
	s.mu.Lock()
	if s.acceptBusy {
		s.mu.Unlock()
		return status.Error(codes.FailedPrecondition, "an Accept stream is already open")
	}
	s.acceptBusy = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.acceptBusy = false
		s.mu.Unlock()
	}()
	for {
		select {
		case in := <-s.inbound:
			if err := stream.Send(in); err != nil {
				s.drop(in.GetConn().GetConnId())
				return err
			}
		case <-stream.Context().Done():
			return nil
		case <-s.ctx.Done():
			return status.Error(codes.Unavailable, "plugin shutting down")
		}
	}
}

// Frames implements the RPC: the host's first message opens a registered connection, then frames flow
// both ways until either side ends.
func (s *Server) Frames(stream grpc.BidiStreamingServer[pb.FrameMessage, pb.FrameMessage]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	open := first.GetOpen()
	if open == nil {
		return status.Error(codes.InvalidArgument, "the first frame message must be Open")
	}
	cid := open.GetConnId()
	s.mu.Lock()
	e, ok := s.conns[cid]
	if ok && e.attached {
		ok = false
	}
	if ok {
		e.attached = true
	}
	s.mu.Unlock()
	if !ok {
		return status.Errorf(codes.NotFound, "no unopened connection %q", cid)
	}
	defer s.drop(cid)

	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	fc, err := flow.New(stream, flow.Options{Abort: cancel, Peer: "host"})
	if err != nil {
		return err
	}
	return pump(ctx, fc, e.c)
}

// pump moves frames between the host stream and the network connection. It returns nil when the network
// peer closed cleanly (after every frame it sent reached the host), an error otherwise.
func pump(ctx context.Context, fc *flow.Conn, nc Conn) error {
	netDone := make(chan error, 1)
	go func() { // network -> host
		for {
			f, err := nc.ReadFrame(ctx)
			if err != nil {
				netDone <- err
				return
			}
			if err := fc.WriteFrame(ctx, f); err != nil {
				netDone <- err
				return
			}
		}
	}()
	hostDone := make(chan error, 1)
	go func() { hostDone <- hostToNetwork(ctx, fc.ReadFrame, fc.Buffered, nc) }()
	select {
	case err := <-netDone:
		_ = nc.Close()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		return status.Errorf(codes.Unavailable, "connection to %s: %v", nc.RemoteAddr(), err)
	case err := <-hostDone:
		_ = nc.Close()
		if errors.Is(err, io.EOF) { // the host closed after its last frame was written out
			return nil
		}
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		return status.Errorf(codes.Unavailable, "writing to %s: %v", nc.RemoteAddr(), err)
	}
}

// Close shuts the server's listeners and connections down.
func (s *Server) Close() error {
	s.cancel()
	s.mu.Lock()
	ls, cs := s.listeners, s.conns
	s.listeners, s.conns = map[string]Listener{}, map[string]*connEntry{}
	s.mu.Unlock()
	for _, l := range ls {
		_ = l.Close()
	}
	for _, e := range cs {
		_ = e.c.Close()
	}
	return s.net.Close()
}

// grpcPlugin adapts a TransportServer to go-plugin.
type grpcPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	srv pb.TransportServer
}

func (p *grpcPlugin) GRPCServer(_ *goplugin.GRPCBroker, g *grpc.Server) error {
	pb.RegisterTransportServer(g, p.srv)
	return nil
}

func (p *grpcPlugin) GRPCClient(context.Context, *goplugin.GRPCBroker, *grpc.ClientConn) (any, error) {
	return nil, errors.New("the plugin side has no client")
}

// Logger returns the plugin's logger: JSON lines on stderr in the shape go-plugin's host forwards with
// their level ("@level", "@message"). The lines carry no transport=NAME: the host adds it to every line it
// forwards (transports/host Config.Logger), and a second one would repeat the key (issue 18, defect 7).
// The argument is the transport's name, kept for callers' clarity.
func Logger(_ string) *slog.Logger {
	h := slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) > 0 {
				return a
			}
			switch a.Key {
			case slog.TimeKey:
				return slog.Attr{}
			case slog.LevelKey:
				return slog.String("@level", strings.ToLower(a.Value.String()))
			case slog.MessageKey:
				return slog.String("@message", a.Value.String())
			}
			return a
		}})
	return slog.New(h)
}

// Serve runs n as a go-plugin transport plugin until the host goes away. It is the whole of a transport
// plugin's main. Started by hand (not by a host), it prints go-plugin's explanation and exits 1.
func Serve(n Network) {
	srv := NewServer(n, Logger(n.Name()))
	defer func() { _ = srv.Close() }()
	srv.startData() // before gRPC serves: the host looks for the hello once Configure returns
	ServeServer(srv)
}

// ServeServer runs any TransportServer as the plugin (Serve uses it with a Server; tests use it with
// deliberately misbehaving servers).
func ServeServer(srv pb.TransportServer) {
	// A plugin is stopped by its host, never by a signal meant for the agent (ADR 0088): SIGTERM sent to
	// every process of the service (systemd's KillMode=control-group) must not end it in the middle of the
	// daemon's drain. go-plugin already ignores SIGINT; the host ends a plugin through go-plugin (and
	// SIGKILL), and the kernel kills it when the host dies (Pdeathsig).
	signal.Ignore(syscall.SIGTERM)
	goplugin.Serve(&goplugin.ServeConfig{
		HandshakeConfig: goplugin.HandshakeConfig{
			ProtocolVersion:  transports.ProtocolVersion,
			MagicCookieKey:   transports.MagicCookieKey,
			MagicCookieValue: transports.MagicCookieValue,
		},
		Plugins: goplugin.PluginSet{transports.PluginName: &grpcPlugin{srv: srv}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			opts = append(opts, grpc.MaxRecvMsgSize(transports.MaxGRPCMessage), grpc.MaxSendMsgSize(transports.MaxGRPCMessage),
				grpc.InitialWindowSize(transports.GRPCStreamWindow), grpc.InitialConnWindowSize(transports.GRPCConnWindow),
				experimental.BufferPool(transports.GRPCBufferPool()), grpc.ForceServerCodecV2(transports.GRPCCodec()))
			return grpc.NewServer(opts...)
		},
	})
}

// hostToNetwork writes the frames read from the host to the network connection until read fails, and
// returns that error (io.EOF when the host closed cleanly). While more host frames are already queued
// (queued() > 0) and the connection can buffer, frames go into its buffer and are flushed once.
func hostToNetwork(ctx context.Context, read func(context.Context) ([]byte, error), queued func() int, nc Conn) error {
	bw, buffered := nc.(BufferedWriter)
	pending := false
	for {
		f, err := read(ctx)
		if err != nil {
			if pending && errors.Is(err, io.EOF) {
				err = errors.Join(bw.Flush(ctx), err)
			}
			return err
		}
		if buffered && queued() > 0 {
			err, pending = bw.WriteFrameBuffered(ctx, f), true
		} else {
			err, pending = nc.WriteFrame(ctx, f), false
		}
		if err != nil {
			return err
		}
	}
}
