package reputation

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/signature"
)

// FeedbackVersion is the version of the feedback format: version 2 carries the task reference (Ref).
// Version 1 (no reference) is refused: nothing showed the giver had the task with the subject
// (docs/adr/0051).
const FeedbackVersion = 2

// MaxRefSize bounds the task reference (the subject's signed result envelope, binary form); feedback about
// a task whose signed result is larger cannot be given.
const MaxRefSize = 48 << 10

// MaxFeedbackSize bounds one encoded feedback record (the reference in base64url, and the rest).
const MaxFeedbackSize = MaxRefSize*4/3 + 2048

// Rating bounds: -100 (worst) to +100 (best).
const (
	MinRating = -100
	MaxRating = 100
)

// ErrMalformed marks every decoding error of feedback.
var ErrMalformed = errors.New("malformed feedback")

// Feedback is one peer's signed opinion of another peer's work on one task. It travels in a "feedback"
// message; its JSON form is what is exchanged, what is signed is SigningInput under signature.Feedback.
type Feedback struct {
	Version int    `json:"v"`
	Giver   string `json:"giver"`   // agent ID of the signer
	Subject string `json:"subject"` // agent ID the feedback is about
	Task    string `json:"task"`    // task or message ID the feedback is about (1 to 128 bytes of UTF-8)
	Rating  int    `json:"rating"`  // MinRating..MaxRating
	Time    int64  `json:"time"`    // Unix seconds
	// Ref is the task reference: base64url of the subject's signed task_result envelope (binary form) for
	// Task, addressed to Giver — the proof that the giver submitted that task to the subject.
	Ref string `json:"ref"`
	Sig string `json:"sig"` // base64url signature by Giver's key
}

// RefBytes decodes Ref.
func (f *Feedback) RefBytes() ([]byte, error) {
	b, err := identity.Base64().DecodeString(f.Ref)
	if err != nil || len(b) == 0 || len(b) > MaxRefSize {
		return nil, fmt.Errorf("task reference must be 1 to %d bytes in unpadded base64url", MaxRefSize)
	}
	return b, nil
}

// SigningInput is exactly what the giver signs.
func (f *Feedback) SigningInput() *signature.Input {
	return signature.NewInput(signature.Feedback).
		Uint64(uint64(f.Version)).
		String(f.Giver).
		String(f.Subject).
		String(f.Task).
		Int64(int64(f.Rating)).
		Int64(f.Time).
		String(f.Ref)
}

// Encode returns the compact JSON form.
func (f *Feedback) Encode() []byte {
	b, err := json.Marshal(f)
	if err != nil {
		panic("reputation: marshal feedback: " + err.Error())
	}
	return b
}

// key identifies (giver, subject, task): one giver counts once per task.
func (f *Feedback) key() []byte {
	h := sha256.Sum256(signature.NewInput(signature.Feedback).String(f.Giver).String(f.Subject).String(f.Task).Message())
	return h[:]
}

// SignFeedback makes and signs feedback by giver (whose agent ID is giverID) about subject's result of
// task; ref is the subject's signed task_result envelope (binary form) that the giver received.
func SignFeedback(ctx context.Context, giver keystore.Signer, giverID, subject identity.ID, task string, rating int, ref []byte, now time.Time) (Feedback, error) {
	f := Feedback{Version: FeedbackVersion, Giver: giverID.String(), Subject: subject.String(), Task: task, Rating: rating, Time: now.Unix(),
		Ref: identity.Base64().EncodeToString(ref)}
	if err := f.check(); err != nil {
		return Feedback{}, err
	}
	sig, err := signature.SignInput(ctx, giver, f.SigningInput())
	if err != nil {
		return Feedback{}, fmt.Errorf("sign feedback: %w", err)
	}
	f.Sig = identity.Base64().EncodeToString(sig)
	return f, nil
}

// DecodeFeedback strictly decodes feedback: size limit, no unknown fields, no trailing data, version 1,
// valid agent IDs (giver ≠ subject), a task ID, a rating in range, a signature, and the canonical encoding.
// It checks form, not the signature.
func DecodeFeedback(b []byte) (Feedback, error) {
	var f Feedback
	if len(b) > MaxFeedbackSize {
		return Feedback{}, fmt.Errorf("%w: %d bytes exceeds %d", ErrMalformed, len(b), MaxFeedbackSize)
	}
	if err := strictjson.Decode(b, &f, 0); err != nil {
		return Feedback{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := f.check(); err != nil {
		return Feedback{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := identity.Base64().DecodeString(f.Sig); err != nil || f.Sig == "" || len(f.Sig) > 200 {
		return Feedback{}, fmt.Errorf("%w: signature must be unpadded base64url", ErrMalformed)
	}
	if strictjson.Canonical(b, f.Encode()) != nil {
		return Feedback{}, fmt.Errorf("%w: not in canonical form (compact JSON, fields in order, as Encode writes it)", ErrMalformed)
	}
	return f, nil
}

func (f *Feedback) check() error {
	if f.Version != FeedbackVersion {
		return fmt.Errorf("version %d (this agent speaks %d: feedback must carry the task reference)", f.Version, FeedbackVersion)
	}
	if _, err := identity.ParseID(f.Giver); err != nil {
		return fmt.Errorf("giver: %v", err)
	}
	if _, err := identity.ParseID(f.Subject); err != nil {
		return fmt.Errorf("subject: %v", err)
	}
	if f.Giver == f.Subject {
		return errors.New("a peer cannot give feedback about itself")
	}
	if f.Task == "" || len(f.Task) > 128 || !utf8.ValidString(f.Task) {
		return errors.New("task ID must be 1 to 128 bytes of UTF-8")
	}
	if f.Rating < MinRating || f.Rating > MaxRating {
		return fmt.Errorf("rating %d is outside [%d, %d]", f.Rating, MinRating, MaxRating)
	}
	if f.Time <= 0 {
		return fmt.Errorf("time %d is not a positive Unix time", f.Time)
	}
	if _, err := f.RefBytes(); err != nil {
		return err
	}
	return nil
}
