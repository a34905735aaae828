package host

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	pb "github.com/custos-agent/custos/transports/proto"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/custos-agent/custos/internal/backoff"
	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/host/sandbox"
)

// Transport is one supervised transport plugin. It stays usable across plugin restarts: Listen's
// listeners are re-opened on the new process (at the address they had), while connections of a dead
// process fail and must be re-dialled by their owner (Observer.PluginRestarted says when).
type Transport struct {
	cfg  Config
	want []byte
	log  *slog.Logger

	mu        sync.Mutex
	inst      *instance
	listeners map[*Listener]struct{}
	closed    bool

	restarts atomic.Uint64
	kick     chan kickMsg
	update   chan updateMsg
	// draining is closed by Drain: the agent is stopping, and no plugin process is started again.
	draining  chan struct{}
	drainOnce sync.Once
	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{}
}

type kickMsg struct {
	in    *instance
	cause error
}

// updateMsg asks the supervisor to replace the plugin binary (Update).
type updateMsg struct {
	path, sum string
	want      []byte
	done      chan error // the outcome: nil once the new binary runs
}

// ErrUpdateFailed: the new plugin binary did not start; the previous one was started again.
var ErrUpdateFailed = errors.New("plugin update failed")

// stableAfter is how long a process must live before a later crash restarts with the minimal backoff.
const stableAfter = time.Minute

// Start launches the plugin described by cfg and supervises it until Close. The first launch is not
// retried: an error here (checksum, path, handshake, key proof, binding) is a configuration problem.
func Start(ctx context.Context, cfg Config) (*Transport, error) {
	cfg.setDefaults()
	want, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	t := &Transport{cfg: cfg, want: want, log: cfg.Logger, listeners: map[*Listener]struct{}{},
		kick: make(chan kickMsg, 1), update: make(chan updateMsg), done: make(chan struct{}), draining: make(chan struct{})}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	sctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	in, err := launch(sctx, &t.cfg, want)
	if err != nil {
		t.cancel()
		return nil, err
	}
	t.inst = in
	go in.acceptLoop(t.down)
	go t.supervise()
	return t, nil
}

// Name is the transport name.
func (t *Transport) Name() string { return t.cfg.Name }

// Restarts is the number of restarts so far.
func (t *Transport) Restarts() uint64 { return t.restarts.Load() }

// Sandbox reports what confines the current plugin process (zero while none runs).
func (t *Transport) Sandbox() sandbox.Protections {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.inst == nil {
		return sandbox.Protections{}
	}
	return t.inst.prot
}

// DHTMode is the mode the current plugin process said its DHT runs in ("server", "client"), or "" when it
// runs no DHT (or predates dht_mode), or while no process runs.
func (t *Transport) DHTMode() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.inst == nil {
		return ""
	}
	switch t.inst.dhtMode {
	case pb.DhtMode_DHT_MODE_SERVER:
		return "server"
	case pb.DhtMode_DHT_MODE_CLIENT:
		return "client"
	}
	return ""
}

// PID is the current plugin process ID, 0 while none runs.
func (t *Transport) PID() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.inst == nil {
		return 0
	}
	return t.inst.pid
}

func (t *Transport) current() (*instance, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, fmt.Errorf("%s: %w: closed", t.cfg.Name, ErrUnavailable)
	}
	if t.inst == nil {
		return nil, fmt.Errorf("%s: %w: restarting", t.cfg.Name, ErrUnavailable)
	}
	return t.inst, nil
}

// down is how a process's own goroutines report that it looks dead.
func (t *Transport) down(in *instance, cause error) {
	select {
	case t.kick <- kickMsg{in: in, cause: cause}:
	default:
	}
}

// Dial connects to addr and returns the connection only if the peer's binding verifies and binds the
// peer's transport key to the agent expect. Otherwise the plugin closes the connection and the error
// wraps ErrPeerMismatch or ErrBadBinding.
func (t *Transport) Dial(ctx context.Context, addr, expect string) (*Conn, error) {
	if expect == "" {
		return nil, fmt.Errorf("%s dial %q: the expected agent ID is required (dialers pin the peer)", t.cfg.Name, addr)
	}
	if err := transports.CheckText("dial address", addr, transports.MaxAddrLen); err != nil {
		return nil, fmt.Errorf("%s dial: %w", t.cfg.Name, err)
	}
	in, err := t.current()
	if err != nil {
		return nil, err
	}
	return in.dial(ctx, addr, expect)
}

// Listen opens a listener on addr ("127.0.0.1:0", a multiaddr, ...). Inbound connections whose binding
// verifies arrive on the Listener's Accept.
func (t *Transport) Listen(ctx context.Context, addr string) (*Listener, error) {
	if err := transports.CheckText("listen address", addr, transports.MaxAddrLen); err != nil {
		return nil, fmt.Errorf("%s listen: %w", t.cfg.Name, err)
	}
	in, err := t.current()
	if err != nil {
		return nil, err
	}
	l := &Listener{t: t, requested: addr, ch: make(chan *Conn, t.cfg.AcceptQueue), closed: make(chan struct{})}
	addrs, bound, err := in.listen(ctx, addr, l)
	if err != nil {
		return nil, err
	}
	l.set(in, addrs, bound)
	t.mu.Lock()
	t.listeners[l] = struct{}{}
	t.mu.Unlock()
	return l, nil
}

// Rebind replaces the plugin's binding now (e.g. after the agent's delegation changed). Bindings are
// otherwise renewed at half their lifetime.
func (t *Transport) Rebind(ctx context.Context) error {
	in, err := t.current()
	if err != nil {
		return err
	}
	return in.bind(ctx)
}

// Update replaces the plugin binary with path, whose SHA-256 must be sum (hex), without restarting the
// agent: the file is checked first (nothing changes when it does not match); then the supervisor stops the
// current process and launches the new binary at once (no backoff), re-opens every listener where it was,
// and reports the restart (RestartEvent.Updated) so that sessions are re-dialled. When the new binary does
// not start, the previous binary is started again and the error wraps ErrUpdateFailed. It returns once
// the new process runs (or the update failed), or when ctx ends (the update then goes on).
func (t *Transport) Update(ctx context.Context, path, sum string) error {
	if err := checkPluginPath(path); err != nil {
		return err
	}
	want, err := hex.DecodeString(strings.TrimSpace(sum))
	if err != nil || len(want) != 32 {
		return fmt.Errorf("plugin %s: SHA256 must be 64 hex digits (sha256sum %s), got %q", path, path, sum)
	}
	got, err := FileSHA256(path)
	if err != nil {
		return fmt.Errorf("plugin %s: %w", path, err)
	}
	if got != hex.EncodeToString(want) {
		return fmt.Errorf("%w: %s has SHA-256 %s, the update says %s; nothing changed", ErrChecksum, path, got, hex.EncodeToString(want))
	}
	msg := updateMsg{path: path, sum: hex.EncodeToString(want), want: want, done: make(chan error, 1)}
	select {
	case t.update <- msg:
	case <-t.done:
		return fmt.Errorf("%s: %w: closed", t.cfg.Name, ErrUnavailable)
	case <-t.draining:
		return fmt.Errorf("%s: %w: the agent is draining", t.cfg.Name, ErrUnavailable)
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-msg.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Drain tells the supervisor that the agent is draining (ADR 0088): from now on a plugin process that
// ends or fails its health check is not restarted, and a restart waiting for its backoff is abandoned.
// The transport stays usable while its process lives (results still go out through it); Close stops it.
func (t *Transport) Drain() { t.drainOnce.Do(func() { close(t.draining) }) }

// isDraining reports whether Drain was called.
func (t *Transport) isDraining() bool {
	select {
	case <-t.draining:
		return true
	default:
		return false
	}
}

// Close stops supervision and the plugin; connections and listeners fail with transports.ErrClosed.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	in := t.inst
	t.inst = nil
	ls := t.listeners
	t.listeners = map[*Listener]struct{}{}
	t.mu.Unlock()
	t.cancel()
	<-t.done
	if in != nil {
		in.teardown(true)
	}
	for l := range ls {
		l.shut()
	}
	return nil
}

func (t *Transport) supervise() {
	defer close(t.done)
	tick := time.NewTicker(t.cfg.HealthInterval)
	defer tick.Stop()
	var reported *instance // the process whose end during the drain was logged
	for {
		var cause error
		var from *instance
		select {
		case <-t.ctx.Done():
			return
		case k := <-t.kick:
			from, cause = k.in, k.cause
		case u := <-t.update:
			t.applyUpdate(u)
			continue
		case <-tick.C:
		}
		in, err := t.current()
		if err != nil {
			return
		}
		if from != nil && from != in {
			continue // about an already replaced process
		}
		if cause == nil {
			cause = in.health(t.ctx)
		}
		if t.ctx.Err() != nil {
			return
		}
		if cause != nil && t.isDraining() {
			// Not restarted: the agent is stopping, and a new process would only be stopped again (or,
			// killed with the rest of a process group, restarted into the end of the drain).
			if reported != in {
				t.log.Warn("transport plugin is down during the drain; not restarted (the agent is stopping)", "pid", in.pid, "cause", cause)
				reported = in
			}
			continue
		}
		if cause == nil {
			if in.needsRefresh(time.Now()) {
				if err := in.bind(t.ctx); err != nil {
					t.log.Warn("renewing the transport binding failed; retrying at the next health check", "err", err)
				}
			}
			continue
		}
		t.restart(in, cause, nil)
	}
}

// errUpdating is the cause of a restart that replaces the binary (Update).
var errUpdating = errors.New("plugin binary updated")

// applyUpdate runs in the supervisor: it switches to the new binary and restarts the process on it,
// falling back to the previous binary when the new one does not start.
func (t *Transport) applyUpdate(u updateMsg) {
	old, err := t.current()
	if err != nil {
		u.done <- fmt.Errorf("%s: the plugin is not running now (%v): update it once it runs", t.cfg.Name, err)
		return
	}
	prev := &updateMsg{path: t.cfg.Path, sum: t.cfg.SHA256, want: t.want}
	t.cfg.Path, t.cfg.SHA256, t.want = u.path, u.sum, u.want
	t.log.Info("transport plugin update: restarting on the new binary", "pid", old.pid, "path", u.path, "sha256", u.sum, "previous_sha256", prev.sum)
	t.restart(old, errUpdating, &update{prev: prev, done: u.done})
}

// update is a restart's binary update in progress: prev is the binary to fall back to.
type update struct {
	prev     *updateMsg
	done     chan error
	reported bool
}

func (u *update) report(err error) {
	if u != nil && !u.reported && u.done != nil {
		u.reported = true
		u.done <- err
	}
}

// restart replaces a dead process (or, with upd, a live one whose binary is updated), retrying with
// exponential backoff until it works or Close.
func (t *Transport) restart(old *instance, cause error, upd *update) {
	downAt := time.Now()
	t.mu.Lock()
	if t.inst == old {
		t.inst = nil
	}
	t.mu.Unlock()
	if upd == nil {
		t.log.Error("transport plugin is down; restarting", "pid", old.pid, "cause", cause)
		t.cfg.Observer.PluginCrashed(CrashEvent{Transport: t.cfg.Name, Cause: cause, PID: old.pid, At: downAt})
	}
	old.teardown(upd != nil)

	n := 0
	if upd == nil && time.Since(old.started) < stableAfter {
		n = 1 // crashed soon after start: begin one step up
	}
	var in *instance
	attempts := 0
	for {
		delay := backoff.Policy{Min: t.cfg.BackoffMin, Max: t.cfg.BackoffMax}.Delay(n)
		if upd != nil && n == 0 {
			delay = 0 // an update starts the new binary at once
		}
		select {
		case <-t.ctx.Done():
			upd.report(fmt.Errorf("%s: %w: closed", t.cfg.Name, ErrUnavailable))
			return
		case <-t.draining:
			t.log.Warn("transport plugin restart abandoned: the agent is draining", "attempts", n)
			upd.report(fmt.Errorf("%s: %w: the agent is draining", t.cfg.Name, ErrUnavailable))
			return
		case u := <-t.update:
			// An update while the process is down (e.g. the binary was replaced and the crashed plugin
			// cannot restart until its new checksum is pinned): start the new binary at once.
			upd.report(fmt.Errorf("%w: superseded by the update to %s", ErrUpdateFailed, u.path))
			upd = &update{prev: &updateMsg{path: t.cfg.Path, sum: t.cfg.SHA256, want: t.want}, done: u.done}
			t.cfg.Path, t.cfg.SHA256, t.want = u.path, u.sum, u.want
			t.log.Info("transport plugin update while it is down: starting the new binary", "path", u.path, "sha256", u.sum)
		case <-time.After(delay):
		}
		sctx, cancel := context.WithTimeout(t.ctx, t.cfg.StartTimeout)
		var err error
		in, err = launch(sctx, &t.cfg, t.want)
		cancel()
		if err == nil {
			break
		}
		if t.ctx.Err() != nil {
			upd.report(fmt.Errorf("%s: %w: closed", t.cfg.Name, ErrUnavailable))
			return
		}
		attempts++
		t.cfg.Observer.PluginStartFailed(StartFailure{Transport: t.cfg.Name, Path: t.cfg.Path, Attempt: attempts, Err: err})
		if upd != nil && !upd.reported {
			// The new binary does not start: go back to the previous one.
			t.log.Error("transport plugin update failed; starting the previous binary again", "path", t.cfg.Path, "err", err, "previous", upd.prev.path)
			upd.report(fmt.Errorf("%w: %s: %v (the previous binary %s is started again)", ErrUpdateFailed, t.cfg.Path, err, upd.prev.path))
			t.cfg.Path, t.cfg.SHA256, t.want = upd.prev.path, upd.prev.sum, upd.prev.want
			continue // at once, without counting a failed attempt
		}
		t.log.Error("transport plugin restart failed", "attempt", n+1, "err", err)
		n++
	}
	// Re-open every listener on the new process, where it was.
	t.mu.Lock()
	ls := make([]*Listener, 0, len(t.listeners))
	for l := range t.listeners {
		ls = append(ls, l)
	}
	t.mu.Unlock()
	for _, l := range ls {
		l.relisten(t.ctx, in)
	}
	t.mu.Lock()
	if t.closed || t.isDraining() {
		t.mu.Unlock()
		in.teardown(true)
		return
	}
	t.inst = in
	t.mu.Unlock()
	go in.acceptLoop(t.down)
	updated := upd != nil && !upd.reported
	count := t.restarts.Load()
	if !updated {
		count = t.restarts.Add(1) // an update is no crash: it does not count as a restart
	}
	ev := RestartEvent{Transport: t.cfg.Name, Restarts: count, Cause: cause, PID: in.pid, Downtime: time.Since(downAt),
		Updated: updated, Path: t.cfg.Path, SHA256: t.cfg.SHA256}
	if upd != nil {
		ev.PreviousSHA256 = upd.prev.sum
	}
	t.log.Info("transport plugin restarted", "pid", in.pid, "restarts", count, "downtime", ev.Downtime, "updated", updated)
	upd.report(nil)
	t.cfg.Observer.PluginRestarted(ev)
}

// Listener receives verified inbound connections. It survives plugin restarts.
type Listener struct {
	t         *Transport
	requested string
	ch        chan *Conn
	closed    chan struct{}
	closeOnce sync.Once

	mu    sync.Mutex
	in    *instance
	addrs []string
	bound string
	err   error
}

func (l *Listener) set(in *instance, addrs []string, bound string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.in, l.addrs, l.bound, l.err = in, addrs, bound, nil
}

// relisten re-opens the listener on a new process: first where it was bound, then where it was asked.
func (l *Listener) relisten(ctx context.Context, in *instance) {
	l.mu.Lock()
	bound := l.bound
	l.mu.Unlock()
	addrs, nb, err := in.listen(ctx, bound, l)
	if err != nil {
		l.t.log.Warn("could not listen again where the listener was; trying the requested address", "addr", bound, "err", err)
		addrs, nb, err = in.listen(ctx, l.requested, l)
	}
	if err != nil {
		l.t.log.Error("listener lost in the plugin restart", "addr", l.requested, "err", err)
		l.mu.Lock()
		l.in, l.err = nil, fmt.Errorf("%s listener %s lost in a plugin restart: %w", l.t.cfg.Name, l.requested, err)
		l.mu.Unlock()
		l.t.mu.Lock()
		delete(l.t.listeners, l)
		l.t.mu.Unlock()
		l.shut()
		return
	}
	l.set(in, addrs, nb)
}

// Addrs are the addresses peers dial (they may change after a plugin restart, e.g. a libp2p peer ID).
func (l *Listener) Addrs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.addrs...)
}

func (l *Listener) deliver(c *Conn) {
	select {
	case <-l.closed:
		_ = c.Close()
		return
	default:
	}
	select {
	case l.ch <- c:
	default:
		l.t.log.Warn("accept queue full; dropping inbound connection", "remote", c.RemoteAddr())
		_ = c.Close()
	}
}

// Accept waits for the next verified inbound connection. Connections that were queued when their
// plugin process died are skipped.
func (l *Listener) Accept(ctx context.Context) (*Conn, error) {
	for {
		c, err := l.accept(ctx)
		if err != nil || c.inst.ctx.Err() == nil {
			return c, err
		}
		_ = c.Close()
	}
}

func (l *Listener) accept(ctx context.Context) (*Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		l.mu.Lock()
		err := l.err
		l.mu.Unlock()
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%s listener: %w", l.t.cfg.Name, transports.ErrClosed)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *Listener) shut() {
	l.closeOnce.Do(func() {
		close(l.closed)
		for {
			select {
			case c := <-l.ch:
				_ = c.Close()
			default:
				return
			}
		}
	})
}

// Close stops listening.
func (l *Listener) Close() error {
	l.t.mu.Lock()
	delete(l.t.listeners, l)
	l.t.mu.Unlock()
	l.mu.Lock()
	in := l.in
	l.in = nil
	l.mu.Unlock()
	if in != nil {
		in.listenMu.RLock()
		var lid string
		for id, x := range in.listeners {
			if x == l {
				lid = id
			}
		}
		in.listenMu.RUnlock()
		if lid != "" {
			in.closeListener(lid)
		}
	}
	l.shut()
	return nil
}
