package handshake

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/custos-agent/custos/reason"
)

func rnd(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

const id1 = "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
const id2 = "p256:AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

func sampleHello(hybrid bool) *Hello {
	h := &Hello{Versions: []uint16{1}, InitiatorID: id1, ResponderID: id2, Head: Head{3, rnd(32)},
		Delegation: rnd(300), X25519: rnd(32), Nonce: rnd(32), Timestamp: 1_700_000_000}
	if hybrid {
		h.MLKEM = rnd(1184)
		h.PeerHead = Head{1, rnd(32)}
	}
	return h
}

func sampleChallenge(hybrid bool) *Challenge {
	c := &Challenge{Version: 1, HelloHash: rnd(32), ResponderID: id2, Head: Head{0, rnd(32)}, WantLog: true,
		Log: []byte("{}\n"), Delegation: rnd(300), X25519: rnd(32), Nonce: rnd(32), Timestamp: 1_700_000_001,
		Puzzle: []byte("p"), Signature: rnd(64)}
	if hybrid {
		c.MLKEMCipher = rnd(1088)
	}
	return c
}

func sampleResponse() *Response {
	return &Response{TranscriptHash: rnd(32), Log: []byte("{}\n"), Solution: []byte("s"), Grants: []byte("g"), Signature: rnd(72)}
}

func TestRoundTripAndStrictness(t *testing.T) {
	for _, hybrid := range []bool{false, true} {
		h := sampleHello(hybrid)
		if got, err := DecodeHello(h.Encode(), []uint16{1}); err != nil || !bytes.Equal(got.Encode(), h.Encode()) {
			t.Fatalf("hello: %v", err)
		}
		c := sampleChallenge(hybrid)
		if got, err := DecodeChallenge(c.Encode()); err != nil || !bytes.Equal(got.Encode(), c.Encode()) {
			t.Fatalf("challenge: %v", err)
		}
	}
	r := sampleResponse()
	if got, err := DecodeResponse(r.Encode()); err != nil || !bytes.Equal(got.Encode(), r.Encode()) {
		t.Fatalf("response: %v", err)
	}
	h := sampleHello(false)
	bad := map[string]struct {
		in   []byte
		code reason.Code
	}{
		"no common version":    {func() []byte { x := *h; x.Versions = []uint16{9, 2}; return x.Encode() }(), reason.UnknownVersion},
		"ascending versions":   {func() []byte { x := *h; x.Versions = []uint16{1, 2}; return x.Encode() }(), reason.Malformed},
		"short x25519":         {func() []byte { x := *h; x.X25519 = rnd(31); return x.Encode() }(), reason.Malformed},
		"odd ML-KEM key":       {func() []byte { x := *h; x.MLKEM = rnd(100); return x.Encode() }(), reason.Malformed},
		"peer head size":       {func() []byte { x := *h; x.PeerHead = Head{0, rnd(5)}; return x.Encode() }(), reason.Malformed},
		"generation sans head": {func() []byte { x := *h; x.PeerHead = Head{4, nil}; return x.Encode() }(), reason.Malformed},
		"trailing":             {append(h.Encode(), 0), reason.Malformed},
		"wrong frame type":     {sampleChallenge(false).Encode(), reason.UnexpectedMessage},
	}
	for name, c := range bad {
		if _, err := DecodeHello(c.in, []uint16{1}); !errors.Is(err, c.code) {
			t.Errorf("%s: got %v, want %s", name, err, c.code)
		}
	}
	if _, err := DecodeChallenge(append(sampleChallenge(false).EncodeUnsigned(), 0, 0, 0, 0)); !errors.Is(err, reason.Malformed) {
		t.Errorf("unsigned challenge: %v", err)
	}
	if _, err := DecodeAlert((&Alert{Code: "Bad Code"}).Encode()); !errors.Is(err, reason.Malformed) {
		t.Errorf("alert charset: %v", err)
	}
}

func TestTranscriptAndKeys(t *testing.T) {
	// Length prefixes keep frame boundaries: moving a byte between frames changes the hash.
	if bytes.Equal(Transcript([]byte("ab"), []byte("c")), Transcript([]byte("a"), []byte("bc"))) {
		t.Fatal("transcript is ambiguous")
	}
	k1, err := DeriveKeys([]byte("th"), bytes.Repeat([]byte{1}, 32), nil)
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := DeriveKeys([]byte("th"), bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32))
	k3, _ := DeriveKeys([]byte("tH"), bytes.Repeat([]byte{1}, 32), nil)
	if bytes.Equal(k1.I2R, k1.R2I) || bytes.Equal(k1.I2R, k2.I2R) || bytes.Equal(k1.I2R, k3.I2R) {
		t.Fatal("keys do not depend on direction, ML-KEM secret and transcript")
	}
	ss := bytes.Repeat([]byte{1}, 32)
	DeriveKeys([]byte("th"), ss, nil)
	if !bytes.Equal(ss, make([]byte, 32)) {
		t.Fatal("shared secret not wiped")
	}
}

func roundTrip[T interface{ Encode() []byte }](t *testing.T, b []byte, decode func([]byte) (T, error)) {
	m, err := decode(b)
	if err != nil {
		if reason.Of(err) == reason.Internal {
			t.Fatalf("error without a reason code: %v", err)
		}
		return
	}
	if !bytes.Equal(m.Encode(), b) {
		t.Fatalf("decode/encode is not the identity:\n in %x\nout %x", b, m.Encode())
	}
}

func FuzzHello(f *testing.F) {
	f.Add(sampleHello(false).Encode())
	f.Add(sampleHello(true).Encode())
	seedVectors(f, "hello")
	f.Fuzz(func(t *testing.T, b []byte) {
		roundTrip(t, b, func(b []byte) (*Hello, error) { return DecodeHello(b, []uint16{1}) })
	})
}

func FuzzChallenge(f *testing.F) {
	f.Add(sampleChallenge(false).Encode())
	f.Add(sampleChallenge(true).Encode())
	seedVectors(f, "challenge")
	f.Fuzz(func(t *testing.T, b []byte) { roundTrip(t, b, DecodeChallenge) })
}

func FuzzResponse(f *testing.F) {
	f.Add(sampleResponse().Encode())
	seedVectors(f, "response")
	f.Fuzz(func(t *testing.T, b []byte) { roundTrip(t, b, DecodeResponse) })
}

func FuzzEstablished(f *testing.F) {
	f.Add((&Established{SessionID: rnd(16), Reauth: 900, Expires: 1_700_000_000}).Encode())
	seedVectors(f, "established")
	f.Fuzz(func(t *testing.T, b []byte) { roundTrip(t, b, DecodeEstablished) })
}

func FuzzAlert(f *testing.F) {
	f.Add((&Alert{Code: reason.BadSignature}).Encode())
	seedVectors(f, "alert")
	f.Fuzz(func(t *testing.T, b []byte) { roundTrip(t, b, DecodeAlert) })
}
