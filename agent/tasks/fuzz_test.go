package tasks

import (
	"testing"
)

// FuzzDecodeMessages: the strict task message decoders never panic, and what they accept re-encodes to
// something they accept again with the same content.
func FuzzDecodeMessages(f *testing.F) {
	id := "AAAAAAAAAAAAAAAAAAAAAA"
	f.Add([]byte(`{"task_id":"` + id + `","handler":"echo","input":"aGk"}`))
	f.Add([]byte(`{"task_id":"` + id + `","handler":"echo","input":"aGk","on_behalf_of":"gw-key"}`))
	f.Add((&Request{TaskID: id, Handler: "echo", Input: []byte("hi"), OnBehalfOf: "gw-key"}).Encode())
	f.Add([]byte(`{"task_id":"` + id + `","status":"accepted"}`))
	f.Add([]byte(`{"task_id":"` + id + `","state":"running"}`))
	f.Add([]byte(`{"task_id":"` + id + `","evidence":"AA","delegation":"AA"}`))
	f.Add([]byte(`{"task_id":"` + id + `","code":"busy","message":"later"}`))
	f.Add([]byte(`{"task_id":"` + id + `","requester":"r","handler":"h","input_sha256":"","status":"ok","output":"","output_sha256":"","error":"","started":1,"finished":2}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		if r, err := DecodeRequest(in); err == nil {
			if r2, err := DecodeRequest(r.Encode()); err != nil || r2.TaskID != r.TaskID || string(r2.Input) != string(r.Input) || r2.OnBehalfOf != r.OnBehalfOf {
				t.Fatalf("request round trip: %v", err)
			}
		}
		if r, err := DecodeResponse(in); err == nil {
			if _, err := DecodeResponse(r.Encode()); err != nil {
				t.Fatal(err)
			}
		}
		if p, err := DecodeProgress(in); err == nil {
			if _, err := DecodeProgress(p.Encode()); err != nil {
				t.Fatal(err)
			}
		}
		if m, err := DecodeResultMessage(in); err == nil {
			if _, err := DecodeResultMessage(m.Encode()); err != nil {
				t.Fatal(err)
			}
		}
		if e, err := DecodeError(in); err == nil {
			if _, err := DecodeError(e.Encode()); err != nil {
				t.Fatal(err)
			}
		}
		if d, err := DecodeResultDoc(in); err == nil {
			if d2, err := DecodeResultDoc(d.Encode()); err != nil || d2.OutputSHA256 != d.OutputSHA256 {
				t.Fatalf("result document round trip: %v", err)
			}
		}
	})
}
