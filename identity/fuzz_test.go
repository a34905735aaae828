package identity

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
)

// Malleability property of the key event log decoders: decode then encode gives back the input bytes,
// or decoding fails. (A second spelling of an event would let two byte strings name one event.)

func fuzzSeeds(f *testing.F) Log {
	f.Helper()
	ctx := context.Background()
	var keys []keystore.Signer
	for range 3 {
		k, err := keystore.GenerateMemorySigner(keystore.Ed25519)
		if err != nil {
			f.Fatal(err)
		}
		keys = append(keys, k)
	}
	now := time.Unix(1_700_000_000, 0)
	e, err := Incept(ctx, keys[0], keys[1].Public(), keys[2].Public(), now)
	if err != nil {
		f.Fatal(err)
	}
	l := Log{Events: []Event{e}}
	st, err := l.Verify()
	if err != nil {
		f.Fatal(err)
	}
	r, err := Rotate(ctx, st, keys[0], keys[1], keys[0].Public(), now.Add(time.Hour))
	if err != nil {
		f.Fatal(err)
	}
	l.Events = append(l.Events, r)
	return l
}

func FuzzDecodeEvent(f *testing.F) {
	l := fuzzSeeds(f)
	for i := range l.Events {
		f.Add(l.Events[i].Encode())
	}
	f.Add([]byte(`{"v":1}`))
	seedVectors(f, true)
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeEvent(b)
		if err != nil {
			return
		}
		if !bytes.Equal(e.Encode(), b) {
			t.Fatalf("decode/encode is not the identity:\n in %q\nout %q", b, e.Encode())
		}
	})
}

func FuzzDecodeLog(f *testing.F) {
	l := fuzzSeeds(f)
	f.Add(l.Encode())
	f.Add(l.Events[0].Encode())
	f.Add([]byte{})
	seedVectors(f, false)
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeLog(b)
		if err != nil {
			return
		}
		if !bytes.Equal(got.Encode(), b) {
			t.Fatalf("decode/encode is not the identity:\n in %q\nout %q", b, got.Encode())
		}
	})
}
