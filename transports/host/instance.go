package host

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/binding"
	"github.com/custos-agent/custos/transports/host/sandbox"
	"github.com/custos-agent/custos/transports/internal/flow"
	pb "github.com/custos-agent/custos/transports/proto"
)

// ErrPluginMisbehaved: a plugin returned something invalid (bad proof, malformed address, oversized value,
// missing binding). The value is refused; repeated misbehaviour shows in the logs.
var ErrPluginMisbehaved = errors.New("plugin returned an invalid value")

// ErrPeerMismatch: the peer's binding is valid but binds another agent than the one expected.
var ErrPeerMismatch = transports.ErrPeerMismatch

// ErrUnavailable: the transport's plugin is not running (starting, restarting or closed).
var ErrUnavailable = errors.New("transport plugin unavailable")

// instance is one running plugin process.
type instance struct {
	cfg     *Config
	client  *goplugin.Client
	ref     *runnerRef
	h       *rpcHandle
	pid     int
	prot    sandbox.Protections
	key     ed25519.PublicKey
	dhtMode pb.DhtMode // what the plugin said its DHT runs as (unspecified: no DHT, or a plugin predating the field)
	started time.Time

	ctx    context.Context // cancelled at teardown: fails every stream of this process
	cancel context.CancelFunc

	bindMu    sync.Mutex
	notAfter  time.Time
	refreshAt time.Time

	// data is the control socket of the data plane (dataplane.go); nil: frames use gRPC streams.
	data *net.UnixConn

	// listenMu is held for writing across a Listen call, so the accept loop never sees a listener ID
	// before it is registered.
	listenMu  sync.RWMutex
	listeners map[string]*Listener
}

func misbehaved(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrPluginMisbehaved, fmt.Sprintf(format, args...))
}

// launch starts a plugin process, checks its key proof and installs its first binding.
func launch(ctx context.Context, cfg *Config, want []byte) (_ *instance, err error) {
	client, fr := newClient(cfg, want)
	defer func() {
		if err != nil {
			client.Kill()
		}
	}()
	proto, err := client.Client()
	if err != nil {
		if errors.Is(err, ErrChecksum) || errors.Is(err, ErrBadPluginFile) {
			return nil, err
		}
		return nil, fmt.Errorf("start transport plugin %s: %w", cfg.Path, err)
	}
	raw, err := proto.Dispense(transports.PluginName)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: %w", cfg.Path, err)
	}
	h, ok := raw.(*rpcHandle)
	if !ok {
		return nil, misbehaved("dispensed %T", raw)
	}
	pid := fr.pid()
	ictx, cancel := context.WithCancel(context.Background())
	in := &instance{cfg: cfg, client: client, ref: fr, h: h, pid: pid, prot: fr.protections(), started: time.Now(), ctx: ictx, cancel: cancel,
		listeners: map[string]*Listener{}}
	defer func() {
		if err != nil {
			cancel()
		}
	}()
	if err := in.configure(ctx); err != nil {
		return nil, err
	}
	in.data = negotiateData(fr.takeData(), cfg.Logger)
	defer func() {
		if err != nil && in.data != nil {
			_ = in.data.Close()
		}
	}()
	if err := in.bind(ctx); err != nil {
		return nil, err
	}
	if cfg.Judge != nil {
		go in.serveQuestions()
	}
	cfg.Logger.Info("transport plugin started", "pid", pid, "path", cfg.Path, "data_sockets", in.data != nil, "sandbox", in.prot.String())
	return in, nil
}

func (in *instance) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, in.cfg.CallTimeout)
}

// configure has the plugin generate its transport key and prove possession of it.
func (in *instance) configure(ctx context.Context) error {
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return err
	}
	cctx, cancel := in.call(ctx)
	defer cancel()
	req := &pb.ConfigureRequest{Transport: in.cfg.Name, Nonce: nonce, Options: in.cfg.Options}
	var want ed25519.PublicKey
	if in.cfg.TransportKey != nil {
		req.TransportKeySeed = in.cfg.TransportKey.Seed()
		want = in.cfg.TransportKey.Public().(ed25519.PublicKey)
	}
	if in.cfg.AnswerLookups != nil { // judged at every process start (ADR 0094, amendment)
		req.DhtMode = pb.DhtMode_DHT_MODE_CLIENT
		if in.cfg.AnswerLookups(cctx) {
			req.DhtMode = pb.DhtMode_DHT_MODE_SERVER
		}
	}
	resp, err := in.h.rpc.Configure(cctx, req)
	clear(req.TransportKeySeed)
	if err != nil {
		return fmt.Errorf("configure transport plugin %s: %w", in.cfg.Path, rpcErr(err))
	}
	if resp.GetTransport() != in.cfg.Name {
		return misbehaved("plugin %s says it is transport %q, configured as %q", in.cfg.Path, resp.GetTransport(), in.cfg.Name)
	}
	pub := resp.GetPublicKey()
	if len(pub) != ed25519.PublicKeySize {
		return misbehaved("transport key of %d bytes", len(pub))
	}
	if !ed25519.Verify(pub, transports.KeyProofInput(in.cfg.Name, nonce, pub), resp.GetProof()) {
		return misbehaved("plugin %s did not prove possession of its transport key (bad proof signature)", in.cfg.Path)
	}
	if want != nil && !want.Equal(ed25519.PublicKey(pub)) {
		return misbehaved("plugin %s uses another transport key than the one the host handed it", in.cfg.Path)
	}
	switch got := resp.GetDhtMode(); {
	case req.DhtMode == pb.DhtMode_DHT_MODE_CLIENT && got == pb.DhtMode_DHT_MODE_SERVER:
		return misbehaved("plugin %s runs its DHT in server mode, answering lookups, though the host asked for client mode", in.cfg.Path)
	case req.DhtMode == pb.DhtMode_DHT_MODE_CLIENT && got == pb.DhtMode_DHT_MODE_UNSPECIFIED:
		// A transport without a DHT (the agent asks only libp2p), or a plugin binary from before dht_mode,
		// which runs its DHT in server mode whatever it is told: say so, it cannot be enforced.
		in.cfg.Logger.Warn("transport plugin did not confirm DHT client mode: it runs no DHT, or it predates dht_mode and answers lookups; update the plugin binary", "pid", in.pid, "path", in.cfg.Path)
	}
	in.dhtMode = resp.GetDhtMode()
	in.key = append(ed25519.PublicKey(nil), pub...)
	return nil
}

// bind obtains a binding of the plugin's own (possession-proven) key and hands it to the plugin.
func (in *instance) bind(ctx context.Context) error {
	in.bindMu.Lock()
	defer in.bindMu.Unlock()
	bctx, cancel := in.call(ctx)
	defer cancel()
	raw, notAfter, err := in.cfg.Authority.Bind(bctx, in.cfg.Name, in.key)
	if err != nil {
		return fmt.Errorf("bind %s transport key: %w", in.cfg.Name, err)
	}
	if _, err := binding.CheckFor(raw, in.cfg.Name, in.key); err != nil {
		return fmt.Errorf("authority produced an unusable binding: %w", err)
	}
	now := time.Now()
	if !notAfter.After(now) {
		return fmt.Errorf("authority produced a binding that expired at %s", notAfter.Format(time.RFC3339))
	}
	if _, err := in.h.rpc.SetBinding(bctx, &pb.SetBindingRequest{Binding: raw}); err != nil {
		return fmt.Errorf("install binding in plugin %s: %w", in.cfg.Path, rpcErr(err))
	}
	in.notAfter, in.refreshAt = notAfter, now.Add(notAfter.Sub(now)/2)
	return nil
}

// needsRefresh reports whether the binding is past half its life.
func (in *instance) needsRefresh(now time.Time) bool {
	in.bindMu.Lock()
	defer in.bindMu.Unlock()
	return now.After(in.refreshAt)
}

// health reports why the process is not healthy, or nil.
func (in *instance) health(ctx context.Context) error {
	if in.client.Exited() {
		return fmt.Errorf("plugin process %d exited", in.pid)
	}
	cctx, cancel := in.call(ctx)
	defer cancel()
	resp, err := healthpb.NewHealthClient(in.h.conn).Check(cctx, &healthpb.HealthCheckRequest{Service: "plugin"})
	if err != nil {
		return fmt.Errorf("health check of plugin process %d: %w", in.pid, rpcErr(err))
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("plugin process %d reports %s", in.pid, resp.GetStatus())
	}
	return nil
}

// teardown fails every stream of the process and stops it. A dead or hung process is killed at once
// (go-plugin's graceful shutdown would wait forever on a stopped process); otherwise it gets a few
// seconds to exit cleanly.
func (in *instance) teardown(graceful bool) {
	in.cancel()
	if in.data != nil {
		_ = in.data.Close()
	}
	if !graceful {
		in.ref.kill()
	}
	done := make(chan struct{})
	go func() {
		in.client.Kill()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		in.ref.kill()
		<-done
	}
}

// validAddr checks an address a plugin reports for a listener.
func validAddr(transport, a string) error {
	if err := transports.CheckText("address", a, transports.MaxAddrLen); err != nil {
		return err
	}
	switch transport {
	case "tcp":
		return checkHostPort(a)
	case "ws":
		u, err := url.Parse(a)
		if err != nil || u.Scheme != "wss" || u.Host == "" || u.User != nil {
			return fmt.Errorf("address %q is not a wss:// URL", a)
		}
		return checkHostPort(u.Host)
	case "libp2p":
		if !strings.HasPrefix(a, "/") || !strings.Contains(a, "/p2p/") {
			return fmt.Errorf("address %q is not a multiaddr ending in /p2p/<peer ID>", a)
		}
	}
	return nil
}

// validRemote checks a remote address a plugin reports for a connection.
func validRemote(transport, a string) error {
	if err := transports.CheckText("remote address", a, transports.MaxAddrLen); err != nil {
		return err
	}
	switch transport {
	case "tcp", "ws":
		return checkHostPort(a)
	case "libp2p":
		if !strings.HasPrefix(a, "/") {
			return fmt.Errorf("remote address %q is not a multiaddr", a)
		}
	}
	return nil
}

func checkHostPort(a string) error {
	h, p, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("address %q: %v", a, err)
	}
	if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 || h == "" {
		return fmt.Errorf("address %q: want HOST:PORT with a port in 1..65535", a)
	}
	return nil
}

func validID(what, id string) error {
	if err := transports.CheckText(what, id, 64); err != nil {
		return misbehaved("%v", err)
	}
	return nil
}

// listen opens a listener in the plugin and registers l for its inbound connections.
func (in *instance) listen(ctx context.Context, addr string, l *Listener) (addrs []string, bound string, err error) {
	in.listenMu.Lock()
	defer in.listenMu.Unlock()
	cctx, cancel := in.call(ctx)
	defer cancel()
	resp, err := in.h.rpc.Listen(cctx, &pb.ListenRequest{Address: addr})
	if err != nil {
		return nil, "", fmt.Errorf("%s listen on %q: %w", in.cfg.Name, addr, rpcErr(err))
	}
	lid := resp.GetListenerId()
	fail := func(e error) ([]string, string, error) {
		in.closeListenerRPC(lid)
		return nil, "", e
	}
	if err := validID("listener ID", lid); err != nil {
		return fail(err)
	}
	addrs = resp.GetAddresses()
	if len(addrs) == 0 || len(addrs) > transports.MaxAddrs {
		return fail(misbehaved("listener with %d addresses (want 1..%d)", len(addrs), transports.MaxAddrs))
	}
	for _, a := range addrs {
		if err := validAddr(in.cfg.Name, a); err != nil {
			return fail(misbehaved("%v", err))
		}
	}
	bound = resp.GetBoundAddress()
	if err := transports.CheckText("bound address", bound, transports.MaxAddrLen); err != nil {
		return fail(misbehaved("%v", err))
	}
	if _, dup := in.listeners[lid]; dup {
		return fail(misbehaved("listener ID %q reused", lid))
	}
	in.listeners[lid] = l
	return append([]string(nil), addrs...), bound, nil
}

func (in *instance) closeListener(lid string) {
	in.listenMu.Lock()
	delete(in.listeners, lid)
	in.listenMu.Unlock()
	in.closeListenerRPC(lid)
}

func (in *instance) closeListenerRPC(lid string) {
	cctx, cancel := in.call(in.ctx)
	defer cancel()
	_, _ = in.h.rpc.CloseListener(cctx, &pb.CloseListenerRequest{ListenerId: lid})
}

func (in *instance) closeConn(cid string) {
	cctx, cancel := in.call(in.ctx)
	defer cancel()
	_, _ = in.h.rpc.CloseConn(cctx, &pb.CloseConnRequest{ConnId: cid})
}

// dial asks the plugin for an outbound connection and verifies it before handing it out.
func (in *instance) dial(ctx context.Context, addr, expect string) (*Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, in.cfg.DialTimeout)
	defer cancel()
	ms := uint32(in.cfg.DialTimeout / time.Millisecond)
	if dl, ok := dctx.Deadline(); ok {
		ms = uint32(max(time.Until(dl), time.Millisecond) / time.Millisecond)
	}
	resp, err := in.h.rpc.Dial(dctx, &pb.DialRequest{Address: addr, TimeoutMs: ms})
	if err != nil {
		return nil, fmt.Errorf("%s dial %q: %w", in.cfg.Name, addr, rpcErr(err))
	}
	return in.open(ctx, resp.GetConn(), expect)
}

// open validates what the plugin says about a connection, verifies the peer's binding itself and, if
// all is well, opens the connection's frame stream. On any failure the plugin is told to close it.
func (in *instance) open(ctx context.Context, pc *pb.Connection, expect string) (_ *Conn, err error) {
	if pc == nil {
		return nil, misbehaved("no connection in the answer")
	}
	cid := pc.GetConnId()
	if err := validID("connection ID", cid); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			in.closeConn(cid)
		}
	}()
	remote := pc.GetRemoteAddr()
	if err := validRemote(in.cfg.Name, remote); err != nil {
		return nil, misbehaved("%v", err)
	}
	key := pc.GetPeerKey()
	if len(key) != ed25519.PublicKeySize {
		return nil, misbehaved("peer key of %d bytes", len(key))
	}
	raw := pc.GetPeerBinding()
	if len(raw) == 0 {
		return nil, misbehaved("connection from %s without a peer binding", remote)
	}
	if len(raw) > transports.MaxBindingSize {
		return nil, misbehaved("peer binding of %d bytes (limit %d)", len(raw), transports.MaxBindingSize)
	}
	vctx, cancel := in.call(ctx)
	agentID, err := in.cfg.Authority.Verify(vctx, in.cfg.Name, raw, key)
	cancel()
	if err != nil {
		err = fmt.Errorf("%s peer %s: %w", in.cfg.Name, remote, err)
		in.cfg.Observer.PeerRefused(in.cfg.Name, remote, err)
		return nil, err
	}
	if expect != "" && agentID != expect {
		err = fmt.Errorf("%s peer %s: %w: it is %s, expected %s", in.cfg.Name, remote, ErrPeerMismatch, agentID, expect)
		in.cfg.Observer.PeerRefused(in.cfg.Name, remote, err)
		return nil, err
	}
	if in.data != nil {
		sc, err := in.openData(cid)
		if err != nil {
			return nil, fmt.Errorf("open data socket: %w", err)
		}
		return &Conn{inst: in, transport: in.cfg.Name, remote: remote, binding: append([]byte(nil), raw...),
			key: append(ed25519.PublicKey(nil), key...), agentID: agentID, fc: sc, cancel: sc.kill}, nil
	}
	sctx, scancel := context.WithCancel(in.ctx)
	st, err := in.h.rpc.Frames(sctx)
	if err != nil {
		scancel()
		return nil, fmt.Errorf("open frame stream: %w", err)
	}
	if err := st.Send(&pb.FrameMessage{Msg: &pb.FrameMessage_Open{Open: &pb.Open{ConnId: cid}}}); err != nil {
		scancel()
		return nil, fmt.Errorf("open frame stream: %w", err)
	}
	fc, err := flow.New(st, flow.Options{Window: in.cfg.Window, Abort: scancel, CloseSend: st.CloseSend, Peer: "plugin " + in.cfg.Name})
	if err != nil {
		scancel()
		return nil, err
	}
	go func() { // release the stream once it ended
		<-fc.Done()
		scancel()
	}()
	return &Conn{inst: in, transport: in.cfg.Name, remote: remote, binding: append([]byte(nil), raw...),
		key: append(ed25519.PublicKey(nil), key...), agentID: agentID, fc: fc, cancel: scancel}, nil
}

// acceptLoop receives the plugin's inbound connections, verifies them and routes them to their
// listener. It ends with the process; an unexpected end is reported to the supervisor through down.
func (in *instance) acceptLoop(down func(*instance, error)) {
	st, err := in.h.rpc.Accept(in.ctx, &pb.AcceptRequest{})
	if err != nil {
		down(in, fmt.Errorf("open accept stream: %w", err))
		return
	}
	for {
		m, err := st.Recv()
		if err != nil {
			if in.ctx.Err() == nil {
				down(in, fmt.Errorf("accept stream ended: %w", err))
			}
			return
		}
		lid := m.GetListenerId()
		in.listenMu.RLock()
		l := in.listeners[lid]
		in.listenMu.RUnlock()
		if l == nil {
			in.listenMu.RLock()
			known := len(in.listeners)
			in.listenMu.RUnlock()
			in.cfg.Logger.Warn("plugin announced a connection on an unknown listener; closing it", "listener", lid, "pid", in.pid, "known", known)
			if pc := m.GetConn(); pc != nil && validID("connection ID", pc.GetConnId()) == nil {
				in.closeConn(pc.GetConnId())
			}
			continue
		}
		c, err := in.open(in.ctx, m.GetConn(), "")
		if err != nil {
			in.cfg.Logger.Warn("refused inbound connection", "err", err)
			continue
		}
		l.deliver(c)
	}
}

// rpcErr keeps a gRPC status error's text and makes deadline and cancellation statuses match
// context.DeadlineExceeded and context.Canceled with errors.Is.
func rpcErr(err error) error {
	switch status.Code(err) {
	case codes.DeadlineExceeded:
		return fmt.Errorf("%w (%s)", context.DeadlineExceeded, status.Convert(err).Message())
	case codes.Canceled:
		return fmt.Errorf("%w (%s)", context.Canceled, status.Convert(err).Message())
	}
	return err
}
