package envelope

import (
	"encoding/json"
	"errors"

	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/reason"
)

// B64 is a byte string whose JSON form is a strict unpadded base64url string.
type B64 []byte

// MarshalJSON encodes b as an unpadded base64url JSON string.
func (b B64) MarshalJSON() ([]byte, error) {
	out := make([]byte, 0, b64.EncodedLen(len(b))+2)
	out = append(out, '"')
	out = b64.AppendEncode(out, b)
	return append(out, '"'), nil
}

// UnmarshalJSON decodes an unpadded base64url JSON string; padding and the standard alphabet are refused.
func (b *B64) UnmarshalJSON(in []byte) error {
	if len(in) < 2 || in[0] != '"' || in[len(in)-1] != '"' {
		return errors.New("want a base64url string")
	}
	v, err := b64.AppendDecode(nil, in[1:len(in)-1])
	if err != nil {
		return errors.New("not unpadded base64url (RFC 4648 section 5, no '=' padding)")
	}
	*b = v
	return nil
}

// EncodeJSON is the canonical JSON form: compact, fields in the order of the seed's format, byte
// strings as unpadded base64url.
func (e *Envelope) EncodeJSON() []byte {
	b, err := json.Marshal(e)
	if err != nil {
		panic("envelope: marshal: " + err.Error()) // plain fields only: cannot fail
	}
	return b
}

// DecodeJSON strictly decodes the canonical JSON form: size limit, no unknown or missing fields, no
// trailing data, known version and message type, and the input must be exactly the canonical encoding
// (compact, field order as EncodeJSON writes it) so that the form has one spelling per envelope.
func DecodeJSON(b []byte) (*Envelope, error) {
	if len(b) > MaxJSON {
		return nil, reason.New(reason.OversizedFrame, "JSON envelope of %d bytes exceeds %d", len(b), MaxJSON)
	}
	var e Envelope
	if err := strictjson.Decode(b, &e, 0); err != nil {
		return nil, reason.Wrap(reason.Malformed, err, "JSON envelope")
	}
	if err := e.check(); err != nil {
		return nil, err
	}
	if strictjson.Canonical(b, e.EncodeJSON()) != nil {
		return nil, reason.New(reason.Malformed, "JSON envelope is not in canonical form (compact, every field present in the documented order, base64url without padding); do not reformat envelopes")
	}
	return &e, nil
}
