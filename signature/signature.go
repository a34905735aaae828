// Package signature defines exactly what Custos signs: every signature input starts with a
// domain-separation context "custos/v1/<purpose>\x00", followed by a deterministic, length-prefixed
// encoding of the fields. A signature made for one purpose can therefore never verify as another.
package signature

import (
	"context"
	"fmt"

	"github.com/custos-agent/custos/internal/wire"
	"github.com/custos-agent/custos/keystore"
)

// Purpose is the domain-separation label of a signature.
type Purpose string

// Every purpose Custos signs for. docs/protocol.md lists them with their field layouts.
const (
	UserData         Purpose = "user-data"
	KeyEvent         Purpose = "key-event"
	Delegation       Purpose = "delegation"
	Handshake        Purpose = "handshake"
	Envelope         Purpose = "envelope"
	TransportBinding Purpose = "transport-binding"
	AuditCheckpoint  Purpose = "audit-checkpoint"
	Grant            Purpose = "grant"
	Feedback         Purpose = "feedback"
	StakeTable       Purpose = "stake-table"
)

// TransportKeyProof: a transport plugin proves possession of its own (ephemeral) transport key to its host
// by signing the host's nonce (transports/host). Fields: transport name, nonce, raw public key.
const TransportKeyProof Purpose = "transport-key-proof"

// GrantRevocation: a system administrator revokes a role grant (agent/rbac). Fields: version, grant ID,
// issuer agent ID, issue time. A separate purpose so that a grant signature can never pass as a revocation.
const GrantRevocation Purpose = "grant-revocation"

// BlockNotice: a system administrator blocks an agent network-wide until a time, or lifts such a block
// (agent/rbac, ADR 0101). Fields: version, action, blocked agent ID, issuer agent ID, issue time, until,
// reason, issuer generation, head. Context "custos/v1/block".
const BlockNotice Purpose = "block"

// Prefix returns the context bytes "custos/v1/<purpose>\x00".
func (p Purpose) Prefix() []byte { return []byte("custos/v1/" + string(p) + "\x00") }

// Input builds a signature input: the purpose's prefix, then each field as a 4-byte big-endian length and
// its bytes (integers as 8-byte big-endian values, themselves length-prefixed). It is the agent's one
// length-prefixed writer (wire.Writer) started with the context prefix, so a message's signed bytes are
// its wire fields after that prefix. The zero Input is not usable; start with NewInput.
type Input = wire.Writer

// NewInput starts an input for purpose p.
func NewInput(p Purpose) *Input {
	prefix := p.Prefix()
	return wire.NewWriter(len(prefix) + 256).Raw(prefix...)
}

// Sign signs msg under purpose p with s.
func Sign(ctx context.Context, s keystore.Signer, p Purpose, msg []byte) ([]byte, error) {
	return s.Sign(ctx, append(p.Prefix(), msg...))
}

// SignInput signs a built input with s.
func SignInput(ctx context.Context, s keystore.Signer, in *Input) ([]byte, error) {
	return s.Sign(ctx, in.Message())
}

// Verify checks sig over msg under purpose p with pub. It returns an error wrapping
// keystore.ErrBadSignature when the signature does not verify.
func Verify(pub keystore.PublicKey, p Purpose, msg, sig []byte) error {
	if err := pub.Verify(append(p.Prefix(), msg...), sig); err != nil {
		return fmt.Errorf("%s signature: %w", p, err)
	}
	return nil
}

// VerifyInput checks sig over a built input.
func VerifyInput(pub keystore.PublicKey, in *Input, sig []byte) error {
	return pub.Verify(in.Message(), sig)
}

// AgentRecord: an agent announces where it listens (agent/discovery, ADR 0070): agent ID, key event log
// head, libp2p peer ID, addresses, sequence and expiry, signed by its operational key.
const AgentRecord Purpose = "agent-record"
