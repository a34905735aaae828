package binding

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
	"time"
)

func sample() Binding {
	return Binding{Transport: "tcp", Key: ed25519.PublicKey(bytes.Repeat([]byte{7}, 32)),
		AgentID: "ed25519:AAAA", NotAfter: time.Unix(1_900_000_000, 0).UTC(), Proof: []byte("sig")}
}

func TestRoundTripAndStrictness(t *testing.T) {
	b := sample()
	raw := b.Encode()
	got, err := Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got.Transport != b.Transport || !got.Key.Equal(b.Key) || got.AgentID != b.AgentID || !got.NotAfter.Equal(b.NotAfter) || !bytes.Equal(got.Proof, b.Proof) {
		t.Fatalf("round trip: %+v", got)
	}
	mod := func(f func(*Binding)) []byte { c := sample(); f(&c); return c.Encode() }
	tests := []struct {
		name string
		raw  []byte
		want string
	}{
		{"magic", append([]byte("XTB1"), raw[4:]...), "does not start"},
		{"trailing", append(append([]byte(nil), raw...), 1), "trailing"},
		{"truncated", raw[:len(raw)-2], "claims"},
		{"short key", mod(func(c *Binding) { c.Key = c.Key[:31] }), "key is 31 bytes"},
		{"bad transport", mod(func(c *Binding) { c.Transport = "TCP" }), "transport name"},
		{"control char in ID", mod(func(c *Binding) { c.AgentID = "ed25519:\nX" }), "control character"},
		{"no proof", mod(func(c *Binding) { c.Proof = nil }), "proof is 0 bytes"},
		{"zero expiry", mod(func(c *Binding) { c.NotAfter = time.Unix(0, 0) }), "not a positive"},
		{"huge", make([]byte, 9000), "limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(tc.raw)
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrMalformed mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := CheckFor(raw, "ws", b.Key); err == nil || !strings.Contains(err.Error(), "not \"ws\"") {
		t.Errorf("CheckFor other transport: %v", err)
	}
	if _, err := CheckFor(raw, "tcp", make([]byte, 32)); err == nil || !strings.Contains(err.Error(), "another key") {
		t.Errorf("CheckFor other key: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(sample().Encode())
	f.Add([]byte("CTB1"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, err := Decode(raw)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to the same bytes (one encoding per binding).
		if !bytes.Equal(b.Encode(), raw) {
			t.Fatalf("decode/encode not canonical")
		}
	})
}
