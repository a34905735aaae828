// Package sessiontest is test support for agent/session: NetConn frames a net.Conn (net.Pipe, loopback
// TCP) as a session.FrameConn, so that handshakes and sessions run without a transport plugin. The
// transports carry frames themselves (transports/host); no production binary imports this package.
package sessiontest

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/custos-agent/custos/reason"
)

// DefaultMaxFrame is the frame size limit of NewNetConn (4 MiB).
const DefaultMaxFrame = 4 << 20

// NetConn frames a stream connection: each frame is a 4-byte big-endian length then that many bytes (at
// least 1, at most the limit).
type NetConn struct {
	c    net.Conn
	max  int
	rmu  sync.Mutex
	wmu  sync.Mutex
	rerr error // sticky: after a failed read the stream position is lost
}

// NewNetConn frames c with frames of at most maxFrame bytes (DefaultMaxFrame when <= 0 or above it).
func NewNetConn(c net.Conn, maxFrame int) *NetConn {
	if maxFrame <= 0 || maxFrame > DefaultMaxFrame {
		maxFrame = DefaultMaxFrame
	}
	return &NetConn{c: c, max: maxFrame}
}

// RemoteAddr is the peer's network address.
func (n *NetConn) RemoteAddr() string { return n.c.RemoteAddr().String() }

// MaxFrame is the frame size limit.
func (n *NetConn) MaxFrame() int { return n.max }

func (n *NetConn) ioErr(ctx context.Context, err error, inFrame bool) error {
	switch {
	case ctx.Err() != nil && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return reason.Wrap(reason.Timeout, err, "connection")
	case ctx.Err() != nil:
		return reason.Wrap(reason.Closed, ctx.Err(), "connection")
	case errors.Is(err, os.ErrDeadlineExceeded):
		return reason.Wrap(reason.Timeout, err, "connection")
	case inFrame && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
		return reason.Wrap(reason.TruncatedFrame, err, "the stream ended inside a frame")
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, io.ErrClosedPipe):
		return reason.Wrap(reason.Closed, err, "connection")
	}
	return reason.Wrap(reason.Closed, err, "connection failed")
}

// watch applies ctx's deadline and cancellation to the connection through set (SetReadDeadline or
// SetWriteDeadline); the returned func undoes it.
func watch(ctx context.Context, set func(time.Time) error) func() {
	d, _ := ctx.Deadline()
	_ = set(d)
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = set(time.Unix(1, 0))
		close(fired)
	})
	return func() {
		if !stop() {
			<-fired // the cancellation ran: let it finish before the next call sets a deadline
		}
	}
}

// ReadFrame reads one frame.
func (n *NetConn) ReadFrame(ctx context.Context) ([]byte, error) {
	n.rmu.Lock()
	defer n.rmu.Unlock()
	if n.rerr != nil {
		return nil, n.rerr
	}
	if err := ctx.Err(); err != nil {
		return nil, n.ioErr(ctx, err, false)
	}
	defer watch(ctx, n.c.SetReadDeadline)()
	var hdr [4]byte
	if k, err := io.ReadFull(n.c, hdr[:]); err != nil {
		n.rerr = n.ioErr(ctx, err, k > 0)
		return nil, n.rerr
	}
	size := binary.BigEndian.Uint32(hdr[:])
	if uint64(size) > uint64(n.max) {
		n.rerr = reason.New(reason.OversizedFrame, "the peer announced a frame of %d bytes, the limit is %d", size, n.max)
		n.c.Close()
		return nil, n.rerr
	}
	if size == 0 {
		n.rerr = reason.New(reason.Malformed, "empty frame")
		n.c.Close()
		return nil, n.rerr
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(n.c, buf); err != nil {
		n.rerr = n.ioErr(ctx, err, true)
		return nil, n.rerr
	}
	return buf, nil
}

// WriteFrame writes one frame. A frame over the limit is refused before anything is written.
func (n *NetConn) WriteFrame(ctx context.Context, frame []byte) error {
	if len(frame) > n.max {
		return reason.New(reason.OversizedFrame, "frame of %d bytes exceeds the limit of %d", len(frame), n.max)
	}
	if len(frame) == 0 {
		return reason.New(reason.Malformed, "empty frame")
	}
	n.wmu.Lock()
	defer n.wmu.Unlock()
	if err := ctx.Err(); err != nil {
		return n.ioErr(ctx, err, false)
	}
	defer watch(ctx, n.c.SetWriteDeadline)()
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(frame)))
	bufs := net.Buffers{hdr[:], frame}
	if _, err := bufs.WriteTo(n.c); err != nil {
		return n.ioErr(ctx, err, false)
	}
	return nil
}

// Close closes the connection.
func (n *NetConn) Close() error { return n.c.Close() }
