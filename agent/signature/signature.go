// Package signature defines exactly what Custos signs: every signature input starts with a
// domain-separation context "custos/v1/<purpose>\x00", followed by a deterministic, length-prefixed
// encoding of the fields. A signature made for one purpose can therefore never verify as another.
package signature

import (
	"context"
	"encoding/binary"
	"fmt"

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

// Prefix returns the context bytes "custos/v1/<purpose>\x00".
func (p Purpose) Prefix() []byte { return []byte("custos/v1/" + string(p) + "\x00") }

// Input builds a signature input: the purpose's prefix, then each field as a 4-byte big-endian length and
// its bytes (integers as 8-byte big-endian values, themselves length-prefixed). The zero Input is not
// usable; start with NewInput.
type Input struct{ buf []byte }

// NewInput starts an input for purpose p.
func NewInput(p Purpose) *Input { return &Input{buf: p.Prefix()} }

// Bytes appends a length-prefixed byte field.
func (in *Input) Bytes(b []byte) *Input {
	in.buf = binary.BigEndian.AppendUint32(in.buf, uint32(len(b)))
	in.buf = append(in.buf, b...)
	return in
}

// String appends a length-prefixed string field.
func (in *Input) String(s string) *Input { return in.Bytes([]byte(s)) }

// Uint64 appends an 8-byte big-endian integer field (length-prefixed like every field).
func (in *Input) Uint64(v uint64) *Input {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return in.Bytes(b[:])
}

// Int64 appends a signed integer as its two's-complement uint64.
func (in *Input) Int64(v int64) *Input { return in.Uint64(uint64(v)) }

// Message returns the complete bytes to be signed.
func (in *Input) Message() []byte { return in.buf }

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
