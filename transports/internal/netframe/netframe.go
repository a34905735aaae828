// Package netframe turns an authenticated byte stream (a TLS connection, a libp2p stream) into a
// plugin.Conn with length-prefixed frames (transports.WriteFrame / ReadFrame).
package netframe

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/custos-agent/custos/transports"
)

// Stream is a byte stream with deadlines.
type Stream interface {
	io.ReadWriteCloser
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// Conn is a frame connection over a Stream.
//
// It keeps no buffer while idle (issue 19: an agent holds thousands of idle sessions). Frames are read
// from the stream itself, which buffers what it decrypted (a TLS record, a yamux window); only a
// protocol that reads a preamble first (Reader) gets a read buffer, dropped once it is drained. Writes go
// through a write buffer taken from a pool for the write and given back once flushed.
type Conn struct {
	s       Stream
	br      *bufio.Reader // nil unless Reader was called and bytes are still buffered in it
	wmu     sync.Mutex
	bw      *bufio.Writer // guarded by wmu; nil when nothing is buffered
	remote  string
	binding []byte
	key     ed25519.PublicKey
	once    sync.Once
}

// writeBufferSize is the size of the pooled write buffers.
const writeBufferSize = 64 << 10

var writeBuffers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBufferSize) }}

// New wraps s; remote, binding and key describe the authenticated peer.
func New(s Stream, remote string, binding []byte, key ed25519.PublicKey) *Conn {
	return &Conn{s: s, remote: remote, binding: binding, key: key}
}

// src is where the next bytes come from: the preamble's read buffer while it holds bytes, else the
// stream (one reader at a time).
func (c *Conn) src() io.Reader {
	if c.br != nil {
		if c.br.Buffered() > 0 {
			return c.br
		}
		c.br = nil
	}
	return c.s
}

// writer is the write buffer (wmu held), taken from the pool when there is none.
func (c *Conn) writer() *bufio.Writer {
	if c.bw == nil {
		c.bw = writeBuffers.Get().(*bufio.Writer)
		c.bw.Reset(c.s)
	}
	return c.bw
}

// release gives the write buffer back once nothing is buffered in it (wmu held). After a failed write
// the buffer keeps its error: it is dropped, not pooled.
func (c *Conn) release(err error) {
	if c.bw == nil || c.bw.Buffered() > 0 && err == nil {
		return
	}
	if err == nil {
		c.bw.Reset(nil)
		writeBuffers.Put(c.bw)
	}
	c.bw = nil
}

// SetPeerBinding records the peer binding when a protocol learns it from a preamble on the connection
// itself (before the connection is shared).
func (c *Conn) SetPeerBinding(b []byte) { c.binding = b }

// Reader exposes a buffered reader (for protocols that read a preamble first, before frames are read).
func (c *Conn) Reader() *bufio.Reader {
	if c.br == nil {
		c.br = bufio.NewReaderSize(c.s, 4<<10)
	}
	return c.br
}

var past = time.Unix(1, 0)

// ReadFrame reads one frame; ctx cancellation interrupts the read (and leaves the connection unusable).
func (c *Conn) ReadFrame(ctx context.Context) ([]byte, error) {
	stop := context.AfterFunc(ctx, func() { _ = c.s.SetReadDeadline(past) })
	defer stop()
	f, err := transports.ReadFrame(c.src())
	if err != nil && ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, ctx.Err()
	}
	return f, err
}

// ReadFrameInto is ReadFrame reading into buf when it is large enough (the result then aliases buf): for
// a pump that hands each frame on before it reads the next, so that no frame is allocated.
func (c *Conn) ReadFrameInto(ctx context.Context, buf []byte) ([]byte, error) {
	stop := context.AfterFunc(ctx, func() { _ = c.s.SetReadDeadline(past) })
	defer stop()
	var hdr [4]byte
	if _, err := io.ReadFull(c.src(), hdr[:]); err != nil {
		if ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, ctx.Err()
		}
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > transports.MaxFrameSize {
		return nil, fmt.Errorf("peer announced a frame of %d bytes: %w (limit %d)", n, transports.ErrFrameTooLarge, transports.MaxFrameSize)
	}
	if uint32(cap(buf)) >= n {
		buf = buf[:n]
	} else {
		buf = make([]byte, n)
	}
	if _, err := io.ReadFull(c.src(), buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return buf, nil
}

// WriteFrame writes one frame; ctx cancellation interrupts the write.
func (c *Conn) WriteFrame(ctx context.Context, frame []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	stop := context.AfterFunc(ctx, func() { _ = c.s.SetWriteDeadline(past) })
	defer stop()
	err := transports.WriteFrame(c.writer(), frame)
	c.release(err)
	if err != nil && ctx.Err() != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return ctx.Err()
	}
	return err
}

// WriteFrameBuffered writes one frame into the write buffer without flushing it, unless the buffer fills
// up; Flush sends what is buffered. Writers use it while more frames are known to follow.
func (c *Conn) WriteFrameBuffered(ctx context.Context, frame []byte) error {
	if len(frame) > transports.MaxFrameSize {
		return fmt.Errorf("write frame of %d bytes: %w", len(frame), transports.ErrFrameTooLarge)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	stop := context.AfterFunc(ctx, func() { _ = c.s.SetWriteDeadline(past) })
	defer stop()
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(frame)))
	bw := c.writer()
	_, err := bw.Write(hdr[:])
	if err == nil {
		_, err = bw.Write(frame)
	}
	c.release(err)
	return err
}

// Flush sends buffered frames.
func (c *Conn) Flush(ctx context.Context) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	stop := context.AfterFunc(ctx, func() { _ = c.s.SetWriteDeadline(past) })
	defer stop()
	if c.bw == nil {
		return nil
	}
	err := c.bw.Flush()
	c.release(err)
	return err
}

// Close closes the stream.
func (c *Conn) Close() error {
	var err error
	c.once.Do(func() { err = c.s.Close() })
	return err
}

// RemoteAddr implements plugin.Conn.
func (c *Conn) RemoteAddr() string { return c.remote }

// PeerBinding implements plugin.Conn.
func (c *Conn) PeerBinding() []byte { return c.binding }

// PeerKey implements plugin.Conn.
func (c *Conn) PeerKey() ed25519.PublicKey { return c.key }
