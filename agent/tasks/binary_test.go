package tasks

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// TestBinaryTaskMessages: Encode writes the binary form; both forms decode to the same message; damaged
// binary forms are refused with the field that is wrong.
func TestBinaryTaskMessages(t *testing.T) {
	id := NewTaskID()
	req := &Request{TaskID: id, Handler: "sha256", Input: bytes.Repeat([]byte{7}, 70000)}
	bin := req.Encode()
	if !bytes.HasPrefix(bin, []byte(magicRequest)) || len(bin) != 4+4+len(id)+4+6+4+70000 {
		t.Fatalf("binary form of %d bytes, prefix %q", len(bin), bin[:4])
	}
	for _, in := range [][]byte{bin, req.EncodeJSON()} {
		got, err := DecodeRequest(in)
		if err != nil || got.TaskID != id || got.Handler != "sha256" || !bytes.Equal(got.Input, req.Input) {
			t.Fatalf("decode %.10q: %v", in, err)
		}
	}
	res := &ResultMessage{TaskID: id, Evidence: []byte("evidence"), Delegation: []byte("delegation")}
	for _, in := range [][]byte{res.Encode(), res.EncodeJSON()} {
		got, err := DecodeResultMessage(in)
		if err != nil || got.TaskID != id || string(got.Evidence) != "evidence" || string(got.Delegation) != "delegation" {
			t.Fatalf("decode result %.10q: %v", in, err)
		}
	}
	for _, c := range []struct {
		name string
		in   []byte
		why  string
	}{
		{"truncated", bin[:len(bin)-1], "input"},
		{"trailing byte", append(append([]byte{}, bin...), 0), "trailing"},
		{"bad task ID", (&Request{TaskID: "AAAA", Handler: "echo"}).Encode(), "task ID"},
		{"bad handler", (&Request{TaskID: id, Handler: "Echo"}).Encode(), "handler name"},
		{"result without evidence", (&ResultMessage{TaskID: id, Delegation: []byte("d")}).Encode(), "without evidence"},
	} {
		_, err := DecodeRequest(c.in)
		if strings.HasPrefix(c.name, "result") {
			_, err = DecodeResultMessage(c.in)
		}
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: %v, want ErrMalformed naming %q", c.name, err, c.why)
		}
	}
}

// TestAttributedRequest: a request with on_behalf_of is written CTQ2 (the attribution after the input),
// one without CTQ1 as before; both forms keep it; bad attributions are refused on decoding (ADR 0100).
func TestAttributedRequest(t *testing.T) {
	id := "AAAAAAAAAAAAAAAAAAAAAA"
	req := &Request{TaskID: id, Handler: "echo", Input: []byte("hi"), OnBehalfOf: "gw-key.1"}
	// The vector of docs/protocol.md ("task_request, binary form").
	const vector = "435451320000001641414141414141414141414141414141414141414141000000046563686f00000002686900000008" +
		"67772d6b65792e31"
	if got := hex.EncodeToString(req.Encode()); got != vector {
		t.Fatalf("CTQ2 form %s, want %s", got, vector)
	}
	for _, in := range [][]byte{req.Encode(), req.EncodeJSON()} {
		got, err := DecodeRequest(in)
		if err != nil || got.OnBehalfOf != "gw-key.1" || got.TaskID != id {
			t.Fatalf("decode %.12q: %+v %v", in, got, err)
		}
	}
	plainReq := &Request{TaskID: id, Handler: "echo", Input: []byte("hi")}
	if b := plainReq.Encode(); !bytes.HasPrefix(b, []byte(magicRequest)) || bytes.Contains(plainReq.EncodeJSON(), []byte("on_behalf_of")) {
		t.Fatalf("an unattributed request changed form: %q / %s", b, plainReq.EncodeJSON())
	}
	if got := PeekTaskID(req.Encode()); got != id {
		t.Fatalf("PeekTaskID of CTQ2: %q", got)
	}
	emptyCTQ2 := append([]byte(magicRequestAttributed), plainReq.Encode()[4:]...)
	emptyCTQ2 = append(emptyCTQ2, 0, 0, 0, 0)
	for _, c := range []struct {
		name string
		in   []byte
		why  string
	}{
		{"upper case", (&Request{TaskID: id, Handler: "echo", OnBehalfOf: "GW"}).Encode(), "on_behalf_of"},
		{"space", (&Request{TaskID: id, Handler: "echo", OnBehalfOf: "a b"}).Encode(), "on_behalf_of"},
		{"leading dot", (&Request{TaskID: id, Handler: "echo", OnBehalfOf: ".a"}).Encode(), "on_behalf_of"},
		{"too long", (&Request{TaskID: id, Handler: "echo", OnBehalfOf: strings.Repeat("a", 65)}).Encode(), "on_behalf_of"},
		{"too long JSON", (&Request{TaskID: id, Handler: "echo", OnBehalfOf: strings.Repeat("a", 65)}).EncodeJSON(), "on_behalf_of"},
		{"empty in CTQ2", emptyCTQ2, "empty on_behalf_of"},
		{"CTQ2 without it", append([]byte(magicRequestAttributed), plainReq.Encode()[4:]...), "on_behalf_of"},
	} {
		if _, err := DecodeRequest(c.in); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: %v, want ErrMalformed naming %q", c.name, err, c.why)
		}
	}
}

// FuzzBinaryTaskMessages: the binary decoders never panic, and what they accept re-encodes to the same
// bytes (one encoding per message).
func FuzzBinaryTaskMessages(f *testing.F) {
	id := "AAAAAAAAAAAAAAAAAAAAAA"
	f.Add((&Request{TaskID: id, Handler: "echo", Input: []byte("hi")}).Encode())
	f.Add((&Request{TaskID: id, Handler: "echo", Input: []byte("hi"), OnBehalfOf: "gw-key"}).Encode())
	f.Add((&ResultMessage{TaskID: id, Evidence: []byte("e"), Delegation: []byte("d")}).Encode())
	f.Fuzz(func(t *testing.T, in []byte) {
		if r, err := DecodeRequest(in); err == nil && (hasMagic(in, magicRequest) || hasMagic(in, magicRequestAttributed)) && !bytes.Equal(r.Encode(), in) {
			t.Fatalf("request re-encodes to %q", r.Encode())
		}
		if m, err := DecodeResultMessage(in); err == nil && hasMagic(in, magicResult) && !bytes.Equal(m.Encode(), in) {
			t.Fatalf("result re-encodes to %q", m.Encode())
		}
	})
}

// TestPeekTaskID: the task ID of every task message type, in both forms, without decoding the rest.
func TestPeekTaskID(t *testing.T) {
	id := NewTaskID()
	for name, payload := range map[string][]byte{
		"request binary":  (&Request{TaskID: id, Handler: "echo", Input: []byte("x")}).Encode(),
		"request JSON":    (&Request{TaskID: id, Handler: "echo", Input: []byte("x")}).EncodeJSON(),
		"result binary":   (&ResultMessage{TaskID: id, Evidence: []byte("e"), Delegation: []byte("d")}).Encode(),
		"response":        (&Response{TaskID: id, Status: StatusAccepted}).Encode(),
		"progress":        (&Progress{TaskID: id, State: "running"}).Encode(),
		"error":           (&ErrorMessage{TaskID: id, Code: CodeBusy, Message: "later"}).Encode(),
		"JSON, reordered": []byte(`{"handler":"echo","task_id":"` + id + `","input":""}`),
	} {
		if got := PeekTaskID(payload); got != id {
			t.Errorf("%s: %q, want %q", name, got, id)
		}
	}
	for _, junk := range [][]byte{nil, []byte("CTQ1"), []byte(`{"task_id":`), []byte("not json")} {
		if got := PeekTaskID(junk); got != "" {
			t.Errorf("%q: %q, want none", junk, got)
		}
	}
}
