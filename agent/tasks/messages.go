package tasks

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/reason"
)

// Limits of the task messages.
const (
	// MaxInput bounds a task's input (it travels base64url-encoded inside one envelope of at most
	// envelope.MaxData bytes).
	MaxInput = 512 << 10
	// MaxOutput bounds a handler's output, for the same reason (the result travels in a signed
	// envelope inside another).
	MaxOutput = 512 << 10
	// MaxMessage bounds the JSON payload of any task message.
	MaxMessage = envelope.MaxData
	// MaxErrorText bounds the error sentence of a failed result or an error_response.
	MaxErrorText = 1024
	// TaskIDSize is the size of a task ID before encoding (random bytes).
	TaskIDSize = 16
)

// Errors of decoding and checking task messages.
var (
	// ErrMalformed: a task message does not decode under the strict rules (unknown or missing fields,
	// bad encoding, over a limit).
	ErrMalformed = errors.New("malformed task message")
	// ErrInvalidResult: a task_result does not verify (signature, delegation, key event log, digests, or it
	// answers another task).
	ErrInvalidResult = errors.New("invalid task result")
)

var handlerName = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,31}$`)

// ValidHandlerName reports whether s is an acceptable handler name: 1 to 32 of [a-z0-9_-], starting with
// a letter.
func ValidHandlerName(s string) bool { return handlerName.MatchString(s) }

// NewTaskID returns a fresh random task ID (base64url of 16 random bytes). The submitter chooses it; it
// makes retries idempotent. It never starts with '-', so that it can be given to a command line as an
// argument (1 draw in 64 is discarded; the ID loses less than 0.03 of its 128 bits).
func NewTaskID() string {
	b := make([]byte, TaskIDSize)
	for {
		if _, err := rand.Read(b); err != nil {
			panic("crypto/rand failed: " + err.Error()) // never happens on Linux
		}
		if id := identity.Base64().EncodeToString(b); id[0] != '-' {
			return id
		}
	}
}

// CheckTaskID checks the form of a task ID.
func CheckTaskID(id string) error {
	b, err := identity.Base64().DecodeString(id)
	if err != nil || len(b) != TaskIDSize {
		return fmt.Errorf("%w: task ID %q is not base64url of %d bytes", ErrMalformed, clip(id), TaskIDSize)
	}
	return nil
}

// Request is the payload of a task_request: run Handler on Input. TaskID is the submitter's; a request
// seen again (a retry) is answered from the executor's store, never run twice while its record lives.
type Request struct {
	TaskID  string       `json:"task_id"`
	Handler string       `json:"handler"`
	Input   envelope.B64 `json:"input"`
	// OnBehalfOf names the client the submitter acts for (an HTTP gateway's API key name, ADR 0100):
	// inside the signed envelope, so the executor can audit and rate-limit by (submitter, OnBehalfOf).
	// Empty for an agent's own tasks; 1 to MaxOnBehalfOf of [a-z0-9._-] otherwise (ValidOnBehalfOf).
	OnBehalfOf string `json:"on_behalf_of,omitempty"`
}

// MaxOnBehalfOf bounds Request.OnBehalfOf (the gateway's key names are at most 64 characters).
const MaxOnBehalfOf = 64

var onBehalfOf = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// ValidOnBehalfOf reports whether s is an acceptable attribution: empty (none), or 1 to 64 of
// [a-z0-9._-] starting with a letter or digit (the gateway's key name rule).
func ValidOnBehalfOf(s string) bool { return s == "" || onBehalfOf.MatchString(s) }

// Response statuses (task_response).
const (
	// StatusAccepted: the executor recorded the task (fsynced) and will run it.
	StatusAccepted = "accepted"
	// StatusResultReceived: the submitter verified and stored the result; the executor may forget it.
	StatusResultReceived = "result_received"
)

// Response is the payload of a task_response: an acknowledgement, from the executor (accepted) or from
// the submitter (result_received).
type Response struct {
	TaskID string `json:"task_id"`
	Status string `json:"status"`
}

// Progress is the payload of a task_progress: the executor started running the task.
type Progress struct {
	TaskID string `json:"task_id"`
	State  string `json:"state"` // "running"
}

// ResultMessage is the payload of a task_result: the executor's signed evidence envelope (binary form)
// and the delegation whose operational key signed it.
type ResultMessage struct {
	TaskID     string       `json:"task_id"`
	Evidence   envelope.B64 `json:"evidence"`
	Delegation envelope.B64 `json:"delegation"`
}

// Error codes of an error_response.
const (
	// CodeUnknownHandler: the executor has no handler of that name.
	CodeUnknownHandler = string(reason.UnknownHandler) // "unknown_handler"
	// CodeBadRequest: the request does not decode or breaks a limit.
	CodeBadRequest = string(reason.BadRequest) // "bad_request"
	// CodeBusy: the executor's queue is full; the submitter retries later.
	CodeBusy = string(reason.Busy) // "busy"
	// CodeDenied: the executor's policy refused the request.
	CodeDenied = string(reason.Denied) // "denied"
	// CodeInternal: the executor could not record the task.
	CodeInternal = string(reason.Internal) // "internal"
	// CodeTimeout: a submitted task got no result within Config.Timeout (recorded locally, ADR 0090).
	CodeTimeout = string(reason.Timeout) // "timeout"
	// CodeCancelled: a submitted task given up by its submitter (Engine.Cancel).
	CodeCancelled = string(reason.Cancelled) // "cancelled"
)

// ErrorMessage is the payload of an error_response.
type ErrorMessage struct {
	TaskID  string `json:"task_id"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Retryable reports whether the submitter should keep the task and try again later.
func (e *ErrorMessage) Retryable() bool { return e.Code == CodeBusy || e.Code == CodeInternal }

// policyRefusal reports whether the executor's resource policy refused this one message (its rate or
// quota), which says nothing about a task it has already accepted.
func (e *ErrorMessage) policyRefusal() bool {
	return e.Code == string(reason.RateLimited) || e.Code == string(reason.QuotaExceeded)
}

// Result statuses.
const (
	ResultOK     = "ok"
	ResultFailed = "failed"
)

// ResultDoc is what the executor signs (the plaintext of the evidence envelope, cipher "none"): which task,
// for whom, which handler on which input, and the output or the error. A third party that holds the
// executor's key event log and the delegation can check the signature (envelope.VerifyEvidence) and the
// digests.
type ResultDoc struct {
	TaskID       string       `json:"task_id"`
	Requester    string       `json:"requester"`
	Handler      string       `json:"handler"`
	InputSHA256  string       `json:"input_sha256"` // hex
	Status       string       `json:"status"`       // "ok" or "failed"
	Output       envelope.B64 `json:"output"`
	OutputSHA256 string       `json:"output_sha256"` // hex
	Error        string       `json:"error"`
	Started      int64        `json:"started"`  // Unix seconds
	Finished     int64        `json:"finished"` // Unix seconds
}

// decodeStrict decodes one JSON object into v: size limit, no unknown fields, no trailing data.
func decodeStrict(b []byte, v any, what string) error {
	if err := strictjson.Decode(b, v, MaxMessage); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	return nil
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("tasks: encode: " + err.Error()) // only plain structs are encoded
	}
	return b
}

// Encode returns the payload as agents send it: the binary form (binary.go).
func (r *Request) Encode() []byte { return r.encodeBinary() }

// EncodeJSON returns the JSON form (what json.Marshal writes), for evidence and display; agents send
// the binary form.
func (r *Request) EncodeJSON() []byte { return encode(r) }

// DecodeRequest strictly decodes a task_request payload, binary or JSON form, and checks its fields.
func DecodeRequest(b []byte) (*Request, error) {
	var r Request
	switch {
	case len(b) > MaxMessage:
		return nil, fmt.Errorf("%w: task_request of %d bytes exceeds %d", ErrMalformed, len(b), MaxMessage)
	case hasMagic(b, magicRequest), hasMagic(b, magicRequestAttributed):
		d, err := decodeRequestBinary(b)
		if err != nil {
			return nil, err
		}
		r = *d
	default:
		if err := decodeStrict(b, &r, "task_request"); err != nil {
			return nil, err
		}
	}
	if err := CheckTaskID(r.TaskID); err != nil {
		return nil, err
	}
	if !ValidHandlerName(r.Handler) {
		return nil, fmt.Errorf("%w: handler name %q (want 1-32 of a-z 0-9 _ -, starting with a letter)", ErrMalformed, clip(r.Handler))
	}
	if len(r.Input) > MaxInput {
		return nil, fmt.Errorf("%w: input of %d bytes exceeds %d", ErrMalformed, len(r.Input), MaxInput)
	}
	if !ValidOnBehalfOf(r.OnBehalfOf) {
		return nil, fmt.Errorf("%w: on_behalf_of %q (want 1-64 of a-z 0-9 . _ -, starting with a letter or digit)", ErrMalformed, clip(r.OnBehalfOf))
	}
	return &r, nil
}

// Encode returns the JSON payload.
func (r *Response) Encode() []byte { return encode(r) }

// DecodeResponse strictly decodes a task_response payload.
func DecodeResponse(b []byte) (*Response, error) {
	var r Response
	if err := decodeStrict(b, &r, "task_response"); err != nil {
		return nil, err
	}
	if err := CheckTaskID(r.TaskID); err != nil {
		return nil, err
	}
	if r.Status != StatusAccepted && r.Status != StatusResultReceived {
		return nil, fmt.Errorf("%w: task_response status %q (want %s or %s)", ErrMalformed, clip(r.Status), StatusAccepted, StatusResultReceived)
	}
	return &r, nil
}

// Encode returns the JSON payload.
func (p *Progress) Encode() []byte { return encode(p) }

// DecodeProgress strictly decodes a task_progress payload.
func DecodeProgress(b []byte) (*Progress, error) {
	var p Progress
	if err := decodeStrict(b, &p, "task_progress"); err != nil {
		return nil, err
	}
	if err := CheckTaskID(p.TaskID); err != nil {
		return nil, err
	}
	if p.State != "running" {
		return nil, fmt.Errorf("%w: task_progress state %q (want running)", ErrMalformed, clip(p.State))
	}
	return &p, nil
}

// Encode returns the payload as agents send it: the binary form (binary.go).
func (r *ResultMessage) Encode() []byte { return r.encodeBinary() }

// EncodeJSON returns the JSON form (what json.Marshal writes), for evidence and display; agents send
// the binary form.
func (r *ResultMessage) EncodeJSON() []byte { return encode(r) }

// DecodeResultMessage strictly decodes a task_result payload, binary or JSON form (form only; see
// VerifyResult).
func DecodeResultMessage(b []byte) (*ResultMessage, error) {
	var r ResultMessage
	switch {
	case len(b) > MaxMessage:
		return nil, fmt.Errorf("%w: task_result of %d bytes exceeds %d", ErrMalformed, len(b), MaxMessage)
	case hasMagic(b, magicResult):
		d, err := decodeResultBinary(b)
		if err != nil {
			return nil, err
		}
		r = *d
	default:
		if err := decodeStrict(b, &r, "task_result"); err != nil {
			return nil, err
		}
	}
	if err := CheckTaskID(r.TaskID); err != nil {
		return nil, err
	}
	if len(r.Evidence) == 0 || len(r.Delegation) == 0 {
		return nil, fmt.Errorf("%w: task_result without evidence or delegation", ErrMalformed)
	}
	return &r, nil
}

// Encode returns the JSON payload.
func (e *ErrorMessage) Encode() []byte { return encode(e) }

// DecodeError strictly decodes an error_response payload.
func DecodeError(b []byte) (*ErrorMessage, error) {
	var e ErrorMessage
	if err := decodeStrict(b, &e, "error_response"); err != nil {
		return nil, err
	}
	if err := CheckTaskID(e.TaskID); err != nil {
		return nil, err
	}
	if !handlerName.MatchString(e.Code) {
		return nil, fmt.Errorf("%w: error code %q", ErrMalformed, clip(e.Code))
	}
	if len(e.Message) > MaxErrorText {
		e.Message = e.Message[:MaxErrorText]
	}
	return &e, nil
}

// Encode returns the JSON document (what the evidence envelope carries).
func (d *ResultDoc) Encode() []byte { return encode(d) }

// DecodeResultDoc strictly decodes a result document.
func DecodeResultDoc(b []byte) (*ResultDoc, error) {
	var d ResultDoc
	if err := decodeStrict(b, &d, "result document"); err != nil {
		return nil, err
	}
	if err := CheckTaskID(d.TaskID); err != nil {
		return nil, err
	}
	if d.Status != ResultOK && d.Status != ResultFailed {
		return nil, fmt.Errorf("%w: result status %q (want ok or failed)", ErrMalformed, clip(d.Status))
	}
	if len(d.Output) > MaxOutput {
		return nil, fmt.Errorf("%w: output of %d bytes exceeds %d", ErrMalformed, len(d.Output), MaxOutput)
	}
	return &d, nil
}

// clip shortens untrusted text for error messages.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
