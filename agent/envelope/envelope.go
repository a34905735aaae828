// Package envelope is the signed, encrypted message of the agent protocol (DESIGN 4.2, the seed's
// "Message Format"):
//
//	{"header": {"version", "timestamp", "sender_id", "recipient_id", "message_type", "message_id"},
//	 "payload": {"encrypted", "cipher", "data", "nonce"}, "signature"}
//
// The payload is AES-256-GCM under a session key (online), HPKE (RFC 9180) to the recipient's delegated
// encryption key (store-and-forward), or, when the content is meant as public evidence, not encrypted.
// The header is the AEAD's associated data. The signature, by the sender's operational key, covers a
// deterministic length-prefixed encoding of header and payload (the payload data through its SHA-256
// digest, ADR 0031) under the context "custos/v1/envelope", so a third peer holding the sender's key event
// log and delegation can check it. HPKE and unencrypted envelopes are always signed; a session envelope
// (AES-256-GCM under the session key) may carry no signature, its origin then resting on the session's
// keys alone (ADR 0032): it is authenticated to its recipient and proves nothing to anyone else.
//
// An envelope has two encodings carrying the same fields and the same signature: the canonical JSON form
// (what people and agentctl see) and the compact binary form (what agents exchange; ADR 0005). Both
// decoders are strict: size limits, no unknown fields, known version and message type only, and exactly
// one encoding per value (decode then encode gives back the input bytes).
package envelope

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/internal/wire"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/signature"
)

// Version is the only envelope version (the seed's "1.0").
const Version = "1.0"

// Size limits.
const (
	// MaxData bounds payload.data (ciphertext with tag, or plaintext for cipher "none").
	MaxData = 1 << 20
	// MaxBinary bounds the binary form.
	MaxBinary = MaxData + 8<<10
	// MaxJSON bounds the JSON form (base64 grows data by 4/3).
	MaxJSON = MaxData/3*4 + 16<<10
	// MessageIDSize is the size of a message ID before encoding (random bytes).
	MessageIDSize = 16
	maxIDLen      = 128
	maxNonce      = 2048
	maxSig        = 128
)

// MessageType is what a message is for (DESIGN 4.3).
type MessageType string

// The message types. Any other is refused.
const (
	TaskRequest   MessageType = "task_request"
	TaskResponse  MessageType = "task_response"
	TaskProgress  MessageType = "task_progress"
	TaskResult    MessageType = "task_result"
	ErrorResponse MessageType = "error_response"
	Heartbeat     MessageType = "heartbeat"
	Feedback      MessageType = "feedback"
	// Mailbox carries a stored store-and-forward envelope to its recipient (and is the type of that
	// envelope); MailboxAck answers it (agent/mailbox, ADR 0093).
	Mailbox    MessageType = "mailbox"
	MailboxAck MessageType = "mailbox_ack"
	// RevocationSync carries the catch-up of revocations between two agents when their session comes up:
	// an offer, a want or a batch (agent/discovery, ADR 0096).
	RevocationSync MessageType = "revocation_sync"
)

// MessageTypes lists every message type.
var MessageTypes = []MessageType{TaskRequest, TaskResponse, TaskProgress, TaskResult, ErrorResponse, Heartbeat, Feedback, Mailbox, MailboxAck, RevocationSync}

// Valid reports whether t is a defined message type.
func (t MessageType) Valid() bool {
	switch t {
	case TaskRequest, TaskResponse, TaskProgress, TaskResult, ErrorResponse, Heartbeat, Feedback, Mailbox, MailboxAck, RevocationSync:
		return true
	}
	return false
}

// Cipher names a payload protection.
type Cipher string

// The payload ciphers.
const (
	// AES256GCM: AES-256-GCM under the session key of the direction; nonce = 4-byte epoch || 8-byte counter.
	AES256GCM Cipher = "aes-256-gcm"
	// HPKEX25519: HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM; nonce = enc (32 bytes).
	HPKEX25519 Cipher = "hpke-x25519-aes-256-gcm"
	// HPKEXWing: HPKE base mode, MLKEM768-X25519, HKDF-SHA256, AES-256-GCM; nonce = enc (1120 bytes).
	HPKEXWing Cipher = "hpke-mlkem768x25519-aes-256-gcm"
	// None: not encrypted (signed public evidence); nonce empty, data is the plaintext.
	None Cipher = "none"
)

// HPKECipher is the cipher name of HPKE with KEM k.
func HPKECipher(k suite.KEM) Cipher {
	if k == suite.KEMXWing {
		return HPKEXWing
	}
	return HPKEX25519
}

// Header is the envelope header: the AEAD's associated data and signed.
type Header struct {
	Version     string      `json:"version"`
	Timestamp   int64       `json:"timestamp"` // Unix seconds
	SenderID    string      `json:"sender_id"`
	RecipientID string      `json:"recipient_id"`
	MessageType MessageType `json:"message_type"`
	MessageID   string      `json:"message_id"` // base64url (unpadded) of 16 random bytes
}

// Payload is the (encrypted) content.
type Payload struct {
	Encrypted bool   `json:"encrypted"`
	Cipher    Cipher `json:"cipher"`
	Data      B64    `json:"data"`
	Nonce     B64    `json:"nonce"`
}

// Envelope is one message.
type Envelope struct {
	Header    Header  `json:"header"`
	Payload   Payload `json:"payload"`
	Signature B64     `json:"signature"`
}

// b64 is the one base64 variant of the JSON form: URL-safe alphabet, no padding, strict (padding, the
// standard alphabet, line breaks and non-canonical trailing bits are refused).
var b64 = base64.RawURLEncoding.Strict()

// NewMessageID returns a fresh random message ID.
func NewMessageID() string {
	var b [MessageIDSize]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("envelope: no randomness: " + err.Error())
	}
	return b64.EncodeToString(b[:])
}

// NewHeader makes a version-1.0 header with a fresh message ID, stamped now.
func NewHeader(sender, recipient string, t MessageType, now time.Time) Header {
	return Header{Version: Version, Timestamp: now.Unix(), SenderID: sender, RecipientID: recipient, MessageType: t, MessageID: NewMessageID()}
}

func (h *Header) fields(w *wire.Writer) *wire.Writer {
	return w.String(h.Version).Int64(h.Timestamp).String(h.SenderID).String(h.RecipientID).
		String(string(h.MessageType)).String(h.MessageID)
}

// aadPrefix is the context of the associated data (not a signature purpose: AAD is never signed).
var aadPrefix = []byte("custos/v1/envelope-header\x00")

// AAD is the associated data of the payload encryption: "custos/v1/envelope-header\x00" then the header
// fields, length-prefixed.
func (h *Header) AAD() []byte { return h.fields(wire.NewWriter(256).Raw(aadPrefix...)).Out() }

func (e *Envelope) signed(w *wire.Writer) *wire.Writer {
	return e.Header.fields(w).Bool(e.Payload.Encrypted).String(string(e.Payload.Cipher)).
		Bytes(e.Payload.Nonce).Bytes(e.Payload.Data)
}

// SigningInput is the exact byte string the sender's operational key signs: "custos/v1/envelope\x00",
// then version, timestamp, sender_id, recipient_id, message_type, message_id, encrypted, cipher, nonce and
// the SHA-256 digest of data, each length-prefixed (integers as 8-byte big-endian values). The digest
// rather than data itself (ADR 0031): Ed25519 hashes what it signs twice with SHA-512 and once more to
// verify, which at 64 KiB cost more than everything else the agent does per message.
func (e *Envelope) SigningInput() []byte {
	d := sha256.Sum256(e.Payload.Data)
	return e.Header.fields(wire.NewWriter(len(e.Payload.Nonce) + 384).Raw(signature.Envelope.Prefix()...)).
		Bool(e.Payload.Encrypted).String(string(e.Payload.Cipher)).Bytes(e.Payload.Nonce).Bytes(d[:]).Out()
}

// EncodeBinary is the binary form: the fields in the order of the signing input, data itself in place
// of its digest, then the signature, each length-prefixed.
func (e *Envelope) EncodeBinary() []byte {
	return e.signed(wire.NewWriter(len(e.Payload.Data) + len(e.Payload.Nonce) + 256)).Bytes(e.Signature).Out()
}

// DecodeBinary strictly decodes the binary form. Data, Nonce and Signature alias b.
func DecodeBinary(b []byte) (*Envelope, error) {
	if len(b) > MaxBinary {
		return nil, reason.New(reason.OversizedFrame, "envelope of %d bytes exceeds %d", len(b), MaxBinary)
	}
	r := wire.NewReader("envelope", b)
	e := &Envelope{}
	h := &e.Header
	h.Version = r.String("version", 16)
	if r.Err() == nil && h.Version != Version {
		return nil, reason.New(reason.UnknownVersion, "envelope version %q (this agent speaks %q)", h.Version, Version)
	}
	h.Timestamp = r.Int64("timestamp")
	h.SenderID = r.String("sender_id", maxIDLen)
	h.RecipientID = r.String("recipient_id", maxIDLen)
	h.MessageType = MessageType(r.String("message_type", 32))
	h.MessageID = r.String("message_id", 32)
	e.Payload.Encrypted = r.Bool("encrypted")
	e.Payload.Cipher = Cipher(r.String("cipher", 64))
	e.Payload.Nonce = r.Bytes("nonce", maxNonce)
	e.Payload.Data = r.Bytes("data", MaxData)
	e.Signature = r.Bytes("signature", maxSig)
	if err := r.End(); err != nil {
		return nil, err
	}
	if err := e.check(); err != nil {
		return nil, err
	}
	return e, nil
}

// check validates field forms (everything decoders can check without keys or time).
func (e *Envelope) check() error {
	h := &e.Header
	if h.Version != Version {
		return reason.New(reason.UnknownVersion, "envelope version %q (this agent speaks %q)", h.Version, Version)
	}
	if !h.MessageType.Valid() {
		return reason.New(reason.UnknownMessageType, "message type %q (known: task_request, task_response, task_progress, task_result, error_response, heartbeat, feedback, mailbox, mailbox_ack)", h.MessageType)
	}
	bad := func(format string, args ...any) error {
		return reason.New(reason.Malformed, "envelope: "+format, args...)
	}
	if h.Timestamp <= 0 {
		return bad("timestamp %d is not a positive Unix time", h.Timestamp)
	}
	if err := checkID(h.SenderID); err != nil {
		return bad("sender_id: %v", err)
	}
	if err := checkID(h.RecipientID); err != nil {
		return bad("recipient_id: %v", err)
	}
	if id, err := b64.DecodeString(h.MessageID); err != nil || len(id) != MessageIDSize {
		return bad("message_id %q is not base64url of %d bytes", h.MessageID, MessageIDSize)
	}
	p := &e.Payload
	switch p.Cipher {
	case AES256GCM, HPKEX25519, HPKEXWing:
		if !p.Encrypted {
			return bad("cipher %s requires encrypted=true", p.Cipher)
		}
		want := suite.AEADNonceSize
		if p.Cipher == HPKEX25519 {
			want = suite.KEMX25519.EncapsulationSize()
		} else if p.Cipher == HPKEXWing {
			want = suite.KEMXWing.EncapsulationSize()
		}
		if len(p.Nonce) != want {
			return bad("cipher %s needs a %d-byte nonce, got %d", p.Cipher, want, len(p.Nonce))
		}
		if len(p.Data) < suite.AEADTagSize {
			return bad("ciphertext of %d bytes is shorter than the tag", len(p.Data))
		}
	case None:
		if p.Encrypted || len(p.Nonce) != 0 {
			return bad("cipher none requires encrypted=false and an empty nonce")
		}
	default:
		return bad("unknown cipher %q", p.Cipher)
	}
	if len(e.Signature) == 0 && p.Cipher != AES256GCM {
		return bad("signature is empty (only a session envelope, cipher %s, may be unsigned)", AES256GCM)
	}
	return nil
}

// checkID checks the syntax of an agent ID cheaply (algorithm prefix, base64url of the right length);
// callers compare IDs against known ones, which implies full validity.
func checkID(s string) error {
	alg, enc, ok := strings.Cut(s, ":")
	var n int
	switch {
	case !ok:
		return fmt.Errorf("%q is not ALG:BASE64URL", s)
	case alg == string(keystore.Ed25519):
		n = 32
	case alg == string(keystore.P256):
		n = 33
	default:
		return fmt.Errorf("%q: unknown algorithm %q", s, alg)
	}
	if raw, err := b64.DecodeString(enc); err != nil || len(raw) != n {
		return fmt.Errorf("%q: key is not base64url of %d bytes", s, n)
	}
	return nil
}

// Sign signs the envelope with the operational key.
func (e *Envelope) Sign(ctx context.Context, s keystore.Signer) error {
	sig, err := s.Sign(ctx, e.SigningInput())
	if err != nil {
		return reason.Wrap(reason.Internal, err, "sign envelope")
	}
	e.Signature = sig
	return nil
}

// Signed reports whether the envelope carries a signature (every envelope but an unsigned session one).
func (e *Envelope) Signed() bool { return len(e.Signature) > 0 }

// Verify checks the signature with the sender's verified operational key. An unsigned session envelope
// fails with reason.BadSignature: its session authenticated it to its recipient, it proves nothing to others.
func (e *Envelope) Verify(op keystore.PublicKey) error {
	if !e.Signed() {
		return reason.New(reason.BadSignature, "envelope %s from %s carries no signature (a session envelope authenticated by its session keys only, ADR 0032): it is not evidence", e.Header.MessageID, e.Header.SenderID)
	}
	if err := op.Verify(e.SigningInput(), e.Signature); err != nil {
		return reason.Wrap(reason.BadSignature, err, "envelope %s from %s", e.Header.MessageID, e.Header.SenderID)
	}
	return nil
}

// CheckRecipient refuses an envelope addressed to anyone but local.
func (e *Envelope) CheckRecipient(local string) error {
	if subtle.ConstantTimeCompare([]byte(e.Header.RecipientID), []byte(local)) != 1 {
		return reason.New(reason.WrongRecipient, "envelope %s is addressed to %s, this agent is %s", e.Header.MessageID, e.Header.RecipientID, local)
	}
	return nil
}

// SealSession encrypts plaintext under the session key a with nonce (4-byte epoch || 8-byte counter) and
// signs the envelope with s (nil: unsigned, ADR 0032).
func SealSession(ctx context.Context, h Header, plaintext []byte, a *suite.AEAD, nonce []byte, s keystore.Signer) (*Envelope, error) {
	_, e, err := AppendSealSession(ctx, nil, h, plaintext, a, nonce, s)
	return e, err
}

// AppendSealSession is SealSession producing the binary form too: it appends the binary form of the sealed
// envelope (signed by s; unsigned when s is nil) to dst (a frame header, say) and returns the extended
// buffer. The payload is encrypted in place in that buffer, so the plaintext is read once and nothing is
// copied afterwards; the envelope's Data and Signature alias the buffer.
func AppendSealSession(ctx context.Context, dst []byte, h Header, plaintext []byte, a *suite.AEAD, nonce []byte, s keystore.Signer) ([]byte, *Envelope, error) {
	if len(plaintext)+suite.AEADTagSize > MaxData {
		return nil, nil, reason.New(reason.OversizedFrame, "payload of %d bytes exceeds %d", len(plaintext), MaxData-suite.AEADTagSize)
	}
	e := &Envelope{Header: h, Payload: Payload{Encrypted: true, Cipher: AES256GCM, Nonce: append(B64(nil), nonce...)}}
	if err := e.check0(); err != nil {
		return nil, nil, err
	}
	n := len(plaintext) + suite.AEADTagSize
	w := wire.NewWriter(len(dst) + len(nonce) + n + maxSig + 384).Raw(dst...)
	buf := e.Header.fields(w).Bool(true).String(string(AES256GCM)).Bytes(nonce).Out()
	buf = binary.BigEndian.AppendUint32(buf, uint32(n))
	start := len(buf)
	buf, err := a.Seal(buf, nonce, plaintext, h.AAD())
	if err != nil {
		return nil, nil, reason.Wrap(reason.Internal, err, "seal envelope")
	}
	e.Payload.Data = buf[start:len(buf):len(buf)]
	if s != nil {
		if err := e.Sign(ctx, s); err != nil {
			return nil, nil, err
		}
	}
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(e.Signature)))
	buf = append(buf, e.Signature...)
	return buf, e, nil
}

// OpenSession decrypts a verified session-mode envelope with the session key of its direction.
func (e *Envelope) OpenSession(a *suite.AEAD) ([]byte, error) {
	return e.openSession(a, nil)
}

// OpenSessionInPlace is OpenSession decrypting into the ciphertext's own storage, for a receiver that owns
// the frame the envelope was decoded from: the plaintext aliases it, and Payload.Data is cleared (it no
// longer holds the ciphertext; the envelope cannot be re-encoded or checked as evidence afterwards).
func (e *Envelope) OpenSessionInPlace(a *suite.AEAD) ([]byte, error) {
	pt, err := e.openSession(a, e.Payload.Data[:0])
	if err == nil {
		e.Payload.Data = nil
	}
	return pt, err
}

func (e *Envelope) openSession(a *suite.AEAD, dst []byte) ([]byte, error) {
	if e.Payload.Cipher != AES256GCM {
		return nil, reason.New(reason.Malformed, "envelope %s uses cipher %s, expected %s inside a session", e.Header.MessageID, e.Payload.Cipher, AES256GCM)
	}
	pt, err := a.Open(dst, e.Payload.Nonce, e.Payload.Data, e.Header.AAD())
	if err != nil {
		return nil, reason.Wrap(reason.DecryptFailed, err, "envelope %s", e.Header.MessageID)
	}
	return pt, nil
}

// hpkeInfo is the HPKE info string of envelopes.
var hpkeInfo = []byte("custos/v1/envelope-hpke")

// SealHPKE encrypts plaintext to the recipient's delegated encryption key (encPub, of KEM kem) and signs.
func SealHPKE(ctx context.Context, h Header, plaintext []byte, kem suite.KEM, encPub []byte, s keystore.Signer) (*Envelope, error) {
	if len(plaintext)+suite.AEADTagSize > MaxData {
		return nil, reason.New(reason.OversizedFrame, "payload of %d bytes exceeds %d", len(plaintext), MaxData-suite.AEADTagSize)
	}
	e := &Envelope{Header: h, Payload: Payload{Encrypted: true, Cipher: HPKECipher(kem)}}
	if err := e.check0(); err != nil {
		return nil, err
	}
	enc, ct, err := suite.HPKESeal(kem, encPub, hpkeInfo, h.AAD(), plaintext)
	if err != nil {
		return nil, reason.Wrap(reason.Internal, err, "seal envelope to the recipient's encryption key")
	}
	e.Payload.Nonce, e.Payload.Data = enc, ct
	return e, e.Sign(ctx, s)
}

// OpenHPKE decrypts a verified store-and-forward envelope with the first of keys (the recipient's live
// encryption keys) that opens it.
func (e *Envelope) OpenHPKE(keys ...*suite.EncryptionKey) ([]byte, error) {
	if e.Payload.Cipher != HPKEX25519 && e.Payload.Cipher != HPKEXWing {
		return nil, reason.New(reason.Malformed, "envelope %s uses cipher %s, not HPKE", e.Header.MessageID, e.Payload.Cipher)
	}
	aad := e.Header.AAD()
	tried := 0
	for _, k := range keys {
		if HPKECipher(k.KEM()) != e.Payload.Cipher {
			continue
		}
		tried++
		if pt, err := k.Open(e.Payload.Nonce, hpkeInfo, aad, e.Payload.Data); err == nil {
			return pt, nil
		}
	}
	return nil, reason.New(reason.DecryptFailed, "envelope %s does not open under any of this agent's %d live %s encryption keys (sealed to an expired delegation?)", e.Header.MessageID, tried, e.Payload.Cipher)
}

// SealPlain signs an unencrypted envelope (public evidence, such as feedback meant for third parties).
func SealPlain(ctx context.Context, h Header, plaintext []byte, s keystore.Signer) (*Envelope, error) {
	if len(plaintext) > MaxData {
		return nil, reason.New(reason.OversizedFrame, "payload of %d bytes exceeds %d", len(plaintext), MaxData)
	}
	e := &Envelope{Header: h, Payload: Payload{Cipher: None, Data: append(B64{}, plaintext...)}}
	if err := e.check0(); err != nil {
		return nil, err
	}
	return e, e.Sign(ctx, s)
}

// Plaintext returns the data of a verified unencrypted envelope.
func (e *Envelope) Plaintext() ([]byte, error) {
	if e.Payload.Cipher != None {
		return nil, reason.New(reason.Malformed, "envelope %s is encrypted (%s)", e.Header.MessageID, e.Payload.Cipher)
	}
	return e.Payload.Data, nil
}

// check0 checks the header of an envelope being built.
func (e *Envelope) check0() error {
	c := *e
	c.Signature = B64{0}
	if len(c.Payload.Data) == 0 {
		c.Payload.Data = make(B64, suite.AEADTagSize)
	}
	if c.Payload.Cipher == HPKEX25519 || c.Payload.Cipher == HPKEXWing {
		c.Payload.Nonce = make(B64, map[Cipher]int{HPKEX25519: 32, HPKEXWing: 1120}[c.Payload.Cipher])
	}
	return c.check()
}
