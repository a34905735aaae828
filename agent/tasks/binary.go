package tasks

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/custos-agent/custos/internal/wire"
)

// Binary forms of the two task messages that carry bulk bytes (ADR 0031): task_request (the input) and
// task_result (the evidence envelope). JSON needs base64, which grows the bytes by a third and costs an
// encoding pass on each side; these are the agent's wire encoding instead (internal/wire): a 4-byte
// magic, then length-prefixed fields. Encode writes the binary form; the decoders accept it and the JSON
// form (a payload starting with '{'), both strictly.
const (
	magicRequest = "CTQ1" // task_request: task_id, handler, input
	// magicRequestAttributed: task_request with an attribution (ADR 0100): task_id, handler, input,
	// on_behalf_of (non-empty). A request without one is written CTQ1, so each request has one encoding
	// and agents without ADR 0100 still read every request an agent sends for itself.
	magicRequestAttributed = "CTQ2"
	magicResult            = "CTR1" // task_result: task_id, evidence, delegation
	maxTaskIDLen           = 64     // generous: CheckTaskID then requires exactly 22 base64url characters
	maxHandler             = 64     // generous: ValidHandlerName then requires at most 32
)

func (r *Request) encodeBinary() []byte {
	if r.OnBehalfOf == "" {
		return wire.NewWriter(len(r.TaskID) + len(r.Handler) + len(r.Input) + 16).Raw([]byte(magicRequest)...).
			String(r.TaskID).String(r.Handler).Bytes(r.Input).Out()
	}
	return wire.NewWriter(len(r.TaskID) + len(r.Handler) + len(r.Input) + len(r.OnBehalfOf) + 20).Raw([]byte(magicRequestAttributed)...).
		String(r.TaskID).String(r.Handler).Bytes(r.Input).String(r.OnBehalfOf).Out()
}

// decodeRequestBinary decodes the binary form (CTQ1, or CTQ2 with an attribution); the input aliases b.
func decodeRequestBinary(b []byte) (*Request, error) {
	attributed := hasMagic(b, magicRequestAttributed)
	rd := wire.NewReader("task_request", b[len(magicRequest):])
	r := &Request{TaskID: rd.String("task_id", maxTaskIDLen), Handler: rd.String("handler", maxHandler), Input: rd.Bytes("input", MaxInput)}
	if attributed {
		r.OnBehalfOf = rd.String("on_behalf_of", MaxOnBehalfOf)
	}
	if err := rd.End(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if attributed && r.OnBehalfOf == "" {
		return nil, fmt.Errorf("%w: task_request %s with an empty on_behalf_of (an unattributed request is %s)", ErrMalformed, magicRequestAttributed, magicRequest)
	}
	return r, nil
}

func (r *ResultMessage) encodeBinary() []byte {
	return wire.NewWriter(len(r.TaskID) + len(r.Evidence) + len(r.Delegation) + 16).Raw([]byte(magicResult)...).
		String(r.TaskID).Bytes(r.Evidence).Bytes(r.Delegation).Out()
}

func decodeResultBinary(b []byte) (*ResultMessage, error) {
	rd := wire.NewReader("task_result", b[len(magicResult):])
	r := &ResultMessage{TaskID: rd.String("task_id", maxTaskIDLen), Evidence: rd.Bytes("evidence", MaxMessage), Delegation: rd.Bytes("delegation", MaxMessage)}
	if err := rd.End(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return r, nil
}

func hasMagic(b []byte, magic string) bool { return bytes.HasPrefix(b, []byte(magic)) }

// PeekTaskID returns the task_id of a task message payload of any type and form without decoding the
// rest ("" when there is none): the dispatcher needs it before it decides whether to decode the message,
// and a JSON decode of a 64 KiB input only to find the ID cost as much as the decode itself.
func PeekTaskID(payload []byte) string {
	var id string
	switch {
	case hasMagic(payload, magicRequest), hasMagic(payload, magicRequestAttributed):
		id = wire.NewReader("task_request", payload[len(magicRequest):]).String("task_id", maxTaskIDLen)
	case hasMagic(payload, magicResult):
		id = wire.NewReader("task_result", payload[len(magicResult):]).String("task_id", maxTaskIDLen)
	case bytes.HasPrefix(payload, []byte(`{"task_id":"`)):
		// Every task message's canonical JSON starts with the task ID.
		rest := payload[len(`{"task_id":"`):]
		if end := bytes.IndexByte(rest, '"'); end > 0 && plain(rest[:end]) {
			id = string(rest[:end])
		}
	default:
		var v struct {
			TaskID string `json:"task_id"`
		}
		if json.Unmarshal(payload, &v) == nil {
			id = v.TaskID
		}
	}
	return id
}

// plain reports whether json.Marshal writes s between quotes unchanged (printable ASCII without '"',
// '\\' and the HTML characters it escapes).
func plain(s []byte) bool {
	for _, c := range s {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}
