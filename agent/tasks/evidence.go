package tasks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/identity"
)

// HexSHA256 is the lowercase hex SHA-256 digest of b.
func HexSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// SignResult makes the executor's evidence: doc as the plaintext of an unencrypted envelope (cipher
// "none") of type task_result from executor to doc.Requester, signed by the operational key of keys. It
// returns the envelope's binary form and the encoded delegation.
func SignResult(ctx context.Context, executor string, doc *ResultDoc, keys *delegation.Keys, now time.Time) (evidence, deleg []byte, err error) {
	h := envelope.NewHeader(executor, doc.Requester, envelope.TaskResult, now)
	e, err := envelope.SealPlain(ctx, h, doc.Encode(), keys.Signer())
	if err != nil {
		return nil, nil, fmt.Errorf("sign result of task %s: %w", doc.TaskID, err)
	}
	return e.EncodeBinary(), keys.Encoded(), nil
}

// Expect is what a submitter knows about the task a result must answer.
type Expect struct {
	TaskID      string
	Executor    string
	Requester   string
	Handler     string
	InputSHA256 string
}

// VerifyResult checks a task result for the submitter or a third party: the evidence envelope (binary
// form) and the delegation verify against the executor's key event log (envelope.VerifyEvidence), the
// envelope is a task_result from the executor to the requester, the signed document answers the expected
// task (ID, handler, input digest), and the output digest is right. Zero fields of want are not checked
// (a third party may not know the input).
func VerifyResult(evidence, deleg []byte, log identity.Log, want Expect) (*envelope.Envelope, *ResultDoc, error) {
	return verifyResult(nil, evidence, deleg, log, want)
}

// verifyResult is VerifyResult with the memory of c (nil: none; Engine keeps one for the results it
// receives).
func verifyResult(c *envelope.EvidenceCache, evidence, deleg []byte, log identity.Log, want Expect) (*envelope.Envelope, *ResultDoc, error) {
	e, err := envelope.DecodeBinary(evidence)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: evidence envelope: %v", ErrInvalidResult, err)
	}
	d, err := delegation.Decode(deleg)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: delegation: %v", ErrInvalidResult, err)
	}
	return verifyDecoded(c, e, d, log, want)
}

func verifyDecoded(c *envelope.EvidenceCache, e *envelope.Envelope, d *delegation.Delegation, log identity.Log, want Expect) (*envelope.Envelope, *ResultDoc, error) {
	if e.Header.MessageType != envelope.TaskResult || e.Payload.Cipher != envelope.None {
		return nil, nil, fmt.Errorf("%w: evidence is a %s envelope with cipher %s (want task_result, none)", ErrInvalidResult, e.Header.MessageType, e.Payload.Cipher)
	}
	if want.Executor != "" && e.Header.SenderID != want.Executor {
		return nil, nil, fmt.Errorf("%w: signed by %s, the task went to %s", ErrInvalidResult, e.Header.SenderID, want.Executor)
	}
	if want.Requester != "" && e.Header.RecipientID != want.Requester {
		return nil, nil, fmt.Errorf("%w: addressed to %s, not %s", ErrInvalidResult, e.Header.RecipientID, want.Requester)
	}
	if d.AgentID != e.Header.SenderID {
		return nil, nil, fmt.Errorf("%w: delegation of %s for an envelope from %s", ErrInvalidResult, d.AgentID, e.Header.SenderID)
	}
	if err := c.VerifyEvidence(e, &log, d); err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalidResult, err)
	}
	pt, err := e.Plaintext()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalidResult, err)
	}
	doc, err := DecodeResultDoc(pt)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrInvalidResult, err)
	}
	switch {
	case want.TaskID != "" && doc.TaskID != want.TaskID:
		return nil, nil, fmt.Errorf("%w: answers task %s, not %s", ErrInvalidResult, doc.TaskID, want.TaskID)
	case doc.Requester != e.Header.RecipientID:
		return nil, nil, fmt.Errorf("%w: document names requester %s, envelope %s", ErrInvalidResult, doc.Requester, e.Header.RecipientID)
	case want.Handler != "" && doc.Handler != want.Handler:
		return nil, nil, fmt.Errorf("%w: ran handler %s, not %s", ErrInvalidResult, doc.Handler, want.Handler)
	case want.InputSHA256 != "" && doc.InputSHA256 != want.InputSHA256:
		return nil, nil, fmt.Errorf("%w: input digest %s, the task's is %s", ErrInvalidResult, doc.InputSHA256, want.InputSHA256)
	case doc.OutputSHA256 != HexSHA256(doc.Output):
		return nil, nil, fmt.Errorf("%w: output digest %s does not match the output (%s)", ErrInvalidResult, doc.OutputSHA256, HexSHA256(doc.Output))
	}
	return e, doc, nil
}

// Evidence is everything a third party needs to check a task result offline: the signed envelope (its
// canonical JSON form, kept as a string so that reformatting the surrounding JSON cannot alter it), the
// delegation that certifies the signing key, and the executor's key event log that certifies the
// delegation. Check it with VerifyEvidence (or agentctl task verify).
type Evidence struct {
	Envelope    string       `json:"envelope"`
	Delegation  envelope.B64 `json:"delegation"`
	KeyEventLog string       `json:"key_event_log"` // JSON lines (identity.Log.Encode)
}

// NewEvidence assembles the evidence of a stored result.
func NewEvidence(evidence, deleg, kel []byte) (*Evidence, error) {
	e, err := envelope.DecodeBinary(evidence)
	if err != nil {
		return nil, err
	}
	return &Evidence{Envelope: string(e.EncodeJSON()), Delegation: deleg, KeyEventLog: string(kel)}, nil
}

// VerifyEvidence checks ev as a third party: the key event log verifies from inception, the delegation
// against it, the envelope signature under the delegated key, and the document's output digest. It returns
// the verified envelope and document.
func VerifyEvidence(ev *Evidence) (*envelope.Envelope, *ResultDoc, error) {
	e, err := envelope.DecodeJSON([]byte(ev.Envelope))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: envelope: %v", ErrInvalidResult, err)
	}
	d, err := delegation.Decode(ev.Delegation)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: delegation: %v", ErrInvalidResult, err)
	}
	log, err := identity.DecodeLog([]byte(ev.KeyEventLog))
	if err != nil {
		return nil, nil, fmt.Errorf("%w: key event log: %v", ErrInvalidResult, err)
	}
	return verifyDecoded(nil, e, d, log, Expect{})
}
