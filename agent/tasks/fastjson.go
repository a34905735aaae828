package tasks

import (
	"bytes"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/identity"
)

// A fast path for the task messages that carry bulk bytes (task_request's input, task_result's evidence).
// encoding/json validates and re-compacts whatever a MarshalJSON method returns and runs its scanner over
// every byte of a string when decoding: for a 64 KiB input that cost about half of the agent's CPU per
// message (docs/benchmarks.md, "Transports"). jsonObject writes exactly the bytes json.Marshal writes for
// these flat objects, and parses exactly that form; any other spelling (other field order, whitespace,
// escapes, null) is left to the strict encoding/json decoder, so what is accepted does not change.

// jfield is one field of a flat JSON object: a string (s) or a base64url byte string (b).
type jfield struct {
	name string
	s    *string
	b    *envelope.B64
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

// appendObject returns the object as json.Marshal would write it, or false when a string field needs
// escaping (the caller then uses json.Marshal).
func appendObject(fields []jfield) ([]byte, bool) {
	n := 2
	for _, f := range fields {
		n += len(f.name) + 6
		if f.s != nil {
			if !plain([]byte(*f.s)) {
				return nil, false
			}
			n += len(*f.s)
		} else {
			n += identity.Base64().EncodedLen(len(*f.b))
		}
	}
	out := make([]byte, 0, n)
	out = append(out, '{')
	for i, f := range fields {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, '"')
		out = append(out, f.name...)
		out = append(out, `":"`...)
		if f.s != nil {
			out = append(out, *f.s...)
		} else {
			out = identity.Base64().AppendEncode(out, *f.b)
		}
		out = append(out, '"')
	}
	return append(out, '}'), true
}

// parseObject fills fields from b when b is exactly appendObject's form of them; false means "not that
// form" (the caller decodes with encoding/json, which accepts or refuses it with a precise error).
func parseObject(b []byte, fields []jfield) bool {
	if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
		return false
	}
	b = b[1 : len(b)-1]
	for i, f := range fields {
		if i > 0 {
			if len(b) == 0 || b[0] != ',' {
				return false
			}
			b = b[1:]
		}
		if len(b) < len(f.name)+4 || b[0] != '"' || !bytes.HasPrefix(b[1:], []byte(f.name)) || !bytes.HasPrefix(b[1+len(f.name):], []byte(`":"`)) {
			return false
		}
		b = b[len(f.name)+4:]
		end := bytes.IndexByte(b, '"')
		if end < 0 {
			return false
		}
		v := b[:end]
		b = b[end+1:]
		if f.s != nil {
			if !plain(v) {
				return false
			}
			*f.s = string(v)
			continue
		}
		if !base64urlOnly(v) {
			return false // AppendDecode would skip \r and \n, which encoding/json refuses in a string
		}
		d, err := identity.Base64().AppendDecode(nil, v)
		if err != nil {
			return false
		}
		*f.b = d
	}
	return len(b) == 0
}

func (r *Request) fields() []jfield {
	return []jfield{{name: "task_id", s: &r.TaskID}, {name: "handler", s: &r.Handler}, {name: "input", b: &r.Input}}
}

func (r *ResultMessage) fields() []jfield {
	return []jfield{{name: "task_id", s: &r.TaskID}, {name: "evidence", b: &r.Evidence}, {name: "delegation", b: &r.Delegation}}
}

// base64urlOnly reports whether every byte of v is in the unpadded base64url alphabet.
func base64urlOnly(v []byte) bool {
	for _, c := range v {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
