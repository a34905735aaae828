package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/custos-agent/custos/reason"
)

func TestStrict(t *testing.T) {
	good := NewWriter(0).String("abc").Uint64(2).Out()
	cases := map[string]struct {
		in   []byte
		want string
	}{
		"trailing":   {append(append([]byte{}, good...), 0), "trailing"},
		"short len":  {good[:2], "ends before"},
		"short body": {good[:5], "ends inside"},
		"too long":   {NewWriter(0).String("abcdef").Uint64(2).Out(), "exceeds the limit"},
		"int size":   {NewWriter(0).String("abc").Bytes([]byte{1}).Out(), "must be 8 bytes"},
	}
	for name, c := range cases {
		r := NewReader("test", c.in)
		r.String("s", 4)
		r.Uint64("n")
		err := r.End()
		if !errors.Is(err, reason.Malformed) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want malformed %q", name, err, c.want)
		}
	}
	r := NewReader("test", NewWriter(0).Uint64(2).Out())
	r.Bool("b")
	if err := r.End(); err == nil || !strings.Contains(err.Error(), "0 or 1") {
		t.Errorf("bool 2: %v", err)
	}
	r = NewReader("test", good)
	if s, n := r.String("s", 4), r.Uint64("n"); r.End() != nil || s != "abc" || n != 2 {
		t.Fatal("good input refused")
	}
}

// TestHashFieldsMatchWriter: HashBytes and HashUint64 write exactly the bytes Writer.Bytes and
// Writer.Uint64 append, so a hashed encoding and a sent one cannot drift apart.
func TestHashFieldsMatchWriter(t *testing.T) {
	for _, b := range [][]byte{nil, {}, []byte("x"), bytes.Repeat([]byte{0xff}, 300)} {
		var got bytes.Buffer
		HashBytes(&got, b)
		HashUint64(&got, uint64(len(b))<<40|7)
		want := NewWriter(0).Bytes(b).Uint64(uint64(len(b))<<40 | 7).Out()
		if !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("len %d: hashed %x, written %x", len(b), got.Bytes(), want)
		}
	}
}
