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
type Conn struct {
	s       Stream
	br      *bufio.Reader
	wmu     sync.Mutex
	bw      *bufio.Writer
	remote  string
	binding []byte
	key     ed25519.PublicKey
	once    sync.Once
}

// New wraps s; remote, binding and key describe the authenticated peer.
func New(s Stream, remote string, binding []byte, key ed25519.PublicKey) *Conn {
	return &Conn{s: s, br: bufio.NewReaderSize(s, 64<<10), bw: bufio.NewWriterSize(s, 64<<10),
		remote: remote, binding: binding, key: key}
}

// SetPeerBinding records the peer binding when a protocol learns it from a preamble on the connection
// itself (before the connection is shared).
func (c *Conn) SetPeerBinding(b []byte) { c.binding = b }

// Reader exposes the buffered reader (for protocols that read a preamble first).
func (c *Conn) Reader() *bufio.Reader { return c.br }

var past = time.Unix(1, 0)

// ReadFrame reads one frame; ctx cancellation interrupts the read (and leaves the connection unusable).
func (c *Conn) ReadFrame(ctx context.Context) ([]byte, error) {
	stop := context.AfterFunc(ctx, func() { _ = c.s.SetReadDeadline(past) })
	defer stop()
	f, err := transports.ReadFrame(c.br)
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
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
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
	if _, err := io.ReadFull(c.br, buf); err != nil {
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
	err := transports.WriteFrame(c.bw, frame)
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
	if _, err := c.bw.Write(hdr[:]); err != nil {
		return err
	}
	_, err := c.bw.Write(frame)
	return err
}

// Flush sends buffered frames.
func (c *Conn) Flush(ctx context.Context) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	stop := context.AfterFunc(ctx, func() { _ = c.s.SetWriteDeadline(past) })
	defer stop()
	return c.bw.Flush()
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
