// Package session runs the agent protocol over a connection: the authentication handshake (agent/handshake
// messages), then a session in which signed, encrypted envelopes flow both ways under per-direction
// AES-256-GCM keys with strict counters, and periodic re-authentication (a fresh handshake, new keys)
// inside the running session. It is transport-agnostic: a connection is a FrameConn.
package session

import "context"

// FrameConn is a connection that carries whole frames (the contract with transports). ReadFrame returns
// the next frame in a new buffer the caller then owns (the session decrypts in place); WriteFrame sends
// one frame; both honour ctx (deadline and cancellation). One reader and any number of writers may use it concurrently.
type FrameConn interface {
	ReadFrame(ctx context.Context) ([]byte, error)
	WriteFrame(ctx context.Context, frame []byte) error
	Close() error
}
