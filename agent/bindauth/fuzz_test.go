package bindauth

import (
	"bytes"
	"testing"
)

// FuzzDecodeProof: every accepted binding proof re-encodes to the same bytes (one encoding per value).
func FuzzDecodeProof(f *testing.F) {
	f.Add((&Proof{Delegation: []byte("d"), Signature: []byte("s"), KeyLog: []byte("l")}).Encode())
	f.Add((&Proof{Delegation: []byte("d"), Signature: []byte("s")}).Encode())
	f.Add([]byte("CBP1"))
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := DecodeProof(in)
		if err != nil {
			return
		}
		if !bytes.Equal(p.Encode(), in) {
			t.Fatalf("proof %x re-encodes to %x", in, p.Encode())
		}
	})
}
