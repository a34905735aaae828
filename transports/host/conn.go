package host

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"sync"
	"time"

	"github.com/custos-agent/custos/transports"
)

// Conn is a frame connection through a transport plugin to a peer whose binding the host verified.
// ReadFrame and WriteFrame may be called concurrently with each other (one reader, one writer).
type Conn struct {
	inst      *instance
	transport string
	remote    string
	binding   []byte
	key       ed25519.PublicKey
	agentID   string
	fc        frameConn // a gRPC stream with credit (flow.Conn) or a data socket (sockConn)
	cancel    func()
	closeOnce sync.Once
}

// ReadFrame returns the next frame from the peer; io.EOF once the peer closed cleanly.
func (c *Conn) ReadFrame(ctx context.Context) ([]byte, error) { return c.fc.ReadFrame(ctx) }

// WriteFrame sends one frame (at most transports.MaxFrameSize bytes), waiting while the peer is slow
// (back-pressure) until ctx is done.
func (c *Conn) WriteFrame(ctx context.Context, frame []byte) error {
	if len(frame) > transports.MaxFrameSize {
		return fmt.Errorf("write frame of %d bytes: %w (limit %d)", len(frame), transports.ErrFrameTooLarge, transports.MaxFrameSize)
	}
	return c.fc.WriteFrame(ctx, frame)
}

// closeGrace is how long a closed connection's stream may take to deliver what was already written.
const closeGrace = 10 * time.Second

// Close closes the connection. Frames already written are still delivered; then the plugin closes the
// network side. Pending and later ReadFrame/WriteFrame calls return transports.ErrClosed.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		_ = c.fc.Close()
		go func() {
			select {
			case <-c.fc.Done():
			case <-time.After(closeGrace):
			}
			c.cancel()
		}()
	})
	return nil
}

// Transport is the transport name ("tcp", "ws", "libp2p").
func (c *Conn) Transport() string { return c.transport }

// RemoteAddr is the peer's network address as the plugin reported it (validated for shape).
func (c *Conn) RemoteAddr() string { return c.remote }

// PeerBinding is the peer's transport binding bytes (verified by the host's BindingAuthority).
func (c *Conn) PeerBinding() []byte { return append([]byte(nil), c.binding...) }

// PeerKey is the peer's transport key the binding names.
func (c *Conn) PeerKey() ed25519.PublicKey { return append(ed25519.PublicKey(nil), c.key...) }

// PeerAgentID is the agent ID the verified binding binds the peer's transport key to. The agent
// handshake authenticates the peer end to end; this is the transport-level pin.
func (c *Conn) PeerAgentID() string { return c.agentID }

// Done is closed when the connection has ended (either side, or the plugin died).
func (c *Conn) Done() <-chan struct{} { return c.fc.Done() }
