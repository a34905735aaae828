package envelope

import (
	"context"
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
	full, err := log.Verify()
	if err != nil {
		return reason.Wrap(reason.KeyLogInvalid, err, "the sender's key event log")
	}
	if full.ID.String() != e.Header.SenderID {
		return reason.New(reason.KeyLogInvalid, "the key event log is of %s, the envelope is from %s", full.ID, e.Header.SenderID)
	}
	if d.Generation > full.Generation {
		return reason.New(reason.DelegationWrongKey, "the delegation names generation %d, the log ends at %d", d.Generation, full.Generation)
	}
	// The delegation is the object the identity key signed: judged by the signing-generation rule at its
	// NotBefore (docs/protocol.md, "Signing-generation validity": a rotation keeps it, a recovery voids it).
	if _, err := full.VerifySignedAt(int64(d.Generation), "", d.NotBefore, func(keystore.PublicKey) error { return nil }); err != nil {
		return reason.Wrap(reason.DelegationWrongKey, err, "the delegation of generation %d", d.Generation)
	}
	prefix := identity.Log{Events: log.Events[:d.Generation+1]}
	st, err := prefix.Verify()
	if err != nil {
		return reason.Wrap(reason.KeyLogInvalid, err, "the sender's key event log")
	}
	v, err := delegation.Verify(full.ID, st, d, time.Unix(e.Header.Timestamp, 0))
	if err != nil {
		return err
	}
	return e.Verify(v.OpKey)
}
