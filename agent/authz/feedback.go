package authz

import (
	"context"
	"fmt"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/identity"
)

// FeedbackTask returns the reputation store's CheckTask (docs/adr/0051): the feedback's task reference must be
// the subject's signed task_result envelope for the feedback's task, addressed to the giver, and verify
// under the subject's key event log and a delegation of it that this agent holds (envelope.VerifyEvidence:
// the signing-generation rule included). It proves the giver submitted that task to the subject.
func FeedbackTask(peers FeedbackPeers) func(context.Context, *reputation.Feedback) error {
	return func(_ context.Context, f *reputation.Feedback) error { return feedbackTask(peers, f) }
}

// FeedbackPeers is what the feedback check reads of the peer cache.
type FeedbackPeers interface {
	Log(id string) (identity.Log, identity.State, bool, error)
	Delegations(id string) ([]*delegation.Delegation, error)
}

func feedbackTask(peers FeedbackPeers, f *reputation.Feedback) error {
	raw, err := f.RefBytes()
	if err != nil {
		return err
	}
	e, err := envelope.DecodeBinary(raw)
	if err != nil {
		return fmt.Errorf("the task reference is not an envelope: %v", err)
	}
	h := e.Header
	if h.MessageType != envelope.TaskResult || e.Payload.Cipher != envelope.None {
		return fmt.Errorf("the task reference is a %s envelope with cipher %s, not a signed task_result", h.MessageType, e.Payload.Cipher)
	}
	if h.SenderID != f.Subject || h.RecipientID != f.Giver {
		return fmt.Errorf("the task reference is a result from %s to %s, not from the subject to the giver", h.SenderID, h.RecipientID)
	}
	l, _, ok, err := peers.Log(f.Subject)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no key event log of the subject %s is cached here: its signed result cannot be checked", f.Subject)
	}
	ds, err := peers.Delegations(f.Subject)
	if err != nil {
		return err
	}
	verr := fmt.Errorf("no delegation of the subject %s is cached here: its signed result cannot be checked", f.Subject)
	for _, dl := range ds {
		if verr = envelope.VerifyEvidence(e, &l, dl); verr == nil {
			break
		}
	}
	if verr != nil {
		return fmt.Errorf("the subject's signed result does not verify: %w", verr)
	}
	pt, err := e.Plaintext()
	if err != nil {
		return err
	}
	doc, err := tasks.DecodeResultDoc(pt)
	if err != nil {
		return fmt.Errorf("the task reference's result: %w", err)
	}
	if doc.TaskID != f.Task || doc.Requester != f.Giver {
		return fmt.Errorf("the signed result answers task %s of %s, not task %s of the giver", doc.TaskID, doc.Requester, f.Task)
	}
	return nil
}
