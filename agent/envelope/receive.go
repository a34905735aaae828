package envelope

import (
	"context"
	"crypto/sha256"
	"sync"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/replay"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

// KeyResolver finds the verified operational keys a sender may sign with at a given time (from the peer
// cache: its key event log and delegations).
type KeyResolver interface {
	OperationalKeys(ctx context.Context, sender string, at time.Time) ([]keystore.PublicKey, error)
}

// Receiver opens store-and-forward envelopes (HPKE or unencrypted) that arrive outside a session.
type Receiver struct {
	// LocalID is this agent's ID: envelopes for anyone else are refused.
	LocalID string
	// Keys returns this agent's live encryption keys (delegation.Manager.Live).
	Keys func() []*suite.EncryptionKey
	// Resolver finds senders' operational keys.
	Resolver KeyResolver
	// Replay is the replay cache (timestamp window and message IDs).
	Replay *replay.Cache
}

// Receive checks and opens e, in this order: recipient, timestamp window, sender's keys, signature,
// message ID (replay), decryption. It returns the plaintext. Nothing is recorded for a message whose
// signature does not verify.
func (r *Receiver) Receive(ctx context.Context, e *Envelope) ([]byte, error) {
	if err := e.CheckRecipient(r.LocalID); err != nil {
		return nil, err
	}
	if err := r.Replay.CheckStoredTime(e.Header.Timestamp); err != nil {
		return nil, err
	}
	if e.Payload.Cipher == AES256GCM {
		return nil, reason.New(reason.UnexpectedMessage, "envelope %s is sealed under a session key but arrived outside a session", e.Header.MessageID)
	}
	keys, err := r.Resolver.OperationalKeys(ctx, e.Header.SenderID, time.Unix(e.Header.Timestamp, 0))
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, reason.New(reason.UnknownPeer, "no valid delegation of %s is known: handshake with it first", e.Header.SenderID)
	}
	var verr error
	for _, k := range keys {
		if verr = e.Verify(k); verr == nil {
			break
		}
	}
	if verr != nil {
		return nil, verr
	}
	if err := r.Replay.CheckStored(e.Header.SenderID, e.Header.MessageID, e.Header.Timestamp); err != nil {
		return nil, err
	}
	if e.Payload.Cipher == None {
		return e.Plaintext()
	}
	return e.OpenHPKE(r.Keys()...)
}

// VerifyEvidence checks, for a third party, that e was signed by its sender: log is the sender's key event
// log (verified here), d the delegation it signed under, valid at e's timestamp and signed by the key that
// was current at d's generation. It proves who signed what (header and payload as sent, ciphertext
// included), not what an encrypted payload says.
func VerifyEvidence(e *Envelope, log *identity.Log, d *delegation.Delegation) error {
	v, err := verifyEvidenceKey(e, log, d)
	if err != nil {
		return err
	}
	return e.Verify(v.OpKey)
}

// verifyEvidenceKey is VerifyEvidence but for the envelope's signature: the log, the delegation against
// it, valid at e's timestamp. It returns the verified delegation.
func verifyEvidenceKey(e *Envelope, log *identity.Log, d *delegation.Delegation) (*delegation.Verified, error) {
	full, err := log.Verify()
	if err != nil {
		return nil, reason.Wrap(reason.KeyLogInvalid, err, "the sender's key event log")
	}
	if full.ID.String() != e.Header.SenderID {
		return nil, reason.New(reason.KeyLogInvalid, "the key event log is of %s, the envelope is from %s", full.ID, e.Header.SenderID)
	}
	if d.Generation > full.Generation {
		return nil, reason.New(reason.DelegationWrongKey, "the delegation names generation %d, the log ends at %d", d.Generation, full.Generation)
	}
	// The delegation is the object the identity key signed: judged by the signing-generation rule at its
	// NotBefore (docs/protocol.md, "Signing-generation validity": a rotation keeps it, a recovery voids it).
	if _, err := full.VerifySignedAt(int64(d.Generation), "", d.NotBefore, func(keystore.PublicKey) error { return nil }); err != nil {
		return nil, reason.Wrap(reason.DelegationWrongKey, err, "the delegation of generation %d", d.Generation)
	}
	prefix := identity.Log{Events: log.Events[:d.Generation+1]}
	st, err := prefix.Verify()
	if err != nil {
		return nil, reason.Wrap(reason.KeyLogInvalid, err, "the sender's key event log")
	}
	return delegation.Verify(full.ID, st, d, time.Unix(e.Header.Timestamp, 0))
}

// EvidenceCache is VerifyEvidence for a verifier that checks many envelopes of the same senders (the
// task engine: every result from an executor comes with the same key event log and, for an hour, the
// same delegation). What VerifyEvidence proves of a key event log and a delegation alone (the log
// verifies from inception and is the sender's, the delegation is signed under the signing-generation
// rule, the operational key it names) is kept per pair, keyed by the SHA-256 of the log's encoding and of
// the delegation's; the delegation's validity at the envelope's timestamp and the envelope's signature
// are checked every time. Same result as VerifyEvidence, three to four signature verifications fewer per
// envelope. Safe for concurrent use; at most MaxEvidenceCache pairs (then it starts over).
type EvidenceCache struct {
	mu sync.Mutex
	m  map[[2 * sha256.Size]byte]evidenceKey
}

// MaxEvidenceCache bounds an EvidenceCache.
const MaxEvidenceCache = 4096

type evidenceKey struct {
	sender string
	op     keystore.PublicKey
	nb, na time.Time
}

// VerifyEvidence is VerifyEvidence with c's memory (a nil c remembers nothing).
func (c *EvidenceCache) VerifyEvidence(e *Envelope, log *identity.Log, d *delegation.Delegation) error {
	if c == nil {
		return VerifyEvidence(e, log, d)
	}
	var k [2 * sha256.Size]byte
	ls, ds := sha256.Sum256(log.Encode()), sha256.Sum256(d.Encode())
	copy(k[:], ls[:])
	copy(k[sha256.Size:], ds[:])
	c.mu.Lock()
	v, ok := c.m[k]
	c.mu.Unlock()
	if !ok {
		dv, err := verifyEvidenceKey(e, log, d)
		if err != nil {
			return err
		}
		v = evidenceKey{sender: e.Header.SenderID, op: dv.OpKey, nb: dv.NotBefore, na: dv.NotAfter}
		c.mu.Lock()
		if c.m == nil || len(c.m) >= MaxEvidenceCache {
			c.m = map[[2 * sha256.Size]byte]evidenceKey{}
		}
		c.m[k] = v
		c.mu.Unlock()
	} else {
		if v.sender != e.Header.SenderID {
			return reason.New(reason.KeyLogInvalid, "the key event log is of %s, the envelope is from %s", v.sender, e.Header.SenderID)
		}
		if err := delegation.CheckValidAt(v.nb, v.na, time.Unix(e.Header.Timestamp, 0)); err != nil {
			return err
		}
	}
	return e.Verify(v.op)
}
