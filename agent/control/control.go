// Package control is the agent daemon's local control API: a unix stream socket (<home>/control.sock,
// mode 0600 in the 0700 home directory) over which agentctl asks the running daemon for its status, its
// peers, to connect to a peer, and to submit tasks and fetch their results.
//
// Protocol (version 1): a client connects, writes one request, a JSON object on one line (at most
// MaxRequest bytes, newline-terminated), and reads one response, a JSON object on one line (at most
// MaxResponse bytes); then the connection is closed. One request per connection keeps the server simple
// and lets a long wait (task result --wait) hold its own connection.
//
//	request:  {"v":1,"op":"task.submit","args":{...}}
//	response: {"ok":true,"result":{...}}
//	          {"ok":false,"error":{"code":"bad_request","message":"..."}}
//
// Requests are strictly decoded (no unknown fields, no trailing data). The server reads the caller's
// uid, gid and pid from the kernel (SO_PEERCRED, rbac.PeerCred), never from the request; every request is
// authorized on them (by default: the daemon's own uid or root) and reported to an audit hook with them.
// Before that, a caller that is a transport plugin process or descends from one is refused without its
// request being read (Config.RefuseCaller, RefusePluginProcesses): the socket serves people, not plugins.
package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/reason"
)

// Version is the protocol version of requests.
const Version = 1

// Limits.
const (
	// MaxRequest bounds one request line (a task input of 512 KiB in base64url fits with room).
	MaxRequest = 2 << 20
	// MaxResponse bounds one response line (a result with its evidence and key event log).
	MaxResponse = 8 << 20
)

// Error codes of a failed response: the control domain of the one failure-code registry
// (reason/registry.go), which gives each its meaning.
const (
	CodeBadRequest  = string(reason.BadRequest)  // "bad_request": the request does not decode or its arguments are invalid
	CodeUnknownOp   = string(reason.UnknownOp)   // "unknown_op": no such operation
	CodeDenied      = string(reason.Denied)      // "denied": the caller may not do this
	CodeNotFound    = string(reason.NotFound)    // "not_found": the task or peer does not exist
	CodeUnavailable = string(reason.Unavailable) // "unavailable": the daemon cannot do it now (shutting down, no transport)
	CodeTimeout     = string(reason.Timeout)     // "timeout": a wait ran out
	CodeFailed      = string(reason.Failed)      // "failed": the operation failed (the message says why)
	CodeTooLarge    = string(reason.TooLarge)    // "too_large": the request exceeds MaxRequest
	CodeRefused     = string(reason.PeerRefused) // "peer_refused": a peer could not be reached or refused (connect)
	// CodeErasureIncomplete: "erasure_incomplete": data.erase removed part of a subject's data (ADR 0092).
	CodeErasureIncomplete = string(reason.ErasureIncomplete)
)

// Request is one control request.
type Request struct {
	V    int             `json:"v"`
	Op   string          `json:"op"`
	Args json.RawMessage `json:"args,omitempty"`
}

// Response is the answer to one request.
type Response struct {
	OK     bool            `json:"ok"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Error is a failed request: a stable code and a sentence for people.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Errorf makes an *Error with code.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code of an *Error in err's chain, or "" when there is none.
func CodeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// DecodeArgs strictly decodes a request's arguments into v (no unknown fields, no trailing data). Empty
// arguments decode as {}.
func DecodeArgs(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		raw = json.RawMessage("{}")
	}
	if err := strictjson.Decode(raw, v, 0); err != nil {
		return Errorf(CodeBadRequest, "arguments: %v", err)
	}
	return nil
}

// readLine reads one newline-terminated line of at most max bytes (the newline excluded). A final line
// without a newline is accepted at EOF.
func readLine(r io.Reader, max int) ([]byte, error) {
	var buf bytes.Buffer
	chunk := make([]byte, 32<<10)
	for {
		n, err := r.Read(chunk)
		if i := bytes.IndexByte(chunk[:n], '\n'); i >= 0 {
			buf.Write(chunk[:i])
			if buf.Len() > max {
				return nil, Errorf(CodeTooLarge, "message of more than %d bytes", max)
			}
			return buf.Bytes(), nil
		}
		buf.Write(chunk[:n])
		if buf.Len() > max {
			return nil, Errorf(CodeTooLarge, "message of more than %d bytes", max)
		}
		if err != nil {
			if errors.Is(err, io.EOF) && buf.Len() > 0 {
				return buf.Bytes(), nil
			}
			return nil, err
		}
	}
}

// decodeStrict decodes one request or response line (internal/strictjson: unknown fields and trailing
// data refused; the size was bounded when the line was read).
func decodeStrict(b []byte, v any) error { return strictjson.Decode(b, v, 0) }
