// Package flow runs one connection's frames over a gRPC stream of transportpb.FrameMessage with explicit,
// byte-counted credit, on both sides of the plugin boundary.
//
// Each side grants its peer Window bytes of credit at the start and grants more as its consumer takes
// frames (ReadFrame). A side may send a frame only while its credit is positive; a frame costs its length
// plus transports.FrameCost. So a slow reader stops its peer's writer (back-pressure), and the bytes
// queued at a receiver never exceed Window + one maximal frame. A peer that sends without credit, sends a
// frame above the limit, or grants absurd credit is a protocol violation: the connection fails.
package flow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/custos-agent/custos/transports"
	pb "github.com/custos-agent/custos/transports/proto"
)

// DefaultWindow is the credit each side grants its peer by default (1 MiB).
const DefaultWindow = 1 << 20

// maxCredit bounds the credit a peer may accumulate; beyond it the peer is misbehaving.
const maxCredit = 1 << 32

// ErrViolation: the peer broke the flow-control protocol.
var ErrViolation = errors.New("flow-control violation")

// Stream is the part of a gRPC frame stream (client or server side) this package uses. Recv is called
// from one goroutine only; Send is serialised here.
type Stream interface {
	Send(*pb.FrameMessage) error
	Recv() (*pb.FrameMessage, error)
}

// Options tune a Conn.
type Options struct {
	// Window is the credit granted to the peer, in bytes (default DefaultWindow).
	Window int64
	// Abort tears the underlying stream down. It is called when a send blocks past its context or the peer
	// violates the protocol, and by Close.
	Abort func()
	// Peer names the other side in errors ("plugin", "host").
	Peer string
	// CloseSend half-closes the stream (client side). With it, Close is graceful: frames already sent
	// still reach the peer, which then ends the stream. Without it, Close aborts.
	CloseSend func() error
}

// Conn is one flow-controlled frame connection over a Stream.
type Conn struct {
	s         Stream
	abort     func()
	closeSend func() error
	window    int64
	peer      string

	sendMu sync.Mutex

	mu          sync.Mutex
	wake        chan struct{} // closed and replaced on every state change
	credit      int64         // what we may still send
	outstanding int64         // credit we granted that the peer has not used yet
	unacked     int64         // consumed bytes not yet granted back
	queue       [][]byte
	rerr        error // terminal receive error (io.EOF: clean end)
	werr        error // terminal send error
	done        chan struct{}
}

// New starts a Conn on s: it grants the initial window and starts receiving.
func New(s Stream, opts Options) (*Conn, error) {
	if opts.Window <= 0 {
		opts.Window = DefaultWindow
	}
	if opts.Abort == nil {
		opts.Abort = func() {}
	}
	if opts.Peer == "" {
		opts.Peer = "peer"
	}
	c := &Conn{s: s, abort: opts.Abort, closeSend: opts.CloseSend, window: opts.Window, peer: opts.Peer,
		wake: make(chan struct{}), outstanding: opts.Window, done: make(chan struct{})}
	if err := s.Send(&pb.FrameMessage{Msg: &pb.FrameMessage_Credit{Credit: uint32(opts.Window)}}); err != nil {
		opts.Abort()
		return nil, fmt.Errorf("grant initial credit to %s: %w", opts.Peer, err)
	}
	go c.recvLoop()
	return c, nil
}

// Done is closed when the receive side has ended (peer closed, error or Close).
func (c *Conn) Done() <-chan struct{} { return c.done }

func (c *Conn) signalLocked() {
	close(c.wake)
	c.wake = make(chan struct{})
}

// fail records a terminal error for both directions (first error wins) and wakes everyone.
func (c *Conn) failLocked(rerr, werr error) {
	if c.rerr == nil {
		c.rerr = rerr
	}
	if c.werr == nil {
		c.werr = werr
	}
	c.signalLocked()
}

func (c *Conn) recvLoop() {
	defer close(c.done)
	for {
		m, err := c.s.Recv()
		if err != nil {
			c.mu.Lock()
			if errors.Is(err, io.EOF) {
				c.failLocked(io.EOF, fmt.Errorf("%s closed the connection: %w", c.peer, transports.ErrClosed))
			} else {
				e := fmt.Errorf("connection to %s broken: %w", c.peer, err)
				c.failLocked(e, e)
			}
			c.mu.Unlock()
			return
		}
		if verr := c.handle(m); verr != nil {
			c.mu.Lock()
			c.failLocked(verr, verr)
			c.mu.Unlock()
			c.abort()
			return
		}
	}
}

func (c *Conn) handle(m *pb.FrameMessage) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch v := m.Msg.(type) {
	case *pb.FrameMessage_Data:
		if len(v.Data) > transports.MaxFrameSize {
			return fmt.Errorf("%w: %s sent a frame of %d bytes (limit %d)", ErrViolation, c.peer, len(v.Data), transports.MaxFrameSize)
		}
		if c.outstanding <= 0 {
			return fmt.Errorf("%w: %s sent a frame without credit", ErrViolation, c.peer)
		}
		if c.rerr != nil { // closed locally: drop
			return nil
		}
		c.outstanding -= int64(len(v.Data)) + transports.FrameCost
		c.queue = append(c.queue, v.Data)
		c.signalLocked()
	case *pb.FrameMessage_Credit:
		if v.Credit == 0 || c.credit+int64(v.Credit) > maxCredit {
			return fmt.Errorf("%w: %s granted %d bytes of credit on top of %d", ErrViolation, c.peer, v.Credit, c.credit)
		}
		c.credit += int64(v.Credit)
		c.signalLocked()
	default:
		return fmt.Errorf("%w: unexpected %T from %s", ErrViolation, m.Msg, c.peer)
	}
	return nil
}

// ReadFrame returns the next frame. After the peer closed cleanly and every queued frame was read it
// returns io.EOF.
func (c *Conn) ReadFrame(ctx context.Context) ([]byte, error) {
	for {
		c.mu.Lock()
		if len(c.queue) > 0 {
			f := c.queue[0]
			c.queue[0] = nil
			c.queue = c.queue[1:]
			c.unacked += int64(len(f)) + transports.FrameCost
			var grant int64
			// Grant back in batches of a quarter window, or everything once the queue runs dry.
			if c.rerr == nil && (c.unacked >= c.window/4 || len(c.queue) == 0 && c.unacked >= c.window/16) {
				grant, c.unacked = c.unacked, 0
				c.outstanding += grant
			}
			c.mu.Unlock()
			if grant > 0 {
				if err := c.send(ctx, &pb.FrameMessage{Msg: &pb.FrameMessage_Credit{Credit: uint32(grant)}}); err != nil {
					return f, nil // the frame is good; the failure surfaces on the next call
				}
			}
			return f, nil
		}
		if c.rerr != nil {
			err := c.rerr
			c.mu.Unlock()
			return nil, err
		}
		wake := c.wake
		c.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// WriteFrame sends one frame, waiting for credit (back-pressure) until ctx is done. If the send itself
// blocks past ctx, the connection is torn down: a half-sent frame cannot be taken back.
func (c *Conn) WriteFrame(ctx context.Context, frame []byte) error {
	if len(frame) > transports.MaxFrameSize {
		return fmt.Errorf("write frame of %d bytes: %w (limit %d)", len(frame), transports.ErrFrameTooLarge, transports.MaxFrameSize)
	}
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("write frame: %w", err)
		}
		c.mu.Lock()
		if c.werr != nil {
			err := c.werr
			c.mu.Unlock()
			return err
		}
		if c.credit > 0 {
			c.credit -= int64(len(frame)) + transports.FrameCost
			c.mu.Unlock()
			break
		}
		wake := c.wake
		c.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to take frames: %w", c.peer, ctx.Err())
		}
	}
	return c.send(ctx, &pb.FrameMessage{Msg: &pb.FrameMessage_Data{Data: frame}})
}

func (c *Conn) send(ctx context.Context, m *pb.FrameMessage) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	stop := context.AfterFunc(ctx, c.abort)
	err := c.s.Send(m)
	if !stop() {
		err = fmt.Errorf("send to %s interrupted: %w", c.peer, ctx.Err())
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("%s closed the connection: %w", c.peer, transports.ErrClosed)
		} else {
			err = fmt.Errorf("send to %s: %w", c.peer, err)
		}
		c.mu.Lock()
		c.failLocked(err, err)
		c.mu.Unlock()
		c.abort()
	}
	return err
}

// Close fails both directions locally (ReadFrame and WriteFrame return transports.ErrClosed). With
// Options.CloseSend it half-closes the stream so the frames already sent are still delivered and the peer
// ends the stream (Done); otherwise it aborts the stream.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.queue = nil
	c.failLocked(fmt.Errorf("connection: %w", transports.ErrClosed), fmt.Errorf("connection: %w", transports.ErrClosed))
	c.mu.Unlock()
	if c.closeSend == nil {
		c.abort()
		return nil
	}
	c.sendMu.Lock()
	err := c.closeSend()
	c.sendMu.Unlock()
	if err != nil {
		c.abort()
	}
	return nil
}

// Buffered is the number of received frames waiting for ReadFrame.
func (c *Conn) Buffered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}

// Stats reports the current credit state (for tests).
func (c *Conn) Stats() (sendCredit, outstanding int64, queued int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.credit, c.outstanding, len(c.queue)
}
