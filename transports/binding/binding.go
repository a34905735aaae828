// Package binding is the transport binding: a statement, signed by an agent (through its host), that a
// transport key (a plugin's ephemeral Ed25519 key) speaks for that agent on one transport until an expiry.
//
// Transports carry the binding to the peer (TLS certificate extension, first libp2p frame) and check only
// its structure and that it names the key the transport handshake authenticated. Its proof (the signature
// and whatever chain an authority needs) is opaque here and verified only on the host by a
// host.BindingAuthority.
//
// Encoding (all integers big-endian): the 4-byte magic "CTB1", then five fields, each a 4-byte length and
// its bytes: transport name, the 32-byte Ed25519 key, the agent ID, the expiry (8-byte Unix seconds), the
// proof. Decoding is strict: exact field count and sizes, no trailing bytes.
package binding

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/custos-agent/custos/signature"
	"github.com/custos-agent/custos/transports"
)

// Magic starts every encoded binding.
const Magic = "CTB1"

// MaxProofSize bounds the proof inside a binding.
const MaxProofSize = transports.MaxBindingSize - 512

// ErrMalformed: the bytes are not a well-formed binding.
var ErrMalformed = errors.New("malformed transport binding")

// Binding binds Key to AgentID on Transport until NotAfter.
type Binding struct {
	Transport string
	Key       ed25519.PublicKey
	AgentID   string
	NotAfter  time.Time // whole seconds
	Proof     []byte    // authority-specific (e.g. a signature); opaque to transports
}

// SigningInput is what an authority signs: "custos/v1/transport-binding\x00" then transport, key, agent ID
// and expiry (Unix seconds), length-prefixed. The proof is not part of it.
func (b Binding) SigningInput() []byte {
	return signature.NewInput(signature.TransportBinding).
		String(b.Transport).Bytes(b.Key).String(b.AgentID).Int64(b.NotAfter.Unix()).Message()
}

// Encode returns the wire form.
func (b Binding) Encode() []byte {
	var out []byte
	out = append(out, Magic...)
	field := func(p []byte) {
		out = binary.BigEndian.AppendUint32(out, uint32(len(p)))
		out = append(out, p...)
	}
	field([]byte(b.Transport))
	field(b.Key)
	field([]byte(b.AgentID))
	field(binary.BigEndian.AppendUint64(nil, uint64(b.NotAfter.Unix())))
	field(b.Proof)
	return out
}

// Decode parses the wire form strictly. The proof is not checked.
func Decode(raw []byte) (Binding, error) {
	bad := func(format string, args ...any) (Binding, error) {
		return Binding{}, fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
	}
	if len(raw) > transports.MaxBindingSize {
		return bad("%d bytes (limit %d)", len(raw), transports.MaxBindingSize)
	}
	if !bytes.HasPrefix(raw, []byte(Magic)) {
		return bad("does not start with %q", Magic)
	}
	rest := raw[len(Magic):]
	var fields [5][]byte
	for i := range fields {
		if len(rest) < 4 {
			return bad("truncated before field %d", i+1)
		}
		n := binary.BigEndian.Uint32(rest)
		rest = rest[4:]
		if uint64(n) > uint64(len(rest)) {
			return bad("field %d claims %d bytes, %d remain", i+1, n, len(rest))
		}
		fields[i], rest = rest[:n], rest[n:]
	}
	if len(rest) != 0 {
		return bad("%d trailing bytes", len(rest))
	}
	b := Binding{Transport: string(fields[0]), AgentID: string(fields[2])}
	if !transports.ValidName(b.Transport) {
		return bad("transport name %q is not 1-32 of [a-z0-9-]", b.Transport)
	}
	if len(fields[1]) != ed25519.PublicKeySize {
		return bad("key is %d bytes, want %d (Ed25519)", len(fields[1]), ed25519.PublicKeySize)
	}
	b.Key = append(ed25519.PublicKey(nil), fields[1]...)
	if err := transports.CheckText("agent ID", b.AgentID, 256); err != nil {
		return bad("%v", err)
	}
	if len(fields[3]) != 8 {
		return bad("expiry is %d bytes, want 8", len(fields[3]))
	}
	exp := int64(binary.BigEndian.Uint64(fields[3]))
	if exp <= 0 {
		return bad("expiry %d is not a positive Unix time", exp)
	}
	b.NotAfter = time.Unix(exp, 0).UTC()
	if len(fields[4]) == 0 || len(fields[4]) > MaxProofSize {
		return bad("proof is %d bytes (want 1 to %d)", len(fields[4]), MaxProofSize)
	}
	b.Proof = append([]byte(nil), fields[4]...)
	return b, nil
}

// CheckFor decodes raw and checks that it names transport and key: what a transport does with the binding
// a peer presents (the proof is verified later, by the host).
func CheckFor(raw []byte, transport string, key ed25519.PublicKey) (Binding, error) {
	b, err := Decode(raw)
	if err != nil {
		return Binding{}, err
	}
	if b.Transport != transport {
		return Binding{}, fmt.Errorf("binding is for transport %q, not %q", b.Transport, transport)
	}
	if !b.Key.Equal(key) {
		return Binding{}, fmt.Errorf("binding names another key than the one the %s handshake authenticated", transport)
	}
	return b, nil
}
