package sealbox

import (
	"bytes"
	"errors"
	"testing"
)

func TestSealOpen(t *testing.T) {
	b, err := New(NewKey())
	if err != nil {
		t.Fatal(err)
	}
	place := []byte("peers/addr/abc")
	for _, pt := range [][]byte{nil, {}, []byte("10.0.0.7:4001"), bytes.Repeat([]byte{7}, 70000)} {
		s := b.Seal(place, pt)
		if len(s) != len(pt)+Overhead || !IsSealed(s) {
			t.Fatalf("sealed length %d for %d bytes of plaintext, want %d", len(s), len(pt), len(pt)+Overhead)
		}
		if len(pt) > 4 && bytes.Contains(s, pt[:5]) {
			t.Fatal("the plaintext shows in the sealed value")
		}
		got, err := b.Open(place, s)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("Open = %q, %v; want the plaintext back", got, err)
		}
	}
	if bytes.Equal(b.Seal(place, []byte("x")), b.Seal(place, []byte("x"))) {
		t.Fatal("two seals of one value are equal: the nonce is not fresh")
	}
}

func TestOpenRefuses(t *testing.T) {
	b, _ := New(NewKey())
	other, _ := New(NewKey())
	place := []byte("tasks/in/1")
	s := b.Seal(place, []byte("task input"))
	cases := map[string]struct {
		box   *Box
		place []byte
		v     []byte
	}{
		"another key":   {other, place, s},
		"another place": {b, []byte("tasks/in/2"), s},
		"plaintext":     {b, place, []byte("task input that was never sealed at all, long enough")},
		"truncated":     {b, place, s[:len(s)-1]},
		"short":         {b, place, s[:Overhead-1]},
		"empty":         {b, place, nil},
	}
	for i := range s {
		v := bytes.Clone(s)
		v[i] ^= 0x01
		if _, err := b.Open(place, v); !errors.Is(err, ErrOpen) {
			t.Fatalf("byte %d flipped: Open err = %v, want ErrOpen", i, err)
		}
	}
	for name, c := range cases {
		if _, err := c.box.Open(c.place, c.v); !errors.Is(err, ErrOpen) {
			t.Errorf("%s: Open err = %v, want ErrOpen", name, err)
		}
	}
}

func TestNewKeySize(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33, 64} {
		if _, err := New(make([]byte, n)); err == nil {
			t.Errorf("New accepted a %d-byte key", n)
		}
	}
}

func TestCloseWipes(t *testing.T) {
	k := NewKey()
	b, _ := New(k)
	b.Close()
	if !bytes.Equal(b.key, make([]byte, KeySize)) {
		t.Fatal("Close left the data key in memory")
	}
}

// FuzzOpen: Open never panics, and nothing but a value Seal made for the place opens.
func FuzzOpen(f *testing.F) {
	b, _ := New(bytes.Repeat([]byte{1}, KeySize))
	f.Add([]byte("p"), b.Seal([]byte("p"), []byte("hello")))
	f.Add([]byte("p"), []byte("cs1"))
	f.Fuzz(func(t *testing.T, place, v []byte) {
		pt, err := b.Open(place, v)
		if err != nil {
			return
		}
		// A value that opens must re-seal and open to the same plaintext; forging one by chance would be
		// a Poly1305 forgery, so in practice only the seeds reach here.
		if got, err := b.Open(place, b.Seal(place, pt)); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("round trip failed: %v", err)
		}
	})
}
