package envelope

import (
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/internal/agenttest"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/vectors"
	"github.com/custos-agent/custos/reason"
)

// Negative vectors (internal/vectors): envelopes as data, each with the reason code a receiver must
// refuse it with. Fields: form (binary, json or evidence); input; for evidence also kel (the sender's key
// event log) and delegation (binary form), checked as VerifyEvidence does. CUSTOS_UPDATE_VECTORS=1
// regenerates them from writeVectors (new keys each time).

const vectorDir = "testdata/vectors"

var vectorCache EvidenceCache

func runVector(v *vectors.Vector) error {
	switch v.String("form") {
	case "binary":
		_, err := DecodeBinary(v.Input())
		return err
	case "json":
		_, err := DecodeJSON(v.Input())
		return err
	case "evidence":
		e, err := DecodeBinary(v.Input())
		if err != nil {
			return err
		}
		kel, _ := v.Get("kel")
		l, err := identity.DecodeLog(kel)
		if err != nil {
			return reason.Wrap(reason.KeyLogInvalid, err, "the sender's key event log")
		}
		db, _ := v.Get("delegation")
		d, err := delegation.Decode(db)
		if err != nil {
			return err
		}
		err = VerifyEvidence(e, &l, d)
		// The task engine's EvidenceCache gives the same answer, verifying the pair (a miss) and
		// remembering it (a hit), over every vector in one cache.
		for i := 0; i < 2; i++ {
			if cerr := vectorCache.VerifyEvidence(e, &l, d); reason.Of(cerr) != reason.Of(err) || (cerr == nil) != (err == nil) {
				return reason.New(reason.Internal, "EvidenceCache (check %d): %v; VerifyEvidence: %v", i+1, cerr, err)
			}
		}
		return err
	}
	return reason.New(reason.Internal, "vector %s: unknown form %q", v.Name, v.String("form"))
}

func TestNegativeVectors(t *testing.T) {
	vectors.Run(t, vectorDir, writeVectors, func(v *vectors.Vector) (string, error) {
		err := runVector(v)
		return string(reason.Of(err)), err
	})
}

// seedVectors adds every vector of a form to a fuzz corpus.
func seedVectors(f *testing.F, form string) {
	vectors.Seed(f, vectorDir, func(v *vectors.Vector) bool {
		return v.String("form") == form || form == "binary" && v.String("form") == "evidence"
	})
}

func writeVectors(t *testing.T) {
	clock := agenttest.NewClock(agenttest.Epoch.Add(time.Hour))
	alice, bob := newParty(t, clock, suite.KEMX25519), newParty(t, clock, suite.KEMX25519)
	e, err := SealSession(ctx, NewHeader(alice.ID(), bob.ID(), TaskRequest, clock.Now()), []byte("x"), sessionKey(t), make([]byte, 12), alice.k.Signer())
	if err != nil {
		t.Fatal(err)
	}
	js := string(e.EncodeJSON())
	bin := e.EncodeBinary()
	var out []*vectors.Vector
	add := func(name, comment, expect, text, form string, in []byte) *vectors.Vector {
		v := vectors.New(name, comment, expect, text).Set("form", []byte(form)).Set("input", in)
		out = append(out, v)
		return v
	}
	rep := func(old, new string) []byte {
		if !strings.Contains(js, old) {
			t.Fatalf("the JSON envelope has no %q", old)
		}
		return []byte(strings.Replace(js, old, new, 1))
	}
	add("json-ok", "a valid session envelope, JSON form (the one the others change)", "ok", "", "json", []byte(js))
	add("json-unknown-version", "header version 2.0", "unknown_version", `"2.0"`, "json", rep(`"version":"1.0"`, `"version":"2.0"`))
	add("json-unknown-type", "a message type that is not defined", "unknown_message_type", "task_cancel", "json", rep(`"task_request"`, `"task_cancel"`))
	add("json-unknown-field", "an extra header field", "malformed", "unknown field", "json", rep(`{"header":{`, `{"header":{"x":1,`))
	add("json-padded-base64", "base64 with padding", "malformed", "base64url", "json", rep(`"nonce":"AAAAAAAAAAAAAAAA"`, `"nonce":"AAAAAAAAAAAAAAAA=="`))
	add("json-standard-alphabet", "base64 standard alphabet (+)", "malformed", "base64url", "json", rep(`"nonce":"AAAAAAAAAAAAAAAA"`, `"nonce":"AAAAAAAAAAAAAAA+"`))
	add("json-whitespace", "a space between fields: not the canonical form", "malformed", "canonical", "json", rep(`,"payload"`, `, "payload"`))
	add("json-duplicate-key", "a key given twice", "malformed", "canonical", "json", rep(`"encrypted":true`, `"encrypted":false,"encrypted":true`))
	add("json-trailing", "an object after the envelope", "malformed", "trailing", "json", []byte(js+`{}`))
	add("json-missing-field", "payload.encrypted missing", "malformed", "requires encrypted=true", "json", rep(`"encrypted":true,`, ``))
	add("json-bad-nonce-size", "a 3-byte nonce", "malformed", "12-byte nonce", "json", rep(`"nonce":"AAAAAAAAAAAAAAAA"`, `"nonce":"AAAA"`))
	add("json-unknown-cipher", "a cipher that is not defined", "malformed", "unknown cipher", "json", rep(`"aes-256-gcm"`, `"aes-128-gcm"`))
	add("json-bad-sender", "a sender ID of an unknown algorithm", "malformed", "sender_id", "json", rep(alice.ID(), "rsa:AAAA"))
	v2 := *e
	v2.Header.Version = "2.0"
	add("binary-ok", "the same envelope, binary form", "ok", "", "binary", bin)
	add("binary-unknown-version", "header version 2.0", "unknown_version", "", "binary", v2.EncodeBinary())
	add("binary-trailing", "one byte after the envelope", "malformed", "", "binary", append(append([]byte{}, bin...), 0))
	add("binary-truncated", "the last byte cut", "malformed", "", "binary", bin[:len(bin)-1])
	add("binary-empty", "no bytes", "malformed", "", "binary", nil)

	// Evidence: a plain envelope signed under a delegation, checked by a third party with the sender's log.
	p, err := SealPlain(ctx, NewHeader(alice.ID(), bob.ID(), Feedback, clock.Now()), []byte(`{"score":5}`), alice.k.Signer())
	if err != nil {
		t.Fatal(err)
	}
	kel, deleg := alice.id.Log.Encode(), alice.k.Delegation.Encode()
	evidence := func(name, comment, expect, text string, in, kel []byte) {
		add(name, comment, expect, text, "evidence", in).Set("kel", kel).Set("delegation", deleg)
	}
	evidence("evidence-ok", "a signed plain envelope, the sender's log and delegation", "ok", "", p.EncodeBinary(), kel)
	tampered := *p
	tampered.Payload.Data = append([]byte{}, p.Payload.Data...)
	tampered.Payload.Data[0] ^= 1
	evidence("evidence-tampered-payload", "one payload bit flipped after signing", "bad_signature", "", tampered.EncodeBinary(), kel)
	evidence("evidence-other-log", "the log of another agent", "key_log_invalid", "", p.EncodeBinary(), bob.id.Log.Encode())
	evidence("evidence-truncated-log", "the log without its final newline", "key_log_invalid", "", p.EncodeBinary(), kel[:len(kel)-1])
	if err := vectors.WriteAll(vectorDir, out); err != nil {
		t.Fatal(err)
	}
}
