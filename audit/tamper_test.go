package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/custos-agent/custos/keystore"
)

// buildLog writes a closed log of several segments and returns its directory.
func buildLog(t *testing.T, id *ident, dir string) {
	t.Helper()
	o := id.opts(0)
	o.SegmentMaxBytes = 2500
	o.CheckpointEvery = 4
	l := open(t, dir, o)
	for i := 0; i < 40; i++ {
		appendN(t, l, 1, AccessDenied)
		if i%4 == 3 {
			if err := l.Checkpoint(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The tail: a checkpoint, three records it does not cover, then the seal.
	if err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 3, AuthSuccess)
	closeLog(t, l)
	if n := len(segPaths(t, dir)); n < 4 {
		t.Fatalf("only %d segments", n)
	}
	mustVerify(t, dir, id.kel)
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// seqAt returns the seq of line n (from 1) of a segment.
func seqAt(t *testing.T, path string, n int) uint64 {
	t.Helper()
	w, _, err := decodeLine(bytes.TrimSuffix(lines(t, path)[n-1], []byte("\n")))
	if err != nil {
		t.Fatal(err)
	}
	return w.Seq
}

func TestTamperDetected(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	other := newIdent(t, keystore.Ed25519, 0)
	base := filepath.Join(t.TempDir(), "base")
	buildLog(t, id, base)
	foreign := filepath.Join(t.TempDir(), "foreign")
	buildLog(t, other, foreign)

	segs := segPaths(t, base)
	name := func(i int) string { return filepath.Base(segs[i]) }
	type expect struct {
		kind error
		seg  string
		line int
		seq  uint64
		want string
	}
	tests := []struct {
		name   string
		tamper func(t *testing.T, dir string) expect
	}{
		{"flip a byte in a value", func(t *testing.T, dir string) expect {
			p := filepath.Join(dir, name(1))
			ls := lines(t, p)
			n := 1 // a data record (checkpoints land where their signature arrives)
			for !bytes.Contains(ls[n], []byte("ed25519:peer")) {
				n++
			}
			ls[n] = bytes.Replace(ls[n], []byte("ed25519:peer"), []byte("ed25519:pEer"), 1)
			writeLines(t, p, ls)
			return expect{ErrBrokenChain, name(1), n + 1, seqAt(t, filepath.Join(base, name(1)), n+1), "stored hash does not match"}
		}},
		{"flip the case of a field name", func(t *testing.T, dir string) expect {
			p := filepath.Join(dir, name(1))
			ls := lines(t, p)
			ls[1] = bytes.Replace(ls[1], []byte(`"actor"`), []byte(`"Actor"`), 1)
			writeLines(t, p, ls)
			return expect{ErrMalformed, name(1), 2, seqAt(t, filepath.Join(base, name(1)), 2), "not in canonical form"}
		}},
		{"flip a bit in a stored hash", func(t *testing.T, dir string) expect {
			p := filepath.Join(dir, name(2))
			ls := lines(t, p)
			i := bytes.Index(ls[0], []byte(`"hash":"`)) + len(`"hash":"`) + 5
			ls[0][i] ^= 0x01
			writeLines(t, p, ls)
			return expect{ErrBrokenChain, name(2), 1, seqAt(t, filepath.Join(base, name(2)), 1), "stored hash does not match"}
		}},
		{"delete a record", func(t *testing.T, dir string) expect {
			p := filepath.Join(dir, name(1))
			ls := lines(t, p)
			gone := seqAt(t, p, 3)
			writeLines(t, p, append(ls[:2:2], ls[3:]...))
			return expect{ErrBrokenChain, name(1), 3, gone + 1, "record " + itoa(gone) + " is missing here"}
		}},
		{"reorder two records", func(t *testing.T, dir string) expect {
			p := filepath.Join(dir, name(1))
			ls := lines(t, p)
			s3 := seqAt(t, p, 3)
			ls[2], ls[3] = ls[3], ls[2]
			writeLines(t, p, ls)
			return expect{ErrBrokenChain, name(1), 3, s3 + 1, "expected seq " + itoa(s3) + ", found " + itoa(s3+1)}
		}},
		{"truncate the tail mid-record", func(t *testing.T, dir string) expect {
			p := filepath.Join(dir, name(len(segs)-1))
			ls := lines(t, p)
			last := seqAt(t, p, len(ls))
			b, _ := os.ReadFile(p)
			if err := os.WriteFile(p, b[:len(b)-17], 0o600); err != nil {
				t.Fatal(err)
			}
			return expect{ErrTorn, name(len(segs) - 1), len(ls), last, "the last line is incomplete"}
		}},
		{"truncate the checkpoints off the tail", func(t *testing.T, dir string) expect {
			// Cut after the last data record: the three records at the end lose their cover.
			cutAfterLast(t, dir, func(w *wire) bool { return w.CP == nil })
			first := findFirst(t, dir, func(w *wire) bool { return w.Type == string(AuthSuccess) })
			return expect{ErrUnsigned, first.seg, first.line, first.seq, "records from seq " + itoa(first.seq) + " to " +
				itoa(first.seq+2) + " are not covered by a signed checkpoint"}
		}},
		{"truncate back to a checkpoint", func(t *testing.T, dir string) expect {
			seg, line := cutAfterLast(t, dir, func(w *wire) bool { return string(w.Details) == `{"reason":"manual"}` })
			return expect{ErrUnsigned, seg, line, seqAt(t, filepath.Join(dir, seg), line), "without the closing seal"}
		}},
		{"delete a middle segment", func(t *testing.T, dir string) expect {
			if err := os.Remove(filepath.Join(dir, name(2))); err != nil {
				t.Fatal(err)
			}
			return expect{ErrBrokenChain, name(3), 1, seqAt(t, filepath.Join(base, name(3)), 1), "missing here"}
		}},
		{"delete the first segment", func(t *testing.T, dir string) expect {
			if err := os.Remove(filepath.Join(dir, name(0))); err != nil {
				t.Fatal(err)
			}
			return expect{ErrBrokenChain, name(1), 1, seqAt(t, filepath.Join(base, name(1)), 1), "no signed audit.pruned record"}
		}},
		{"swap in a segment from another agent", func(t *testing.T, dir string) expect {
			fsegs := segPaths(t, foreign)
			b, err := os.ReadFile(fsegs[1])
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, name(1)), b, 0o600); err != nil {
				t.Fatal(err)
			}
			return expect{ErrBrokenChain, name(1), 1, 0, ""}
		}},
		{"swap in the whole log of another agent", func(t *testing.T, dir string) expect {
			for _, p := range segPaths(t, dir) {
				os.Remove(p)
			}
			copyDir(t, foreign, dir)
			return expect{ErrBadCheckpoint, name(0), 0, 0, "not in kel.jsonl of " + id.id}
		}},
		{"rewrite the chain without the key", func(t *testing.T, dir string) expect {
			// Change a record and recompute every hash after it: only the checkpoints catch this.
			changed := seqAt(t, filepath.Join(dir, name(1)), 2)
			rechain(t, dir, func(w *wire) {
				if w.Seq == changed {
					w.Actor = "ed25519:someone-else"
				}
			})
			return expect{ErrBadCheckpoint, "", 0, 0, "its head does not match the hash of seq"}
		}},
		{"rewrite the chain without the key, checkpoint heads recomputed", func(t *testing.T, dir string) expect {
			// Every hash and every checkpoint head is right again: only the signatures catch this.
			changed := seqAt(t, filepath.Join(dir, name(1)), 2)
			rechainHeads(t, dir, func(w *wire) {
				if w.Seq == changed {
					w.Actor = "ed25519:someone-else"
				}
			})
			first := findFirst(t, dir, func(w *wire) bool { return w.CP != nil && w.CP.HeadSeq >= changed })
			return expect{ErrBadCheckpoint, first.seg, first.line, first.seq, "the signature does not verify"}
		}},
		{"flip a byte of a checkpoint signature, chain recomputed", func(t *testing.T, dir string) expect {
			target := findFirst(t, dir, func(w *wire) bool { return w.CP != nil && w.Seq > 10 })
			rechainHeads(t, dir, func(w *wire) {
				if w.Seq == target.seq {
					sig, err := b64.DecodeString(w.CP.Sig)
					if err != nil {
						t.Fatal(err)
					}
					sig[len(sig)/2] ^= 0x40
					w.CP.Sig = b64.EncodeToString(sig)
				}
			})
			return expect{ErrBadCheckpoint, target.seg, target.line, target.seq, "the signature does not verify"}
		}},
		{"change a checkpoint's reason, chain recomputed", func(t *testing.T, dir string) expect {
			target := findFirst(t, dir, func(w *wire) bool { return string(w.Details) == `{"reason":"manual"}` && w.Seq > 10 })
			rechainHeads(t, dir, func(w *wire) {
				if w.Seq == target.seq {
					w.Details = json.RawMessage(`{"reason":"count"}`)
				}
			})
			return expect{ErrBadCheckpoint, target.seg, target.line, target.seq, "the signature does not verify"}
		}},
		{"alter a record and recompute its own hash only", func(t *testing.T, dir string) expect {
			// The record's hash is right again; the next record's prev is what no longer matches.
			p := filepath.Join(dir, name(1))
			ls := lines(t, p)
			n := 1
			for !bytes.Contains(ls[n], []byte("ed25519:peer")) {
				n++
			}
			w, _, err := decodeLine(bytes.TrimSuffix(ls[n], []byte("\n")))
			if err != nil {
				t.Fatal(err)
			}
			w.Subject = "nothing-happened"
			b, _, err := encodeLine(w)
			if err != nil {
				t.Fatal(err)
			}
			ls[n] = b
			writeLines(t, p, ls)
			return expect{ErrBrokenChain, name(1), n + 2, w.Seq + 1, "prev does not match the hash of seq " + itoa(w.Seq)}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "audit")
			copyDir(t, base, dir)
			e := tc.tamper(t, dir)
			ve := verifyFails(t, dir, id.kel, e.kind, e.seg, e.line, e.seq, e.want)
			if ve.Segment == "" || ve.Line == 0 || ve.Seq == 0 {
				t.Fatalf("the error does not name the place: %v", ve)
			}
			if !strings.HasPrefix(ve.Error(), ve.Segment+" line ") {
				t.Fatalf("message %q does not start with the place", ve.Error())
			}
			t.Logf("%v", ve)
		})
	}
	// A log verified against another agent's key event log fails at its first checkpoint.
	verifyFails(t, base, other.kel, ErrBadCheckpoint, name(0), 0, 0, "not in kel.jsonl")
}

type place struct {
	seg  string
	line int
	seq  uint64
}

// findFirst returns the place of the first record for which match is true.
func findFirst(t *testing.T, dir string, match func(*wire) bool) place {
	t.Helper()
	for _, p := range segPaths(t, dir) {
		for i, line := range lines(t, p) {
			w, _, err := decodeLine(bytes.TrimSuffix(line, []byte("\n")))
			if err != nil {
				t.Fatal(err)
			}
			if match(w) {
				return place{filepath.Base(p), i + 1, w.Seq}
			}
		}
	}
	t.Fatal("no such record")
	return place{}
}

// cutAfterLast truncates the log after the last record for which keep is true (removing later
// segments) and returns that record's place.
func cutAfterLast(t *testing.T, dir string, keep func(*wire) bool) (string, int) {
	t.Helper()
	segs := segPaths(t, dir)
	for si := len(segs) - 1; si >= 0; si-- {
		ls := lines(t, segs[si])
		for i := len(ls) - 1; i >= 0; i-- {
			w, _, err := decodeLine(bytes.TrimSuffix(ls[i], []byte("\n")))
			if err != nil {
				t.Fatal(err)
			}
			if keep(w) {
				writeLines(t, segs[si], ls[:i+1])
				for _, p := range segs[si+1:] {
					os.Remove(p)
				}
				return filepath.Base(segs[si]), i + 1
			}
		}
	}
	t.Fatal("no record to keep")
	return "", 0
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

// rechain applies edit to every record and recomputes the chain, as an attacker without the key would.
func rechain(t *testing.T, dir string, edit func(*wire)) {
	t.Helper()
	prev := ""
	for _, p := range segPaths(t, dir) {
		var out [][]byte
		for _, line := range lines(t, p) {
			w, _, err := decodeLine(bytes.TrimSuffix(line, []byte("\n")))
			if err != nil {
				t.Fatal(err)
			}
			edit(w)
			w.Prev = prev
			b, d, err := encodeLine(w)
			if err != nil {
				t.Fatal(err)
			}
			prev = b64.EncodeToString(d[:])
			out = append(out, b)
		}
		writeLines(t, p, out)
	}
}

// rechainHeads is rechain that also recomputes every checkpoint's head from the rewritten records, as
// an attacker without the key would: only the checkpoint signatures are left to catch the change.
func rechainHeads(t *testing.T, dir string, edit func(*wire)) {
	t.Helper()
	prev := ""
	hashes := map[uint64]string{}
	for i, p := range segPaths(t, dir) {
		var out [][]byte
		for j, line := range lines(t, p) {
			w, _, err := decodeLine(bytes.TrimSuffix(line, []byte("\n")))
			if err != nil {
				t.Fatal(err)
			}
			if i == 0 && j == 0 {
				prev = w.Prev // the log may start after pruned records
			}
			edit(w)
			if w.CP != nil {
				if h, ok := hashes[w.CP.HeadSeq]; ok {
					w.CP.Head = h
				}
			}
			w.Prev = prev
			b, d, err := encodeLine(w)
			if err != nil {
				t.Fatal(err)
			}
			prev = b64.EncodeToString(d[:])
			hashes[w.Seq] = prev
			out = append(out, b)
		}
		writeLines(t, p, out)
	}
}

func TestTornTailRepaired(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	tests := []struct {
		name string
		tail []byte
	}{
		{"partial record", []byte(`{"v":1,"seq":99,"time":"2026-01-01T00:00:00Z","type":"access.de`)},
		{"zeros after power loss", append(bytes.Repeat([]byte{0}, 300), []byte("\n\x00\x00\x00")...)},
		{"partial record with newline", []byte(`{"v":1,"seq":12,"ti` + "\n")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l := open(t, dir, id.opts(0))
			appendN(t, l, 10, AccessDenied)
			closeLog(t, l)
			p := segPaths(t, dir)[0]
			nLines := len(lines(t, p))
			last := seqAt(t, p, nLines)
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write(tc.tail)
			f.Close()

			// Reported, never accepted silently.
			kind := ErrTorn
			if bytes.Contains(tc.tail, []byte("\n")) {
				kind = ErrMalformed
			}
			verifyFails(t, dir, id.kel, kind, filepath.Base(p), nLines+1, last+1, "")

			// Repaired on the next open: cut back to the last complete record, with a record saying so.
			l = open(t, dir, id.opts(0))
			closeLog(t, l)
			rep := mustVerify(t, dir, id.kel)
			es := all(t, dir)
			var repaired *Entry
			for i := range es {
				if es[i].Type == LogRepaired {
					repaired = &es[i]
				}
			}
			if repaired == nil {
				t.Fatal("no audit.repaired record")
			}
			d := repaired.Details
			if d["segment"] != filepath.Base(p) || num(d["line"]) != int64(nLines+1) || num(d["removed_bytes"]) != int64(len(tc.tail)) ||
				num(d["last_seq"]) != int64(last) || repaired.Seq != last+1 || repaired.Outcome != OutcomeFailure {
				t.Fatalf("audit.repaired %+v (want segment %s line %d, %d bytes, last seq %d)", repaired.Record, filepath.Base(p), nLines+1, len(tc.tail), last)
			}
			if !rep.Sealed {
				t.Fatalf("report %+v", rep)
			}
			b, _ := os.ReadFile(p)
			if bytes.Contains(b, tc.tail) {
				t.Fatal("the torn bytes are still there")
			}
		})
	}
}

func num(v any) int64 {
	n, ok := v.(interface{ Int64() (int64, error) })
	if !ok {
		return -1
	}
	i, _ := n.Int64()
	return i
}

func TestDamageIsNotRepaired(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	dir := t.TempDir()
	l := open(t, dir, id.opts(0))
	appendN(t, l, 10, AccessDenied)
	closeLog(t, l)
	p := segPaths(t, dir)[0]
	ls := lines(t, p)
	n := 4 // a data record in the middle (checkpoints land where their signature arrives)
	for !bytes.Contains(ls[n], []byte("ed25519:peer")) {
		n++
	}
	if n >= len(ls)-2 {
		t.Fatalf("no data record in the middle of %d lines", len(ls))
	}
	ls[n] = bytes.Replace(ls[n], []byte("ed25519:peer"), []byte("ed25519:pEer"), 1)
	writeLines(t, p, ls)
	before, _ := os.ReadFile(p)

	_, err := Open(context.Background(), dir, id.opts(0))
	if err == nil || !errors.Is(err, ErrBrokenChain) || !strings.Contains(err.Error(), fmt.Sprintf("line %d", n+1)) ||
		!strings.Contains(err.Error(), "not a torn tail, so it is not repaired") {
		t.Fatalf("Open of a damaged log: %v", err)
	}
	after, _ := os.ReadFile(p)
	if !bytes.Equal(before, after) {
		t.Fatal("Open changed a damaged segment")
	}
	// The lock was released: another attempt gets the same answer, not ErrLocked.
	if _, err := Open(context.Background(), dir, id.opts(0)); errors.Is(err, ErrLocked) {
		t.Fatalf("lock not released after a failed Open: %v", err)
	}
}
