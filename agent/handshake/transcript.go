package handshake

import (
	"crypto/sha256"

	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/internal/wire"
	"github.com/custos-agent/custos/signature"
)

// transcriptPrefix separates transcript hashes from every other SHA-256 use.
var transcriptPrefix = []byte("custos/v1/handshake-transcript\x00")

// HelloHash is SHA-256 of the hello frame (what the challenge echoes).
func HelloHash(hello []byte) []byte {
	h := sha256.Sum256(hello)
	return h[:]
}

// Transcript is SHA-256("custos/v1/handshake-transcript\x00" || for each frame: 4-byte big-endian length
// || frame). The frames are whole frames (type byte included) as sent.
func Transcript(frames ...[]byte) []byte {
	h := sha256.New()
	h.Write(transcriptPrefix)
	for _, f := range frames {
		wire.HashBytes(h, f)
	}
	return h.Sum(nil)
}

// ChallengeSigningInput is what the responder signs: "custos/v1/handshake\x00", then the role label
// "responder" and Transcript(hello, challenge-without-signature), each length-prefixed.
func ChallengeSigningInput(hello, challengeUnsigned []byte) []byte {
	return signature.NewInput(signature.Handshake).String("responder").Bytes(Transcript(hello, challengeUnsigned)).Message()
}

// ResponseSigningInput is what the initiator signs: "custos/v1/handshake\x00", then "initiator" and
// Transcript(hello, challenge, response-without-signature), each length-prefixed.
func ResponseSigningInput(hello, challenge, responseUnsigned []byte) []byte {
	return signature.NewInput(signature.Handshake).String("initiator").Bytes(Transcript(hello, challenge, responseUnsigned)).Message()
}

// Keys are the secrets of one session (one handshake).
type Keys struct {
	I2R       []byte // AES-256-GCM key, initiator to responder
	R2I       []byte // AES-256-GCM key, responder to initiator
	SessionID []byte // 16 bytes naming the session in logs
}

// HKDF info labels of the key schedule.
const (
	InfoI2R       = "custos/v1/session i2r"
	InfoR2I       = "custos/v1/session r2i"
	InfoSessionID = "custos/v1/session id"
)

// DeriveKeys is the key schedule: PRK = HKDF-Extract(salt = Transcript(hello, challenge, response),
// IKM = X25519 shared secret || ML-KEM-768 shared secret (when hybrid)); each key is HKDF-Expand(PRK,
// label, length). The shared secrets are wiped.
func DeriveKeys(transcript, x25519, mlkem []byte) (*Keys, error) {
	ikm := make([]byte, 0, len(x25519)+len(mlkem))
	ikm = append(append(ikm, x25519...), mlkem...)
	defer clear(ikm)
	clear(x25519)
	clear(mlkem)
	prk, err := suite.Extract(ikm, transcript)
	if err != nil {
		return nil, err
	}
	defer clear(prk)
	k := &Keys{}
	if k.I2R, err = suite.Expand(prk, []byte(InfoI2R), suite.AEADKeySize); err != nil {
		return nil, err
	}
	if k.R2I, err = suite.Expand(prk, []byte(InfoR2I), suite.AEADKeySize); err != nil {
		return nil, err
	}
	if k.SessionID, err = suite.Expand(prk, []byte(InfoSessionID), SessionIDSize); err != nil {
		return nil, err
	}
	return k, nil
}

// Wipe zeroes the keys.
func (k *Keys) Wipe() {
	clear(k.I2R)
	clear(k.R2I)
}

// EstablishedAAD is the associated data of the established frame: "custos/v1/established\x00" ||
// Transcript(hello, challenge, response).
func EstablishedAAD(transcript []byte) []byte {
	return append([]byte("custos/v1/established\x00"), transcript...)
}

// PuzzleBinding is what an admission puzzle is bound to: initiator ID, responder ID, the hello's nonce and
// the challenge's nonce, each length-prefixed. A solution is good for this handshake only.
func PuzzleBinding(h *Hello, c *Challenge) []byte {
	return wire.NewWriter(256).String(h.InitiatorID).String(c.ResponderID).Bytes(h.Nonce).Bytes(c.Nonce).Out()
}
