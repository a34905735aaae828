package envelope

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/replay"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

var ctx = context.Background()

type party struct {
	id  *agenttest.Identity
	mgr *delegation.Manager
	k   *delegation.Keys
}

func newParty(t testing.TB, clock *agenttest.Clock, kem suite.KEM) *party {
	t.Helper()
	id := agenttest.NewIdentity(t, keystore.Ed25519)
	m, err := delegation.NewManager(ctx, delegation.Config{Identity: id.Current(), State: id.State, Clock: clock.Now, KEM: kem})
	if err != nil {
		t.Fatal(err)
	}
	k, err := m.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &party{id: id, mgr: m, k: k}
}

func (p *party) ID() string { return p.id.ID().String() }

type resolver map[string]*party

func (r resolver) OperationalKeys(_ context.Context, sender string, at time.Time) ([]keystore.PublicKey, error) {
	p, ok := r[sender]
	if !ok {
		return nil, nil
	}
	var out []keystore.PublicKey
	for _, k := range p.mgr.Live() {
		v, err := delegation.Verify(p.id.ID(), p.id.State, k.Delegation, at)
		if err == nil {
			out = append(out, v.OpKey)
		}
	}
	return out, nil
}

func sessionKey(t testing.TB) *suite.AEAD {
	a, err := suite.NewAEAD(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestRoundTrips(t *testing.T) {
	clock := agenttest.NewClock(agenttest.Epoch.Add(time.Hour))
	alice, bob := newParty(t, clock, suite.KEMX25519), newParty(t, clock, suite.KEMXWing)
	h := NewHeader(alice.ID(), bob.ID(), TaskRequest, clock.Now())
	msg := []byte(`{"task":"sha256","input":"hello"}`)
	nonce := make([]byte, 12)
	nonce[11] = 5
	sess, err := SealSession(ctx, h, msg, sessionKey(t), nonce, alice.k.Signer())
	if err != nil {
		t.Fatal(err)
	}
	hp, err := SealHPKE(ctx, NewHeader(alice.ID(), bob.ID(), TaskResult, clock.Now()), msg, bob.k.Delegation.KEM, bob.k.Delegation.EncKey, alice.k.Signer())
	if err != nil {
		t.Fatal(err)
	}
	plain, err := SealPlain(ctx, NewHeader(alice.ID(), bob.ID(), Feedback, clock.Now()), msg, alice.k.Signer())
	if err != nil {
		t.Fatal(err)
	}
	open := map[Cipher]func(e *Envelope) ([]byte, error){
		AES256GCM: func(e *Envelope) ([]byte, error) { return e.OpenSession(sessionKey(t)) },
		HPKEXWing: func(e *Envelope) ([]byte, error) { return e.OpenHPKE(bob.k.Encryption()) },
		None:      func(e *Envelope) ([]byte, error) { return e.Plaintext() },
	}
	for _, e := range []*Envelope{sess, hp, plain} {
		t.Run(string(e.Payload.Cipher), func(t *testing.T) {
			bin, js := e.EncodeBinary(), e.EncodeJSON()
			fromBin, err := DecodeBinary(bin)
			if err != nil {
				t.Fatal(err)
			}
			fromJSON, err := DecodeJSON(js)
			if err != nil {
				t.Fatalf("%v\n%s", err, js)
			}
			if !bytes.Equal(fromJSON.EncodeBinary(), bin) || !bytes.Equal(fromBin.EncodeJSON(), js) {
				t.Fatal("the JSON and binary forms do not carry the same envelope")
			}
			for _, d := range []*Envelope{fromBin, fromJSON} {
				if err := d.Verify(alice.k.Signer().Public()); err != nil {
					t.Fatal(err)
				}
				pt, err := open[e.Payload.Cipher](d)
				if err != nil || !bytes.Equal(pt, msg) {
					t.Fatalf("open: %q %v", pt, err)
				}
				if err := d.Verify(bob.k.Signer().Public()); !errors.Is(err, reason.BadSignature) {
					t.Fatalf("verified under the wrong key: %v", err)
				}
			}
		})
	}
	// The header is the AAD: a header changed and re-signed by the sender does not decrypt.
	moved := *sess
	moved.Header.MessageType = TaskResult
	if err := moved.Sign(ctx, alice.k.Signer()); err != nil {
		t.Fatal(err)
	}
	if _, err := moved.OpenSession(sessionKey(t)); !errors.Is(err, reason.DecryptFailed) {
		t.Fatalf("header not bound as AAD: %v", err)
	}
	// Every signed field is covered.
	for name, f := range map[string]func(e *Envelope){
		"timestamp": func(e *Envelope) { e.Header.Timestamp++ },
		"recipient": func(e *Envelope) { e.Header.RecipientID = alice.ID() },
		"type":      func(e *Envelope) { e.Header.MessageType = Heartbeat },
		"id":        func(e *Envelope) { e.Header.MessageID = NewMessageID() },
		"nonce":     func(e *Envelope) { e.Payload.Nonce = append(B64{}, make([]byte, 12)...) },
		"data":      func(e *Envelope) { e.Payload.Data = append(B64{1}, e.Payload.Data[1:]...) },
	} {
		c := *sess
		f(&c)
		if err := c.Verify(alice.k.Signer().Public()); !errors.Is(err, reason.BadSignature) {
			t.Errorf("%s changed, signature still verifies: %v", name, err)
		}
	}
}

func TestStrictDecoding(t *testing.T) {
	clock := agenttest.NewClock(agenttest.Epoch.Add(time.Hour))
	alice, bob := newParty(t, clock, suite.KEMX25519), newParty(t, clock, suite.KEMX25519)
	e, err := SealSession(ctx, NewHeader(alice.ID(), bob.ID(), TaskRequest, clock.Now()), []byte("x"), sessionKey(t), make([]byte, 12), alice.k.Signer())
	if err != nil {
		t.Fatal(err)
	}
	js := string(e.EncodeJSON())
	sig := `"signature":"` + b64.EncodeToString(e.Signature) + `"`
	jsonCases := map[string]struct {
		in   string
		code reason.Code
		msg  string
	}{
		"unknown version":   {strings.Replace(js, `"version":"1.0"`, `"version":"2.0"`, 1), reason.UnknownVersion, `"2.0"`},
		"unknown type":      {strings.Replace(js, `"task_request"`, `"task_cancel"`, 1), reason.UnknownMessageType, "task_cancel"},
		"unknown field":     {strings.Replace(js, `{"header":{`, `{"header":{"x":1,`, 1), reason.Malformed, "unknown field"},
		"padded base64":     {strings.Replace(js, sig, `"signature":"`+strings.TrimSuffix(b64.EncodeToString(e.Signature), "")+`=="`, 1), reason.Malformed, "base64url"},
		"standard alphabet": {strings.Replace(js, `"nonce":"AAAAAAAAAAAAAAAA"`, `"nonce":"AAAAAAAAAAAAAAA+"`, 1), reason.Malformed, "base64url"},
		"whitespace":        {strings.Replace(js, `,"payload"`, `, "payload"`, 1), reason.Malformed, "canonical"},
		"reordered":         {strings.Replace(js, `{"header":`, `{"signature":"AA","header":`, 1), reason.Malformed, "canonical"},
		"duplicate key":     {strings.Replace(js, `"encrypted":true`, `"encrypted":false,"encrypted":true`, 1), reason.Malformed, "canonical"},
		"case-folded key":   {strings.Replace(js, `"cipher"`, `"Cipher"`, 1), reason.Malformed, "canonical"},
		"trailing":          {js + `{}`, reason.Malformed, "trailing"},
		"missing field":     {strings.Replace(js, `"encrypted":true,`, ``, 1), reason.Malformed, "requires encrypted=true"},
		"bad nonce size":    {strings.Replace(js, `"nonce":"AAAAAAAAAAAAAAAA"`, `"nonce":"AAAA"`, 1), reason.Malformed, "12-byte nonce"},
		"unknown cipher":    {strings.Replace(js, `"aes-256-gcm"`, `"aes-128-gcm"`, 1), reason.Malformed, "unknown cipher"},
		"bad sender":        {strings.Replace(js, alice.ID(), "rsa:AAAA", 1), reason.Malformed, "sender_id"},
		"oversized":         {js + strings.Repeat(" ", MaxJSON), reason.OversizedFrame, "exceeds"},
	}
	if !strings.Contains(js, `"nonce":"AAAAAAAAAAAAAAAA"`) {
		t.Fatalf("test assumes a zero nonce: %s", js)
	}
	for name, c := range jsonCases {
		if _, err := DecodeJSON([]byte(c.in)); !errors.Is(err, c.code) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("JSON %s: got %v, want %s %q", name, err, c.code, c.msg)
		}
	}
	bin := e.EncodeBinary()
	v2 := *e
	v2.Header.Version = "2.0"
	binCases := map[string]struct {
		in   []byte
		code reason.Code
	}{
		"unknown version": {v2.EncodeBinary(), reason.UnknownVersion},
		"trailing":        {append(append([]byte{}, bin...), 0), reason.Malformed},
		"truncated":       {bin[:len(bin)-1], reason.Malformed},
		"oversized":       {make([]byte, MaxBinary+1), reason.OversizedFrame},
	}
	for name, c := range binCases {
		if _, err := DecodeBinary(c.in); !errors.Is(err, c.code) {
			t.Errorf("binary %s: got %v, want %s", name, err, c.code)
		}
	}
}

func TestReceiver(t *testing.T) {
	clock := agenttest.NewClock(agenttest.Epoch.Add(time.Hour))
	alice, bob, carol := newParty(t, clock, suite.KEMX25519), newParty(t, clock, suite.KEMX25519), newParty(t, clock, suite.KEMX25519)
	// Started long enough ago that the restart barrier is behind (replay.CheckStoredTime).
	rc := replay.New(replay.Config{Clock: clock.Now, Start: clock.Now().Add(-time.Hour)})
	rx := &Receiver{LocalID: bob.ID(), Resolver: resolver{alice.ID(): alice}, Replay: rc, Keys: func() []*suite.EncryptionKey {
		var out []*suite.EncryptionKey
		for _, k := range bob.mgr.Live() {
			out = append(out, k.Encryption())
		}
		return out
	}}
	clock.Advance(time.Second)
	seal := func(from *party, to string, at time.Time) *Envelope {
		e, err := SealHPKE(ctx, NewHeader(from.ID(), to, TaskRequest, at), []byte("job"), bob.k.Delegation.KEM, bob.k.Delegation.EncKey, from.k.Signer())
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	good := seal(alice, bob.ID(), clock.Now())
	if pt, err := rx.Receive(ctx, good); err != nil || string(pt) != "job" {
		t.Fatalf("receive: %q %v", pt, err)
	}
	forged := seal(alice, bob.ID(), clock.Now())
	forged.Signature = seal(carol, bob.ID(), clock.Now()).Signature
	cases := []struct {
		name string
		e    *Envelope
		code reason.Code
	}{
		{"replayed message ID", good, reason.ReplayedMessage},
		{"wrong recipient", seal(alice, carol.ID(), clock.Now()), reason.WrongRecipient},
		{"stale timestamp", seal(alice, bob.ID(), clock.Now().Add(-31*time.Second)), reason.StaleTimestamp},
		{"future timestamp", seal(alice, bob.ID(), clock.Now().Add(31*time.Second)), reason.FutureTimestamp},
		{"unknown sender", seal(carol, bob.ID(), clock.Now()), reason.UnknownPeer},
		{"bad signature", forged, reason.BadSignature},
	}
	for _, c := range cases {
		if _, err := rx.Receive(ctx, c.e); !errors.Is(err, c.code) {
			t.Errorf("%s: got %v, want %s", c.name, err, c.code)
		}
	}
	// The forged message's ID was not consumed: only verified messages enter the replay cache.
	if rc.Len() != 1 {
		t.Fatalf("replay cache holds %d entries, want 1", rc.Len())
	}
	// After bob's delegation (and encryption key) expires, messages sealed to it no longer open.
	late := seal(alice, bob.ID(), clock.Now())
	clock.Advance(2 * time.Hour)
	bob.mgr.Sweep()
	late.Header.Timestamp = clock.Now().Unix()
	if _, err := late.OpenHPKE(rx.Keys()...); !errors.Is(err, reason.DecryptFailed) {
		t.Fatalf("opened with an expired key: %v", err)
	}
}

func TestEvidence(t *testing.T) {
	clock := agenttest.NewClock(agenttest.Epoch.Add(time.Hour))
	alice, bob := newParty(t, clock, suite.KEMX25519), newParty(t, clock, suite.KEMX25519)
	e, err := SealPlain(ctx, NewHeader(alice.ID(), bob.ID(), Feedback, clock.Now()), []byte(`{"score":5}`), alice.k.Signer())
	if err != nil {
		t.Fatal(err)
	}
	d := alice.k.Delegation
	// Later, after alice rotated and the delegation expired, a third party still checks it.
	clock.Advance(3 * time.Hour)
	alice.id.Rotate(t)
	if err := VerifyEvidence(e, &alice.id.Log, d); err != nil {
		t.Fatal(err)
	}
	e.Payload.Data[0] ^= 1
	if err := VerifyEvidence(e, &alice.id.Log, d); !errors.Is(err, reason.BadSignature) {
		t.Fatalf("tampered evidence: %v", err)
	}
	e.Payload.Data[0] ^= 1
	if err := VerifyEvidence(e, &bob.id.Log, d); !errors.Is(err, reason.KeyLogInvalid) {
		t.Fatalf("wrong log: %v", err)
	}
	// A thief of the rotated-away generation-0 key delegates a fresh operational key, dated after the
	// rotation, and signs an envelope with it: refused by the signing-generation rule (issue 12 finding
	// 12); the log prefix at generation 0 alone would have accepted it.
	op := agenttest.Mem(t, keystore.Ed25519)
	late := *d
	late.OpAlg, late.OpKey = op.Public().Algorithm, op.Public().Bytes()
	late.NotBefore = clock.Now().Unix() + 600
	late.NotAfter = late.NotBefore + 3600
	sig, err := alice.id.Signers[0].Sign(ctx, late.SigningInput())
	if err != nil {
		t.Fatal(err)
	}
	late.Signature = sig
	forged, err := SealPlain(ctx, NewHeader(alice.ID(), bob.ID(), Feedback, time.Unix(late.NotBefore+60, 0)), []byte(`{"score":5}`), op)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyEvidence(forged, &alice.id.Log, &late); !errors.Is(err, reason.DelegationWrongKey) || !strings.Contains(err.Error(), "rotated away") {
		t.Fatalf("evidence under a delegation signed by the rotated-away key after the rotation: %v", err)
	}
}

func seedEnvelopes(t testing.TB) [][]byte {
	clock := agenttest.NewClock(agenttest.Epoch.Add(time.Hour))
	alice, bob := newParty(t, clock, suite.KEMX25519), newParty(t, clock, suite.KEMXWing)
	s, _ := SealSession(ctx, NewHeader(alice.ID(), bob.ID(), TaskRequest, clock.Now()), []byte("x"), sessionKey(t), make([]byte, 12), alice.k.Signer())
	h, _ := SealHPKE(ctx, NewHeader(alice.ID(), bob.ID(), TaskResult, clock.Now()), []byte("y"), bob.k.Delegation.KEM, bob.k.Delegation.EncKey, alice.k.Signer())
	p, _ := SealPlain(ctx, NewHeader(alice.ID(), bob.ID(), Feedback, clock.Now()), nil, alice.k.Signer())
	u, _ := SealSession(ctx, NewHeader(alice.ID(), bob.ID(), TaskRequest, clock.Now()), []byte("z"), sessionKey(t), make([]byte, 12), nil)
	return [][]byte{s.EncodeBinary(), h.EncodeBinary(), p.EncodeBinary(), u.EncodeBinary(), s.EncodeJSON(), h.EncodeJSON(), p.EncodeJSON(), u.EncodeJSON()}
}

func FuzzDecodeBinary(f *testing.F) {
	for _, s := range seedEnvelopes(f) {
		f.Add(s)
	}
	seedVectors(f, "binary")
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeBinary(b)
		if err != nil {
			if reason.Of(err) == reason.Internal {
				t.Fatalf("error without a reason code: %v", err)
			}
			return
		}
		if !bytes.Equal(e.EncodeBinary(), b) {
			t.Fatalf("decode/encode is not the identity")
		}
		if _, err := DecodeJSON(e.EncodeJSON()); err != nil {
			t.Fatalf("the JSON form of a valid binary envelope does not decode: %v", err)
		}
	})
}

func FuzzDecodeJSON(f *testing.F) {
	for _, s := range seedEnvelopes(f) {
		f.Add(s)
	}
	seedVectors(f, "json")
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := DecodeJSON(b)
		if err != nil {
			if reason.Of(err) == reason.Internal {
				t.Fatalf("error without a reason code: %v", err)
			}
			return
		}
		if !bytes.Equal(e.EncodeJSON(), b) {
			t.Fatalf("decode/encode is not the identity")
		}
		if _, err := DecodeBinary(e.EncodeBinary()); err != nil {
			t.Fatalf("the binary form of a valid JSON envelope does not decode: %v", err)
		}
	})
}

// TestUnsignedSessionEnvelope: a session envelope sealed without a signer (ADR 0032) round-trips in both
// forms and opens, refuses to verify (it is no evidence), and only the session cipher may go unsigned.
func TestUnsignedSessionEnvelope(t *testing.T) {
	clock := agenttest.NewClock(agenttest.Epoch.Add(time.Hour))
	alice, bob := newParty(t, clock, suite.KEMX25519), newParty(t, clock, suite.KEMX25519)
	msg := []byte("unsigned inside a session")
	e, err := SealSession(ctx, NewHeader(alice.ID(), bob.ID(), TaskRequest, clock.Now()), msg, sessionKey(t), make([]byte, 12), nil)
	if err != nil {
		t.Fatal(err)
	}
	if e.Signed() {
		t.Fatal("sealed without a signer, yet signed")
	}
	js := e.EncodeJSON()
	if !bytes.HasSuffix(js, []byte(`"signature":""}`)) {
		t.Fatalf("JSON form of an unsigned envelope: %s", js)
	}
	fromJSON, err := DecodeJSON(js)
	if err != nil {
		t.Fatal(err)
	}
	fromBin, err := DecodeBinary(e.EncodeBinary())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fromBin.EncodeJSON(), js) || !bytes.Equal(fromJSON.EncodeBinary(), e.EncodeBinary()) {
		t.Fatal("the JSON and binary forms do not carry the same unsigned envelope")
	}
	if err := fromBin.Verify(alice.k.Signer().Public()); !errors.Is(err, reason.BadSignature) || !strings.Contains(err.Error(), "carries no signature") {
		t.Fatalf("verify of an unsigned envelope: %v", err)
	}
	if pt, err := fromBin.OpenSessionInPlace(sessionKey(t)); err != nil || !bytes.Equal(pt, msg) || fromBin.Payload.Data != nil {
		t.Fatalf("open in place: %q %v (data left: %d bytes)", pt, err, len(fromBin.Payload.Data))
	}
	// As evidence it fails with the reason, not as a broken signature of some other kind.
	if err := VerifyEvidence(e, &alice.id.Log, alice.k.Delegation); !errors.Is(err, reason.BadSignature) || !strings.Contains(err.Error(), "not evidence") {
		t.Fatalf("evidence check of an unsigned envelope: %v", err)
	}
	// HPKE and unencrypted envelopes must be signed, in either form.
	hp, err := SealHPKE(ctx, NewHeader(alice.ID(), bob.ID(), TaskResult, clock.Now()), msg, bob.k.Delegation.KEM, bob.k.Delegation.EncKey, alice.k.Signer())
	if err != nil {
		t.Fatal(err)
	}
	plain, err := SealPlain(ctx, NewHeader(alice.ID(), bob.ID(), Feedback, clock.Now()), msg, alice.k.Signer())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Envelope{hp, plain} {
		c := *s
		c.Signature = nil
		if _, err := DecodeBinary(c.EncodeBinary()); !errors.Is(err, reason.Malformed) || !strings.Contains(err.Error(), "only a session envelope") {
			t.Errorf("unsigned %s envelope, binary form: %v", s.Payload.Cipher, err)
		}
		if _, err := DecodeJSON(c.EncodeJSON()); !errors.Is(err, reason.Malformed) || !strings.Contains(err.Error(), "only a session envelope") {
			t.Errorf("unsigned %s envelope, JSON form: %v", s.Payload.Cipher, err)
		}
	}
}

// TestEvidenceCache: once a key event log and delegation verified, EvidenceCache still checks each
// envelope's signature, its sender and the delegation's validity at its timestamp, with VerifyEvidence's
// reasons.
func TestEvidenceCache(t *testing.T) {
	clock := agenttest.NewClock(agenttest.Epoch.Add(time.Hour))
	alice, bob := newParty(t, clock, suite.KEMX25519), newParty(t, clock, suite.KEMX25519)
	d := alice.k.Delegation
	var c EvidenceCache
	seal := func(from string, at time.Time) *Envelope {
		e, err := SealPlain(ctx, NewHeader(from, bob.ID(), TaskResult, at), []byte("ok"), alice.k.Signer())
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	same := func(what string, e *Envelope, l *identity.Log, want reason.Code) {
		t.Helper()
		err, cerr := VerifyEvidence(e, l, d), c.VerifyEvidence(e, l, d)
		if reason.Of(err) != want || reason.Of(cerr) != want || (want == "") != (cerr == nil) {
			t.Fatalf("%s: EvidenceCache %v, VerifyEvidence %v; want %q", what, cerr, err, want)
		}
	}
	same("valid (a miss)", seal(alice.ID(), clock.Now()), &alice.id.Log, "")
	same("valid again (a hit)", seal(alice.ID(), clock.Now()), &alice.id.Log, "")
	bad := seal(alice.ID(), clock.Now())
	bad.Payload.Data[0] ^= 1
	same("tampered", bad, &alice.id.Log, reason.BadSignature)
	same("after the delegation expired", seal(alice.ID(), time.Unix(d.NotAfter, 0)), &alice.id.Log, reason.DelegationExpired)
	same("before it was valid", seal(alice.ID(), time.Unix(d.NotBefore-1, 0)), &alice.id.Log, reason.DelegationNotYetValid)
	same("from another sender", seal(bob.ID(), clock.Now()), &alice.id.Log, reason.KeyLogInvalid)
	same("another log", seal(alice.ID(), clock.Now()), &bob.id.Log, reason.KeyLogInvalid)
	altered := identity.Log{Events: append([]identity.Event{}, alice.id.Log.Events...)}
	altered.Events[0].Time++
	same("an altered log", seal(alice.ID(), clock.Now()), &altered, reason.KeyLogInvalid)
}
