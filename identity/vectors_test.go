package identity

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/internal/vectors"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/reason"
)

// Negative vectors (internal/vectors): key event logs as data, each with the reason code a peer must
// refuse the log with when it is presented (agent/peers): key_log_invalid when it does not decode or
// verify, key_log_fork when it verifies but forks from the log cached for that identity. Fields: input
// (the presented log, JSON lines), cached (optional: the log already held). CUSTOS_UPDATE_VECTORS=1
// regenerates them from writeVectors (new keys each time).

const vectorDir = "testdata/vectors"

// presented checks a presented log as agent/peers does, with the codes it gives.
func presented(v *vectors.Vector) error {
	l, err := DecodeLog(v.Input())
	if err != nil {
		return reason.Wrap(reason.KeyLogInvalid, err, "the key event log presented")
	}
	if _, err := l.Verify(); err != nil {
		return reason.Wrap(reason.KeyLogInvalid, err, "the key event log presented")
	}
	if b, ok := v.Get("cached"); ok {
		c, err := DecodeLog(b)
		if err != nil {
			return reason.Wrap(reason.Internal, err, "vector %s: the cached log", v.Name)
		}
		if err := CompareForks(&c, &l); err != nil {
			if errors.Is(err, ErrDuplicity) {
				return reason.Wrap(reason.KeyLogFork, err, "the presented log forks from the cached one")
			}
			return reason.Wrap(reason.KeyLogInvalid, err, "compare with the cached log")
		}
	}
	return nil
}

func TestNegativeVectors(t *testing.T) {
	vectors.Run(t, vectorDir, writeVectors, func(v *vectors.Vector) (string, error) {
		err := presented(v)
		return string(reason.Of(err)), err
	})
}

// seedVectors adds the vectors' logs (and, with lines, each of their lines) to a fuzz corpus.
func seedVectors(f *testing.F, lines bool) {
	if !lines {
		vectors.Seed(f, vectorDir, nil)
		return
	}
	vs, err := vectors.Load(vectorDir)
	if err != nil {
		f.Fatal(err)
	}
	for _, v := range vs {
		for _, l := range strings.Split(strings.TrimSuffix(string(v.Input()), "\n"), "\n") {
			f.Add([]byte(l))
		}
	}
}

func writeVectors(t *testing.T) {
	l, keys := chain(t, keystore.Ed25519, 1, nil)
	enc := l.Encode()
	first, second := l.Events[0].Encode(), l.Events[1].Encode()
	var out []*vectors.Vector
	add := func(name, comment, expect, text string, in []byte) *vectors.Vector {
		v := vectors.New(name, comment, expect, text).Set("input", in)
		out = append(out, v)
		return v
	}
	lines := func(ls ...string) []byte { return []byte(strings.Join(ls, "\n") + "\n") }
	rep := func(line []byte, old, new string) string {
		if !strings.Contains(string(line), old) {
			t.Fatalf("no %q in %s", old, line)
		}
		return strings.Replace(string(line), old, new, 1)
	}
	add("ok", "inception and one rotation (the log the others change)", "ok", "", enc)
	add("unknown-field", "an extra field in the inception event", "key_log_invalid", "unknown field", lines(rep(first, `{"v":1`, `{"v":1,"extra":1`), string(second)))
	add("unknown-version", "event version 2", "key_log_invalid", "unknown key event version", lines(rep(first, `{"v":1`, `{"v":2`), string(second)))
	add("not-canonical", "a space after the first comma", "key_log_invalid", "canonical form", lines(rep(first, `,`, `, `), string(second)))
	add("trailing", "an object after the first event on its line", "key_log_invalid", "trailing data", lines(string(first)+` {}`, string(second)))
	add("torn", "the last line without its newline", "key_log_invalid", "torn", enc[:len(enc)-1])
	add("empty", "no events", "key_log_invalid", "the log is empty", []byte{})
	add("no-inception", "the rotation alone", "key_log_invalid", "", lines(string(second)))
	retimed := l.Events[1]
	retimed.Time++
	add("altered-rotation", "the rotation's time changed after signing", "key_log_invalid", "does not verify", lines(string(first), string(retimed.Encode())))
	reordered := l.Events[1]
	reordered.Generation = 2
	add("skipped-generation", "the rotation claims generation 2", "key_log_invalid", "does not verify", lines(string(first), string(reordered.Encode())))
	st, err := (&Log{Events: l.Events[:1]}).Verify()
	if err != nil {
		t.Fatal(err)
	}
	other, err := Rotate(context.Background(), st, keys[0], keys[1], mem(t, keystore.Ed25519).Public(), time.Unix(l.Events[1].Time, 0))
	if err != nil {
		t.Fatal(err)
	}
	add("fork", "the holder of the pre-committed key signed a second rotation at generation 1", "key_log_fork", "duplicity",
		lines(string(first), string(other.Encode()))).Set("cached", enc)
	add("newer-than-cached", "the cached log is a prefix of the presented one: no fork", "ok", "", enc).Set("cached", lines(string(first)))
	if err := vectors.WriteAll(vectorDir, out); err != nil {
		t.Fatal(err)
	}
}
