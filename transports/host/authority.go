package host

import (
	"context"
	"crypto/ed25519"
	"errors"
	"time"
)

// BindingAuthority signs and verifies transport bindings on the host. The host asks it to Bind only keys
// whose possession a plugin has just proven, and asks it to Verify every binding a peer presents before a
// connection reaches its owner. The production implementation (signed by the operational key, verified
// through the delegation and the key event log) is agent/bindauth; tests use hosttest.IdentityAuthority,
// which signs with the identity key.
type BindingAuthority interface {
	// Bind returns an encoded binding (transports/binding) of key to this agent on transport, and its expiry.
	Bind(ctx context.Context, transport string, key ed25519.PublicKey) (binding []byte, notAfter time.Time, err error)
	// Verify checks that binding is valid now, is for transport, names key, and returns the agent ID it
	// binds the key to. Errors wrap ErrBadBinding.
	Verify(ctx context.Context, transport string, binding []byte, key ed25519.PublicKey) (agentID string, err error)
}

// ErrBadBinding: a transport binding is malformed, expired, for another key or transport, or its proof
// does not verify.
var ErrBadBinding = errors.New("invalid transport binding")

// MaxBindingTTL is the longest binding lifetime an authority signs or accepts.
const MaxBindingTTL = 24 * time.Hour
