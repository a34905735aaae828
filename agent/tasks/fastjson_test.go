package tasks

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"testing"
)

// TestFastJSONIsEncodingJSON: EncodeJSON writes exactly json.Marshal's bytes (the fast path when no field
// needs escaping, json.Marshal itself otherwise), and the decoders give the same values whichever path
// they take.
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

// FuzzFastJSON: whatever the fast path accepts, encoding/json's strict decoder accepts with the same
// values (so the fast path never widens what is accepted), and it re-encodes to the same bytes.
func FuzzFastJSON(f *testing.F) {
	id := "AAAAAAAAAAAAAAAAAAAAAA"
	f.Add([]byte(`{"task_id":"` + id + `","handler":"echo","input":"aGk"}`))
	f.Add([]byte(`{"task_id":"` + id + `","evidence":"AA","delegation":"AA"}`))
	f.Add([]byte(`{"task_id":"` + id + `","handler":"e\"cho","input":""}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		var fast Request
		if parseObject(in, fast.fields()) {
			var slow Request
			if err := decodeStrict(in, &slow, "task_request"); err != nil {
				t.Fatalf("fast path accepted what encoding/json refuses: %v", err)
			}
			if fast.TaskID != slow.TaskID || fast.Handler != slow.Handler || !bytes.Equal(fast.Input, slow.Input) {
				t.Fatalf("fast %+v, encoding/json %+v", fast, slow)
			}
			if !bytes.Equal(fast.EncodeJSON(), in) {
				t.Fatalf("re-encoding gives %q", fast.EncodeJSON())
			}
		}
		var fm ResultMessage
		if parseObject(in, fm.fields()) {
			var slow ResultMessage
			if err := decodeStrict(in, &slow, "task_result"); err != nil {
				t.Fatalf("fast path accepted what encoding/json refuses: %v", err)
			}
			if fm.TaskID != slow.TaskID || !bytes.Equal(fm.Evidence, slow.Evidence) || !bytes.Equal(fm.Delegation, slow.Delegation) {
				t.Fatalf("fast %+v, encoding/json %+v", fm, slow)
			}
		}
	})
}
