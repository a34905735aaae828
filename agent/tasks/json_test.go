package tasks

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"testing"
)

// TestFastJSONIsEncodingJSON: EncodeJSON writes exactly json.Marshal's bytes, and the decoders give the
// same values for every spelling encoding/json accepts. (The hand-written fast path it once checked is
// gone: task payloads travel in the binary form, JSON is for evidence and display.)
func TestFastJSONIsEncodingJSON(t *testing.T) {
	big := make([]byte, 64<<10)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	id := "AAAAAAAAAAAAAAAAAAAAAA"
	reqs := []*Request{
		{TaskID: id, Handler: "sha256", Input: big},
		{TaskID: id, Handler: "echo", Input: []byte("x")},
		{TaskID: id, Handler: "echo"},                       // nil input: ""
		{TaskID: id, Handler: "a<b>&c", Input: []byte("x")}, // needs escaping: json.Marshal's own output
		{TaskID: "\x01\"\\", Handler: "echo", Input: []byte("x")},
	}
	for _, r := range reqs {
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if got := r.EncodeJSON(); !bytes.Equal(got, want) {
			t.Fatalf("Encode of %q/%q differs from json.Marshal:\n%.200s\n%.200s", r.TaskID, r.Handler, got, want)
		}
	}
	for _, m := range []*ResultMessage{{TaskID: id, Evidence: big, Delegation: []byte{1, 2, 3}}, {TaskID: id}} {
		want, _ := json.Marshal(m)
		if got := m.EncodeJSON(); !bytes.Equal(got, want) {
			t.Fatalf("ResultMessage Encode differs from json.Marshal:\n%.200s\n%.200s", got, want)
		}
	}
	// Decoding: the canonical form (fast path) and other spellings of the same object (encoding/json)
	// give the same request; what the strict decoder refuses is still refused, with its reason.
	canon := reqs[0].EncodeJSON()
	spaced := append([]byte(`{ "task_id" : "`+id+`", "handler":"sha256", "input":"`), canon[bytes.LastIndex(canon, []byte(`"input":"`))+9:]...)
	reordered := []byte(`{"handler":"echo","input":"eA","task_id":"` + id + `"}`)
	for _, in := range [][]byte{canon, spaced, reordered} {
		r, err := DecodeRequest(in)
		if err != nil || r.TaskID != id {
			t.Fatalf("decode %.80s: %+v %v", in, r, err)
		}
	}
	if r, _ := DecodeRequest(canon); !bytes.Equal(r.Input, big) {
		t.Fatal("the fast path decoded another input")
	}
	for _, c := range []struct {
		in, why string
	}{
		{`{"task_id":"` + id + `","handler":"echo","input":"eA=="}`, "base64url"},         // padding
		{`{"task_id":"` + id + `","handler":"echo","input":"e+A"}`, "base64url"},          // standard alphabet
		{`{"task_id":"` + id + `","handler":"echo","input":"eA","x":1}`, "unknown field"}, // extra field
		{`{"task_id":"` + id + `","handler":"echo","input":"eA"}{}`, "trailing data"},
		{`{"task_id":"AAAA","handler":"echo","input":"eA"}`, "task ID"},
		{`{"task_id":"` + id + `","handler":"Echo","input":"eA"}`, "handler name"},
		{`{"task_id":"` + id + `","handler":"echo","input":"aG` + "\n" + `k"}`, "invalid character"}, // base64 decoders skip \n
		{`{"task_id":"` + id + `","handler":"echo","input":"aG` + "\r" + `k"}`, "invalid character"},
	} {
		_, err := DecodeRequest([]byte(c.in))
		if !errors.Is(err, ErrMalformed) || !bytes.Contains([]byte(err.Error()), []byte(c.why)) {
			t.Errorf("%s: %v, want ErrMalformed naming %q", c.in, err, c.why)
		}
	}
}
