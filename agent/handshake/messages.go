// Package handshake defines the messages of the agent authentication handshake (DESIGN 4.1; the seed's
// request -> challenge -> signed response -> verify -> established), their strict binary encodings, the
// transcript hashes and signature inputs, and the session key schedule. The state machine that runs the
// handshake over a connection is in agent/session.
//
// The handshake is SIGMA-style: both sides send ephemeral X25519 keys (and, when the initiator offers it,
// an ML-KEM-768 encapsulation), each signs a hash of the whole transcript so far with its operational key
// (certified by a delegation, itself checked against the signer's key event log), and the session keys
// come from HKDF-SHA256 over the ephemeral shared secret(s) with the transcript hash as salt.
package handshake

import (
	"encoding/binary"

	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/internal/wire"
	"github.com/custos-agent/custos/reason"
)

// Frame types: the first byte of every frame on a connection.
const (
	FrameHello       byte = 0x01
	FrameChallenge   byte = 0x02
	FrameResponse    byte = 0x03
	FrameEstablished byte = 0x04
	FrameAlert       byte = 0x05
	FrameEnvelope    byte = 0x10
	FrameRecord      byte = 0x11
)

// ProtocolVersion is the handshake version this package implements.
const ProtocolVersion uint16 = 1

// Limits.
const (
	NonceSize     = 32
	HeadSize      = 32
	SessionIDSize = 16
	MaxVersions   = 16
	MaxLogBytes   = 1 << 20 // an inline key event log
	MaxPuzzle     = 1024
	MaxSolution   = 1024
	MaxGrants     = 64 << 10
	MaxAlert      = 256
	maxIDLen      = 128
	maxDelegation = 4096
	maxSig        = 128
	// MaxMessage bounds any handshake frame.
	MaxMessage = 1 + MaxLogBytes + MaxGrants + 32<<10
)

// Head names a point in a key event log: its generation and the digest of its last event.
type Head struct {
	Generation uint64
	Digest     []byte // 32 bytes, or empty for "none known"
}

// Known reports whether h names a head (rather than "nothing cached").
func (h Head) Known() bool { return len(h.Digest) == HeadSize }

// Equal compares heads.
func (h Head) Equal(o Head) bool {
	return h.Generation == o.Generation && string(h.Digest) == string(o.Digest)
}

// Hello is the initiator's first message.
type Hello struct {
	Versions    []uint16 // supported versions, strictly descending
	InitiatorID string
	ResponderID string // whom the initiator means to reach ("" when it does not know)
	Head        Head   // the initiator's own key event log head
	PeerHead    Head   // what the initiator has cached of the responder's log (empty Digest: nothing)
	Delegation  []byte // the initiator's encoded delegation
	X25519      []byte // ephemeral public key (32 bytes)
	MLKEM       []byte // ephemeral ML-KEM-768 encapsulation key (1184 bytes), or empty
	Nonce       []byte // 32 random bytes
	Timestamp   int64  // Unix seconds
}

// Challenge is the responder's answer, signed over the transcript so far.
type Challenge struct {
	Version     uint16 // the version chosen from Hello.Versions
	HelloHash   []byte // SHA-256 of the hello frame as the responder received it
	ResponderID string
	Head        Head
	WantLog     bool   // the responder needs the initiator's key event log in the response
	Log         []byte // the responder's key event log (JSON lines) when Hello.PeerHead is not its head
	Delegation  []byte
	X25519      []byte
	MLKEMCipher []byte // ML-KEM-768 ciphertext (1088 bytes) iff Hello.MLKEM was sent
	Nonce       []byte
	Timestamp   int64
	Puzzle      []byte // opaque admission puzzle (empty: none)
	Signature   []byte // responder's operational key over ChallengeSigningInput
}

// Response is the initiator's signed answer.
type Response struct {
	TranscriptHash []byte // SHA-256 transcript of hello and challenge as the initiator saw them
	Log            []byte // the initiator's key event log when Challenge.WantLog
	Solution       []byte // opaque puzzle solution
	Grants         []byte // opaque role grants
	Signature      []byte // initiator's operational key over ResponseSigningInput
}

// Established is the responder's key confirmation, sent sealed under the new responder-to-initiator key.
type Established struct {
	SessionID []byte // 16 bytes from the key schedule
	Reauth    uint64 // seconds until the initiator must re-authenticate
	Expires   int64  // Unix seconds after which the session is closed unless re-authenticated
}

func writeHead(w *wire.Writer, h Head) { w.Uint64(h.Generation).Bytes(h.Digest) }

func readHead(r *wire.Reader, name string, required bool) Head {
	h := Head{Generation: r.Uint64(name + "_generation"), Digest: r.Bytes(name+"_head", HeadSize)}
	if r.Err() == nil && len(h.Digest) != HeadSize && (required || len(h.Digest) != 0) {
		r.Failf(reason.Malformed, name+"_head", "must be %d bytes (or empty when unknown), has %d", HeadSize, len(h.Digest))
	}
	if r.Err() == nil && len(h.Digest) == 0 && h.Generation != 0 {
		r.Failf(reason.Malformed, name+"_generation", "must be 0 when the head is empty")
	}
	return h
}

func encodeVersions(vs []uint16) []byte {
	b := make([]byte, 0, 2*len(vs))
	for _, v := range vs {
		b = binary.BigEndian.AppendUint16(b, v)
	}
	return b
}

// Encode is the hello frame (type byte included).
func (h *Hello) Encode() []byte {
	w := wire.NewWriter(512 + len(h.Delegation) + len(h.MLKEM)).Raw(FrameHello)
	w.Bytes(encodeVersions(h.Versions)).String(h.InitiatorID).String(h.ResponderID)
	writeHead(w, h.Head)
	writeHead(w, h.PeerHead)
	return w.Bytes(h.Delegation).Bytes(h.X25519).Bytes(h.MLKEM).Bytes(h.Nonce).Int64(h.Timestamp).Out()
}

// DecodeHello strictly decodes a hello frame. The version list is read first: when it has no version in
// common with supported, the error is unknown_version whatever follows.
func DecodeHello(b []byte, supported []uint16) (*Hello, error) {
	if len(b) == 0 || b[0] != FrameHello {
		return nil, reason.New(reason.UnexpectedMessage, "expected a hello frame")
	}
	if len(b) > MaxMessage {
		return nil, reason.New(reason.OversizedFrame, "hello of %d bytes exceeds %d", len(b), MaxMessage)
	}
	r := wire.NewReader("hello", b[1:])
	h := &Hello{}
	vb := r.Bytes("versions", 2*MaxVersions)
	if r.Err() == nil {
		if len(vb) == 0 || len(vb)%2 != 0 {
			r.Failf(reason.Malformed, "versions", "must be 1 to %d big-endian uint16 values", MaxVersions)
		}
		for i := 0; i+1 < len(vb); i += 2 {
			v := binary.BigEndian.Uint16(vb[i:])
			if v == 0 || (len(h.Versions) > 0 && v >= h.Versions[len(h.Versions)-1]) {
				r.Failf(reason.Malformed, "versions", "must be non-zero and strictly descending")
				break
			}
			h.Versions = append(h.Versions, v)
		}
	}
	if r.Err() != nil {
		return nil, r.Err()
	}
	if _, ok := Negotiate(h.Versions, supported); !ok {
		return nil, reason.New(reason.UnknownVersion, "the initiator offers protocol versions %v, this agent speaks %v", h.Versions, supported)
	}
	h.InitiatorID = r.String("initiator_id", maxIDLen)
	h.ResponderID = r.String("responder_id", maxIDLen)
	h.Head = readHead(r, "kel", true)
	h.PeerHead = readHead(r, "peer", false)
	h.Delegation = r.Bytes("delegation", maxDelegation)
	h.X25519 = r.Fixed("x25519", suite.X25519Size)
	h.MLKEM = r.Bytes("mlkem", suite.MLKEMEncapsSize)
	if r.Err() == nil && len(h.MLKEM) != 0 && len(h.MLKEM) != suite.MLKEMEncapsSize {
		r.Failf(reason.Malformed, "mlkem", "must be empty or %d bytes", suite.MLKEMEncapsSize)
	}
	h.Nonce = r.Fixed("nonce", NonceSize)
	h.Timestamp = r.Int64("timestamp")
	if err := r.End(); err != nil {
		return nil, err
	}
	if h.InitiatorID == "" {
		return nil, reason.New(reason.Malformed, "hello: initiator_id is empty")
	}
	return h, nil
}

// Negotiate picks the highest version in both lists.
func Negotiate(offered, supported []uint16) (uint16, bool) {
	var best uint16
	for _, o := range offered {
		for _, s := range supported {
			if o == s && o > best {
				best = o
			}
		}
	}
	return best, best != 0
}

func (c *Challenge) unsigned(w *wire.Writer) *wire.Writer {
	w.Raw(FrameChallenge).Uint64(uint64(c.Version)).Bytes(c.HelloHash).String(c.ResponderID)
	writeHead(w, c.Head)
	return w.Bool(c.WantLog).Bytes(c.Log).Bytes(c.Delegation).Bytes(c.X25519).Bytes(c.MLKEMCipher).
		Bytes(c.Nonce).Int64(c.Timestamp).Bytes(c.Puzzle)
}

// EncodeUnsigned is the challenge frame without its signature field (what the transcript covers).
func (c *Challenge) EncodeUnsigned() []byte {
	return c.unsigned(wire.NewWriter(512 + len(c.Log) + len(c.Delegation) + len(c.MLKEMCipher))).Out()
}

// Encode is the challenge frame.
func (c *Challenge) Encode() []byte {
	return c.unsigned(wire.NewWriter(600 + len(c.Log) + len(c.Delegation) + len(c.MLKEMCipher))).Bytes(c.Signature).Out()
}

// DecodeChallenge strictly decodes a challenge frame.
func DecodeChallenge(b []byte) (*Challenge, error) {
	if len(b) == 0 || b[0] != FrameChallenge {
		return nil, reason.New(reason.UnexpectedMessage, "expected a challenge frame")
	}
	if len(b) > MaxMessage {
		return nil, reason.New(reason.OversizedFrame, "challenge of %d bytes exceeds %d", len(b), MaxMessage)
	}
	r := wire.NewReader("challenge", b[1:])
	c := &Challenge{}
	v := r.Uint64("version")
	if r.Err() == nil && (v == 0 || v > 0xffff) {
		r.Failf(reason.UnknownVersion, "version", "%d is not a protocol version", v)
	}
	c.Version = uint16(v)
	c.HelloHash = r.Fixed("hello_hash", 32)
	c.ResponderID = r.String("responder_id", maxIDLen)
	c.Head = readHead(r, "kel", true)
	c.WantLog = r.Bool("want_log")
	c.Log = r.Bytes("log", MaxLogBytes)
	c.Delegation = r.Bytes("delegation", maxDelegation)
	c.X25519 = r.Fixed("x25519", suite.X25519Size)
	c.MLKEMCipher = r.Bytes("mlkem_ciphertext", suite.MLKEMCipherSize)
	if r.Err() == nil && len(c.MLKEMCipher) != 0 && len(c.MLKEMCipher) != suite.MLKEMCipherSize {
		r.Failf(reason.Malformed, "mlkem_ciphertext", "must be empty or %d bytes", suite.MLKEMCipherSize)
	}
	c.Nonce = r.Fixed("nonce", NonceSize)
	c.Timestamp = r.Int64("timestamp")
	c.Puzzle = r.Bytes("puzzle", MaxPuzzle)
	c.Signature = r.Bytes("signature", maxSig)
	if err := r.End(); err != nil {
		return nil, err
	}
	if c.ResponderID == "" || len(c.Signature) == 0 {
		return nil, reason.New(reason.Malformed, "challenge: responder_id and signature are required")
	}
	return c, nil
}

func (p *Response) unsigned(w *wire.Writer) *wire.Writer {
	return w.Raw(FrameResponse).Bytes(p.TranscriptHash).Bytes(p.Log).Bytes(p.Solution).Bytes(p.Grants)
}

// EncodeUnsigned is the response frame without its signature field.
func (p *Response) EncodeUnsigned() []byte {
	return p.unsigned(wire.NewWriter(128 + len(p.Log) + len(p.Solution) + len(p.Grants))).Out()
}

// Encode is the response frame.
func (p *Response) Encode() []byte {
	return p.unsigned(wire.NewWriter(256 + len(p.Log) + len(p.Solution) + len(p.Grants))).Bytes(p.Signature).Out()
}

// DecodeResponse strictly decodes a response frame.
func DecodeResponse(b []byte) (*Response, error) {
	if len(b) == 0 || b[0] != FrameResponse {
		return nil, reason.New(reason.UnexpectedMessage, "expected a response frame")
	}
	if len(b) > MaxMessage {
		return nil, reason.New(reason.OversizedFrame, "response of %d bytes exceeds %d", len(b), MaxMessage)
	}
	r := wire.NewReader("response", b[1:])
	p := &Response{
		TranscriptHash: r.Fixed("transcript_hash", 32),
		Log:            r.Bytes("log", MaxLogBytes),
		Solution:       r.Bytes("solution", MaxSolution),
		Grants:         r.Bytes("grants", MaxGrants),
		Signature:      r.Bytes("signature", maxSig),
	}
	if err := r.End(); err != nil {
		return nil, err
	}
	if len(p.Signature) == 0 {
		return nil, reason.New(reason.Malformed, "response: signature is required")
	}
	return p, nil
}

// Encode is the established plaintext (sealed by the session layer).
func (e *Established) Encode() []byte {
	return wire.NewWriter(64).Bytes(e.SessionID).Uint64(e.Reauth).Int64(e.Expires).Out()
}

// DecodeEstablished strictly decodes the established plaintext.
func DecodeEstablished(b []byte) (*Established, error) {
	r := wire.NewReader("established", b)
	e := &Established{SessionID: r.Fixed("session_id", SessionIDSize), Reauth: r.Uint64("reauth"), Expires: r.Int64("expires")}
	if err := r.End(); err != nil {
		return nil, err
	}
	return e, nil
}

// Alert is a failure report: the reason code of why the sender closes.
type Alert struct{ Code reason.Code }

// Encode is the alert body (without frame or record type).
func (a *Alert) Encode() []byte { return wire.NewWriter(64).String(string(a.Code)).Out() }

// DecodeAlert decodes an alert body. Unknown codes are kept as sent (they are information, not trusted).
func DecodeAlert(b []byte) (*Alert, error) {
	r := wire.NewReader("alert", b)
	a := &Alert{Code: reason.Code(r.String("code", MaxAlert))}
	if err := r.End(); err != nil {
		return nil, err
	}
	for _, c := range a.Code {
		if (c < 'a' || c > 'z') && c != '_' {
			return nil, reason.New(reason.Malformed, "alert code %q", a.Code)
		}
	}
	return a, nil
}
