// Package memory is the in-memory transport: agents in one process reach each other over in-process
// frame pipes, with addresses ("mem:1", ...), the binding check of a real transport (a dial names the
// agent it expects; another agent answering is refused with transports.ErrPeerMismatch), back-pressure,
// and dial failures on demand. It carries no bytes over a network and holds no keys: the agent ID of an
// endpoint is declared, not proven, so it serves tests and in-process wiring of the session manager
// (agent/sessions), never a real deployment.
package memory

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"

	"github.com/custos-agent/custos/transports"
)

// Name is the transport name its connections report.
const Name = "memory"

// ErrRefused: nothing listens at the address, or the network was told to fail the dial.
var ErrRefused = errors.New("connection refused")

// window is how many frames a direction buffers before WriteFrame waits for the reader.
const window = 64

// Network is one in-process network: its listeners by address, and the faults it is told to inject.
type Network struct {
	mu        sync.Mutex
	next      int
	listeners map[string]*Listener
	fail      map[string][]error // per address: the errors the next dials fail with, in order
	hook      func(ctx context.Context, from, addr string) error
	dials     map[string]int
	open      map[*Conn]bool
}

// NewNetwork makes an empty network.
func NewNetwork() *Network {
	return &Network{listeners: map[string]*Listener{}, fail: map[string][]error{}, dials: map[string]int{}, open: map[*Conn]bool{}}
}

// Endpoint is one agent's attachment to the network: what it dials from and listens on.
func (n *Network) Endpoint(agentID string) *Transport { return &Transport{n: n, id: agentID} }

// FailDials makes the next len(errs) dials to addr fail, in order, with those errors (wrapped in
// ErrRefused); a nil entry means ErrRefused alone.
func (n *Network) FailDials(addr string, errs ...error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.fail[addr] = append(n.fail[addr], errs...)
}

// OnDial sets a function every dial calls first (from: the dialling agent); a non-nil error fails the
// dial. It may block, to line dials up.
func (n *Network) OnDial(f func(ctx context.Context, from, addr string) error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.hook = f
}

// Dials is the number of dials made to addr so far (failed ones included).
func (n *Network) Dials(addr string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.dials[addr]
}

// Open is the number of connection ends not yet closed (two per connection while both are open).
func (n *Network) Open() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.open)
}

// Break ends every open connection at once, as a restarted plugin or a network partition would (reads on
// both ends return transports.ErrClosed).
func (n *Network) Break() {
	n.mu.Lock()
	cs := make([]*Conn, 0, len(n.open))
	for c := range n.open {
		cs = append(cs, c)
	}
	n.mu.Unlock()
	for _, c := range cs {
		c.abort()
	}
}

// Transport is one agent's endpoint: it dials and listens as that agent.
type Transport struct {
	n  *Network
	id string
}

// AgentID is the agent this endpoint speaks for.
func (t *Transport) AgentID() string { return t.id }

// Listen makes a listener at addr ("" picks a fresh "mem:N" address).
func (t *Transport) Listen(_ context.Context, addr string) (*Listener, error) {
	n := t.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if addr == "" {
		n.next++
		addr = "mem:" + strconv.Itoa(n.next)
	}
	if _, ok := n.listeners[addr]; ok {
		return nil, fmt.Errorf("listen on %s: the address is in use", addr)
	}
	l := &Listener{n: n, t: t, addr: addr, ch: make(chan *Conn, window), done: make(chan struct{})}
	n.listeners[addr] = l
	return l, nil
}

// Dial connects to the listener at addr; expect (when not "") is the agent ID that must be listening there.
func (t *Transport) Dial(ctx context.Context, addr, expect string) (*Conn, error) {
	n := t.n
	n.mu.Lock()
	n.dials[addr]++
	hook := n.hook
	var injected error
	injectedSet := false
	if q := n.fail[addr]; len(q) > 0 {
		injected, injectedSet = q[0], true
		n.fail[addr] = q[1:]
	}
	n.mu.Unlock()
	if hook != nil {
		if err := hook(ctx, t.id, addr); err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
	}
	if injectedSet {
		if injected == nil {
			return nil, fmt.Errorf("dial %s: %w", addr, ErrRefused)
		}
		return nil, fmt.Errorf("dial %s: %w: %w", addr, ErrRefused, injected)
	}
	n.mu.Lock()
	l := n.listeners[addr]
	n.mu.Unlock()
	if l == nil {
		return nil, fmt.Errorf("dial %s: %w: nothing listens there", addr, ErrRefused)
	}
	if expect != "" && l.t.id != expect {
		return nil, fmt.Errorf("%s peer %s: %w: it is %s, expected %s", Name, addr, transports.ErrPeerMismatch, l.t.id, expect)
	}
	local := n.dialAddr(t)
	a2b, b2a := newPipe(), newPipe()
	out := &Conn{n: n, r: b2a, w: a2b, remote: addr, peer: l.t.id, closed: make(chan struct{})}
	in := &Conn{n: n, r: a2b, w: b2a, remote: local, peer: t.id, closed: make(chan struct{})}
	n.track(out, in)
	select {
	case l.ch <- in:
		return out, nil
	case <-l.done:
	case <-ctx.Done():
	}
	out.abort()
	in.abort()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, ctx.Err())
	}
	return nil, fmt.Errorf("dial %s: %w: the listener closed", addr, ErrRefused)
}

func (n *Network) dialAddr(t *Transport) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.next++
	return "mem:" + strconv.Itoa(n.next) + "/" + t.id
}

func (n *Network) track(cs ...*Conn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range cs {
		n.open[c] = true
	}
}

func (n *Network) untrack(c *Conn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.open, c)
}

// Listener delivers the connections dialled to its address.
type Listener struct {
	n    *Network
	t    *Transport
	addr string
	ch   chan *Conn
	once sync.Once
	done chan struct{}
}

// Addrs is the listener's address.
func (l *Listener) Addrs() []string { return []string{l.addr} }

// Accept returns the next inbound connection; transports.ErrClosed once the listener is closed.
func (l *Listener) Accept(ctx context.Context) (*Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, fmt.Errorf("accept on %s: %w", l.addr, transports.ErrClosed)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close stops listening: the address is free again, and connections not yet accepted are closed.
func (l *Listener) Close() error {
	l.once.Do(func() {
		l.n.mu.Lock()
		if l.n.listeners[l.addr] == l {
			delete(l.n.listeners, l.addr)
		}
		l.n.mu.Unlock()
		close(l.done)
		for {
			select {
			case c := <-l.ch:
				c.abort()
			default:
				return
			}
		}
	})
	return nil
}

// pipe is one direction of a connection: frames in order, at most window of them waiting.
type pipe struct {
	frames chan []byte
	once   sync.Once
	eof    chan struct{} // the writer closed: the reader gets io.EOF after the frames already written
	abortO sync.Once
	broken chan struct{} // the connection was aborted: both ends fail at once
}

func newPipe() *pipe {
	return &pipe{frames: make(chan []byte, window), eof: make(chan struct{}), broken: make(chan struct{})}
}

// Conn is one end of an in-memory connection.
type Conn struct {
	n      *Network
	r, w   *pipe
	remote string
	peer   string
	once   sync.Once
	closed chan struct{}
}

// ReadFrame returns the next frame (a copy the caller owns); io.EOF after the peer closed and every frame
// it wrote was read; transports.ErrClosed once this end is closed or the connection broken.
func (c *Conn) ReadFrame(ctx context.Context) ([]byte, error) {
	select {
	case <-c.closed:
		return nil, fmt.Errorf("read: %w", transports.ErrClosed)
	case <-c.r.broken:
		return nil, fmt.Errorf("read: %w", transports.ErrClosed)
	default:
	}
	select {
	case f := <-c.r.frames:
		return f, nil
	default:
	}
	select {
	case f := <-c.r.frames:
		return f, nil
	case <-c.r.eof:
		select {
		case f := <-c.r.frames:
			return f, nil
		default:
			return nil, io.EOF
		}
	case <-c.r.broken:
		return nil, fmt.Errorf("read: %w", transports.ErrClosed)
	case <-c.closed:
		return nil, fmt.Errorf("read: %w", transports.ErrClosed)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// WriteFrame sends a copy of frame (at most transports.MaxFrameSize bytes), waiting while window frames
// are unread.
func (c *Conn) WriteFrame(ctx context.Context, frame []byte) error {
	if len(frame) > transports.MaxFrameSize {
		return fmt.Errorf("write frame of %d bytes: %w (limit %d)", len(frame), transports.ErrFrameTooLarge, transports.MaxFrameSize)
	}
	select {
	case <-c.closed:
		return fmt.Errorf("write: %w", transports.ErrClosed)
	case <-c.w.broken:
		return fmt.Errorf("write: %w", transports.ErrClosed)
	default:
	}
	f := append(make([]byte, 0, len(frame)), frame...)
	select {
	case c.w.frames <- f:
		return nil
	case <-c.closed:
		return fmt.Errorf("write: %w", transports.ErrClosed)
	case <-c.w.broken:
		return fmt.Errorf("write: %w", transports.ErrClosed)
	case <-c.r.eof: // the peer closed its end: nobody reads this direction any more
		return fmt.Errorf("write: the peer closed: %w", transports.ErrClosed)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close closes this end: frames already written are still delivered, then the peer reads io.EOF.
func (c *Conn) Close() error {
	c.once.Do(func() {
		close(c.closed)
		c.w.once.Do(func() { close(c.w.eof) })
		c.n.untrack(c)
	})
	return nil
}

// abort breaks the connection: both ends fail at once.
func (c *Conn) abort() {
	c.r.abortO.Do(func() { close(c.r.broken) })
	c.w.abortO.Do(func() { close(c.w.broken) })
	_ = c.Close()
}

// Transport is the transport name, "memory".
func (c *Conn) Transport() string { return Name }

// RemoteAddr is the peer's address: the listener's for a dialled connection, the dialler's for an
// accepted one.
func (c *Conn) RemoteAddr() string { return c.remote }

// PeerAgentID is the agent at the other end.
func (c *Conn) PeerAgentID() string { return c.peer }
