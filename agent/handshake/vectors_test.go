package handshake

import (
	"testing"

	"github.com/custos-agent/custos/internal/vectors"
	"github.com/custos-agent/custos/reason"
)

// Negative vectors (internal/vectors): handshake messages as data, each with the reason code a peer must
// refuse it with. Fields: message (hello, challenge, response, established, alert), input (the message
// body, binary). A hello is decoded by an agent that speaks version 1 only.
// CUSTOS_UPDATE_VECTORS=1 regenerates them from writeVectors.

const vectorDir = "testdata/vectors"

func runVector(v *vectors.Vector) error {
	in := v.Input()
	var err error
	switch v.String("message") {
	case "hello":
		_, err = DecodeHello(in, []uint16{1})
	case "challenge":
		_, err = DecodeChallenge(in)
	case "response":
		_, err = DecodeResponse(in)
	case "established":
		_, err = DecodeEstablished(in)
	case "alert":
		_, err = DecodeAlert(in)
	default:
		err = reason.New(reason.Internal, "vector %s: unknown message %q", v.Name, v.String("message"))
	}
	return err
}

func TestNegativeVectors(t *testing.T) {
	vectors.Run(t, vectorDir, writeVectors, func(v *vectors.Vector) (string, error) {
		err := runVector(v)
		return string(reason.Of(err)), err
	})
}

// seedVectors adds the vectors of one message to a fuzz corpus.
func seedVectors(f *testing.F, message string) {
	vectors.Seed(f, vectorDir, func(v *vectors.Vector) bool { return v.String("message") == message })
}

func writeVectors(t *testing.T) {
	var out []*vectors.Vector
	add := func(name, comment, expect, text, message string, in []byte) {
		out = append(out, vectors.New(name, comment, expect, text).Set("message", []byte(message)).Set("input", in))
	}
	h := sampleHello(false)
	hello := func(f func(x *Hello)) []byte { x := *h; f(&x); return x.Encode() }
	add("hello-ok", "a valid hello (the one the others change)", "ok", "", "hello", h.Encode())
	add("hello-hybrid-ok", "a valid hello with an ML-KEM key and a peer head", "ok", "", "hello", sampleHello(true).Encode())
	add("hello-no-common-version", "offers versions 9 and 2 only", "unknown_version", "", "hello", hello(func(x *Hello) { x.Versions = []uint16{9, 2} }))
	add("hello-ascending-versions", "versions must be listed in descending order", "malformed", "", "hello", hello(func(x *Hello) { x.Versions = []uint16{1, 2} }))
	add("hello-short-x25519", "a 31-byte X25519 share", "malformed", "", "hello", hello(func(x *Hello) { x.X25519 = rnd(31) }))
	add("hello-odd-mlkem", "an ML-KEM key of 100 bytes", "malformed", "", "hello", hello(func(x *Hello) { x.MLKEM = rnd(100) }))
	add("hello-peer-head-size", "a 5-byte peer head digest", "malformed", "", "hello", hello(func(x *Hello) { x.PeerHead = Head{0, rnd(5)} }))
	add("hello-generation-without-head", "a peer generation without its digest", "malformed", "", "hello", hello(func(x *Hello) { x.PeerHead = Head{4, nil} }))
	add("hello-trailing", "one byte after the hello", "malformed", "", "hello", append(h.Encode(), 0))
	add("hello-truncated", "the last byte cut", "malformed", "", "hello", h.Encode()[:len(h.Encode())-1])
	add("hello-wrong-frame", "a challenge where a hello is due", "unexpected_message", "", "hello", sampleChallenge(false).Encode())
	add("hello-empty", "no bytes: no frame type", "unexpected_message", "", "hello", nil)
	c := sampleChallenge(false)
	add("challenge-ok", "a valid challenge", "ok", "", "challenge", c.Encode())
	add("challenge-unsigned", "a challenge whose signature field is empty", "malformed", "", "challenge", append(c.EncodeUnsigned(), 0, 0, 0, 0))
	add("challenge-trailing", "one byte after the challenge", "malformed", "", "challenge", append(c.Encode(), 0))
	add("challenge-wrong-frame", "a hello where a challenge is due", "unexpected_message", "", "challenge", h.Encode())
	r := sampleResponse()
	add("response-ok", "a valid response", "ok", "", "response", r.Encode())
	add("response-trailing", "one byte after the response", "malformed", "", "response", append(r.Encode(), 0))
	add("response-truncated", "the last byte cut", "malformed", "", "response", r.Encode()[:len(r.Encode())-1])
	est := (&Established{SessionID: rnd(16), Reauth: 900, Expires: 1_700_000_000}).Encode()
	add("established-ok", "a valid established body", "ok", "", "established", est)
	add("established-trailing", "one byte after the body", "malformed", "", "established", append(append([]byte{}, est...), 0))
	add("established-short-session-id", "a 15-byte session ID", "malformed", "", "established", (&Established{SessionID: rnd(15), Reauth: 900, Expires: 1_700_000_000}).Encode())
	add("alert-ok", "an alert naming a code", "ok", "", "alert", (&Alert{Code: reason.BadSignature}).Encode())
	add("alert-charset", "an alert code outside a-z, 0-9 and _", "malformed", "", "alert", (&Alert{Code: "Bad Code"}).Encode())
	// ADR 0087: a responder names a refusal of the grants the initiator presented (grant_bad_issuer ...)
	// in the same alert format, which every version decodes; a second field would be refused by the
	// agents released before it, so the alert carries the code alone.
	add("alert-refusal-ok", "an alert naming a refused presented grant (ADR 0087): decoded as sent", "ok", "", "alert", (&Alert{Code: reason.GrantBadIssuer}).Encode())
	add("alert-trailing", "an alert with a second field after its code", "malformed", "", "alert",
		append((&Alert{Code: reason.GrantRevoked}).Encode(), 0, 0, 0, 2, 'g', '1'))
	if err := vectors.WriteAll(vectorDir, out); err != nil {
		t.Fatal(err)
	}
}
