package control

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzReadRequest: the server's line reader and strict request decoder never panic, respect the size
// limit, and an accepted request re-encodes to one that decodes to the same operation.
func FuzzReadRequest(f *testing.F) {
	f.Add([]byte(`{"v":1,"op":"status"}` + "\n"))
	f.Add([]byte(`{"v":1,"op":"task.get","args":{"task_id":"x","wait_ms":5}}`))
	f.Add([]byte(`{"v":1,"op":"x"} {}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		line, err := readLine(bytes.NewReader(in), 4096)
		if err != nil {
			return
		}
		if len(line) > 4096 {
			t.Fatalf("line of %d bytes passed a 4096-byte limit", len(line))
		}
		var r Request
		if decodeStrict(line, &r) != nil {
			return
		}
		b, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		var r2 Request
		if err := decodeStrict(b, &r2); err != nil || r2.Op != r.Op || r2.V != r.V {
			t.Fatalf("re-encoded request %s: %v", b, err)
		}
		var args map[string]any
		_ = DecodeArgs(r.Args, &args)
	})
}
