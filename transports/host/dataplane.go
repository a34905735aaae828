package host

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/custos-agent/custos/transports"
)

// The data plane (transports/dataplane.go, ADR 0031): frames of a connection over a unix socket of its
// own instead of a gRPC stream. The gRPC connection (AutoMTLS) keeps every control call; only the bytes
// of frames, which are the agent's sealed and signed envelopes, take the socket.

// helloWait bounds the wait for the plugin's hello after Configure. The plugin sends it before it serves
// gRPC, so it is already queued when Configure returns; a plugin without the data plane never sends it.
const helloWait = 250 * time.Millisecond

// frameConn is what a Conn carries frames over: a gRPC stream with credit (flow.Conn) or a data socket.
type frameConn interface {
	ReadFrame(ctx context.Context) ([]byte, error)
	WriteFrame(ctx context.Context, frame []byte) error
	Close() error
	Done() <-chan struct{}
}

// negotiateData takes the host end of the launch-time control socket and returns it when the plugin said
// hello on it; otherwise it closes it and the connections of this plugin use gRPC streams.
func negotiateData(f *os.File, log interface{ Debug(string, ...any) }) *net.UnixConn {
	if f == nil {
		return nil
	}
	c, err := net.FileConn(f)
	_ = f.Close()
	if err != nil {
		log.Debug("no data plane: control socket", "err", err)
		return nil
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		_ = c.Close()
		return nil
	}
	_ = uc.SetReadDeadline(time.Now().Add(helloWait))
	buf := make([]byte, 64)
	n, _, _, _, err := uc.ReadMsgUnix(buf, nil)
	_ = uc.SetReadDeadline(time.Time{})
	if err != nil || string(buf[:n]) != transports.DataHello {
		log.Debug("no data plane: the plugin did not say hello; frames use gRPC streams", "err", err)
		_ = uc.Close()
		return nil
	}
	return uc
}

// openData makes the data socket of connection cid and passes the plugin its end.
func (in *instance) openData(cid string) (*sockConn, error) {
	hostEnd, plugEnd, err := socketPair(syscall.SOCK_STREAM)
	if err != nil {
		return nil, err
	}
	defer func() { _ = plugEnd.Close() }() // the plugin holds its own copy once the message is sent
	if _, _, err := in.data.WriteMsgUnix([]byte(cid), syscall.UnixRights(int(plugEnd.Fd())), nil); err != nil {
		_ = hostEnd.Close()
		return nil, fmt.Errorf("pass the data socket to plugin %s: %w", in.cfg.Name, err)
	}
	c, err := net.FileConn(hostEnd)
	_ = hostEnd.Close()
	if err != nil {
		return nil, err
	}
	sc := newSockConn(c.(*net.UnixConn), "plugin "+in.cfg.Name, in.cfg.Window)
	stop := context.AfterFunc(in.ctx, func() {
		sc.fail(fmt.Errorf("connection through %s: the plugin stopped: %w", sc.peer, transports.ErrClosed))
	})
	sc.whenDone(func() { stop() }) // not a goroutine per connection waiting for it (issue 19)
	return sc, nil
}

// sockConn is one connection's frames over its data socket, with the semantics of a flow.Conn: a
// reader goroutine reads ahead up to window bytes (then the kernel's buffers hold the plugin back), a
// writer goroutine, running only while frames are queued (issue 19), writes them, several per writev;
// WriteFrame waits while window bytes are queued, so a writer blocked by a slow peer can give up (ctx)
// without damaging the stream, and a ReadFrame can be cancelled at any time.
type sockConn struct {
	c      *net.UnixConn
	peer   string
	window int64

	mu      sync.Mutex
	wake    chan struct{} // closed and replaced on every state change
	rq      [][]byte      // frames read, not yet taken
	rqBytes int64
	rerr    error    // terminal receive error (io.EOF: the plugin ended cleanly)
	wq      [][]byte // frames to write
	wqBytes int64
	werr    error // terminal send error
	closed  bool  // Close was called: the end marker follows the queued frames
	rdone   bool  // the reader goroutine ended
	wdone   bool  // the writer wrote the end marker or failed: nothing more is written
	writing bool  // a writer goroutine runs (only while there is something to write: issue 19)

	done     chan struct{}
	doneOnce sync.Once
	onDone   func() // called when done closes (whenDone)
}

func newSockConn(c *net.UnixConn, peer string, window int64) *sockConn {
	s := &sockConn{c: c, peer: peer, window: window, wake: make(chan struct{}), done: make(chan struct{})}
	go s.readLoop()
	return s
}

func (s *sockConn) signalLocked() {
	close(s.wake)
	s.wake = make(chan struct{})
}

// finishLocked closes done once the receive side ended and the send side ended too (or cannot matter).
func (s *sockConn) finishLocked() {
	if s.rdone && (s.wdone || s.werr != nil || !errors.Is(s.rerr, io.EOF)) {
		s.doneOnce.Do(func() {
			close(s.done)
			if s.onDone != nil {
				s.onDone()
			}
		})
	}
}

// whenDone has f called once the connection has ended (at once if it has): f must not block nor take
// s.mu.
func (s *sockConn) whenDone(f func()) {
	s.mu.Lock()
	select {
	case <-s.done:
		s.mu.Unlock()
		f()
		return
	default:
	}
	s.onDone = f
	s.mu.Unlock()
}

func (s *sockConn) readLoop() {
	dr := transports.NewDataReader(s.c) // holds a read buffer only while bytes are buffered (issue 19)
	defer dr.Close()
	for {
		s.mu.Lock()
		for s.rqBytes >= s.window && !s.closed && s.rerr == nil {
			w := s.wake
			s.mu.Unlock()
			<-w
			s.mu.Lock()
		}
		stop := s.rerr != nil
		s.mu.Unlock()
		if stop {
			break
		}
		f, err := dr.ReadFrameInto(nil)
		s.mu.Lock()
		if err != nil {
			if s.rerr == nil {
				if errors.Is(err, io.EOF) {
					s.rerr = io.EOF
				} else {
					s.rerr = fmt.Errorf("connection through %s broken: %w", s.peer, err)
				}
			}
			s.signalLocked()
			s.mu.Unlock()
			break
		}
		if !s.closed { // after Close, what still arrives is drained and dropped
			s.rq = append(s.rq, f)
			s.rqBytes += int64(len(f)) + transports.FrameCost
			s.signalLocked()
		}
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.rdone = true
	if !errors.Is(s.rerr, io.EOF) {
		_ = s.c.Close()
	}
	s.finishLocked()
	s.mu.Unlock()
}

// startWriterLocked starts the writer unless one runs (s.mu held). An idle connection has none: the
// writer ends when the queue is empty, and the next WriteFrame or Close starts another.
func (s *sockConn) startWriterLocked() {
	if !s.writing && !s.wdone {
		s.writing = true
		go s.writeLoop()
	}
}

func (s *sockConn) writeLoop() {
	var hdrs []byte
	for {
		s.mu.Lock()
		if len(s.wq) == 0 && !s.closed && s.werr == nil {
			s.writing = false // idle: the next WriteFrame starts a writer again
			s.mu.Unlock()
			return
		}
		if s.werr != nil {
			break
		}
		batch, end := s.wq, s.closed
		s.wq, s.wqBytes = nil, 0
		s.mu.Unlock()
		bufs := make(net.Buffers, 0, 2*len(batch)+1)
		hdrs = hdrs[:0]
		for _, f := range batch {
			hdrs = binary.BigEndian.AppendUint32(hdrs, uint32(len(f)))
		}
		if end {
			hdrs = binary.BigEndian.AppendUint32(hdrs, transports.DataEnd)
		}
		for i, f := range batch {
			bufs = append(bufs, hdrs[4*i:4*i+4], f)
		}
		if end {
			bufs = append(bufs, hdrs[4*len(batch):])
		}
		_, err := bufs.WriteTo(s.c)
		s.mu.Lock()
		if err != nil {
			if s.werr == nil {
				s.werr = fmt.Errorf("send to %s: %w", s.peer, err)
			}
			s.signalLocked()
			break
		}
		s.signalLocked() // room in the queue again
		if end {
			s.mu.Unlock()
			_ = s.c.CloseWrite()
			s.mu.Lock()
			break
		}
		s.mu.Unlock()
	}
	s.wdone, s.writing = true, false
	s.finishLocked()
	s.mu.Unlock()
}

// ReadFrame returns the next frame; io.EOF once the plugin ended the connection cleanly.
func (s *sockConn) ReadFrame(ctx context.Context) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.closed {
			return nil, fmt.Errorf("connection: %w", transports.ErrClosed)
		}
		if len(s.rq) > 0 {
			f := s.rq[0]
			s.rq[0] = nil
			s.rq = s.rq[1:]
			s.rqBytes -= int64(len(f)) + transports.FrameCost
			s.signalLocked()
			return f, nil
		}
		if s.rerr != nil {
			return nil, s.rerr
		}
		w := s.wake
		s.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			s.mu.Lock()
			return nil, ctx.Err()
		}
		s.mu.Lock()
	}
}

// WriteFrame queues one frame for the writer, waiting while window bytes are queued (a slow plugin or
// peer) until ctx is done; a frame not queued is not sent.
func (s *sockConn) WriteFrame(ctx context.Context, frame []byte) error {
	if len(frame) > transports.MaxFrameSize {
		return fmt.Errorf("write frame of %d bytes: %w (limit %d)", len(frame), transports.ErrFrameTooLarge, transports.MaxFrameSize)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		if s.werr != nil {
			return s.werr
		}
		if s.closed {
			return fmt.Errorf("connection: %w", transports.ErrClosed)
		}
		if s.wqBytes == 0 || s.wqBytes+int64(len(frame)) <= s.window {
			s.wq = append(s.wq, frame)
			s.wqBytes += int64(len(frame)) + transports.FrameCost
			s.signalLocked()
			s.startWriterLocked()
			return nil
		}
		w := s.wake
		s.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			s.mu.Lock()
			return fmt.Errorf("waiting for %s to take frames: %w", s.peer, ctx.Err())
		}
		s.mu.Lock()
	}
}

// Close ends the host's direction cleanly: the queued frames, then the end marker, after which the plugin
// flushes them to the network and closes the network connection. Pending and later ReadFrame and
// WriteFrame calls return transports.ErrClosed.
func (s *sockConn) Close() error {
	s.mu.Lock()
	s.closed = true
	s.rq, s.rqBytes = nil, 0
	s.signalLocked()
	s.startWriterLocked() // the queued frames, then the end marker
	s.mu.Unlock()
	return nil
}

// fail ends the connection at once with err (the plugin stopped).
func (s *sockConn) fail(err error) {
	s.mu.Lock()
	if s.rerr == nil {
		s.rerr = err
	}
	if s.werr == nil {
		s.werr = err
	}
	s.signalLocked()
	s.finishLocked() // the reader may have ended already, and no writer may be running to notice
	s.mu.Unlock()
	_ = s.c.Close()
}

// kill closes the socket now (after Close's grace period).
func (s *sockConn) kill() { s.fail(fmt.Errorf("connection: %w", transports.ErrClosed)) }

// Done is closed when the connection has ended.
func (s *sockConn) Done() <-chan struct{} { return s.done }
