package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/custos-agent/custos/keystore"
)

// wireAt returns the decoded record of seq (and its hash) from a log.
func wireAt(t *testing.T, dir string, seq uint64) (*wire, [32]byte) {
	t.Helper()
	for _, p := range segPaths(t, dir) {
		for _, line := range lines(t, p) {
			w, d, err := decodeLine(bytes.TrimSuffix(line, []byte("\n")))
			if err != nil {
				t.Fatal(err)
			}
			if w.Seq == seq {
				return w, d
			}
		}
	}
	t.Fatalf("no record %d", seq)
	return nil, [32]byte{}
}

// forgeAppend appends a record made by someone without the key: type, details and a copied checkpoint
// block, chained to the last record of the log.
func forgeAppend(t *testing.T, dir string, typ EventType, details string, cp *Checkpoint) {
	t.Helper()
	segs := segPaths(t, dir)
	p := segs[len(segs)-1]
	ls := lines(t, p)
	last, d, err := decodeLine(bytes.TrimSuffix(ls[len(ls)-1], []byte("\n")))
	if err != nil {
		t.Fatal(err)
	}
	w := &wire{V: RecordVersion, Seq: last.Seq + 1, Time: last.Time, Type: string(typ), Actor: "audit",
		Subject: last.Subject, Outcome: string(OutcomeInfo), Details: json.RawMessage(details),
		Prev: b64.EncodeToString(d[:])}
	if cp != nil {
		c := *cp
		w.CP = &c
	}
	line, _, err := encodeLine(w)
	if err != nil {
		t.Fatal(err)
	}
	writeLines(t, p, append(ls, line))
}

// dropThrough removes every record up to and including seq (whole segments, and the head of the
// segment that holds seq+1), as an attacker deleting the oldest part of the log.
func dropThrough(t *testing.T, dir string, seq uint64) {
	t.Helper()
	for _, p := range segPaths(t, dir) {
		var keep [][]byte
		for _, line := range lines(t, p) {
			w, _, err := decodeLine(bytes.TrimSuffix(line, []byte("\n")))
			if err != nil {
				t.Fatal(err)
			}
			if w.Seq > seq {
				keep = append(keep, line)
			}
		}
		os.Remove(p)
		if len(keep) > 0 {
			w, _, _ := decodeLine(bytes.TrimSuffix(keep[0], []byte("\n")))
			writeLines(t, filepath.Join(dir, segmentName(w.Seq)), keep)
		}
	}
}

// TestCheckpointReuseRefused: a checkpoint's signed block cannot be copied into a record of another
// kind: not into a forged closing seal (the log cut back to the checkpoint's head looks closed) and not
// into a forged audit.pruned (the oldest records deleted look removed by retention).
func TestCheckpointReuseRefused(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	base := filepath.Join(t.TempDir(), "base")
	buildLog(t, id, base)
	// A manual checkpoint in the middle of the log, its head a data record.
	c := findFirst(t, base, func(w *wire) bool {
		return w.CP != nil && string(w.Details) == `{"reason":"manual"}` && w.Seq > 20
	})
	cw, _ := wireAt(t, base, c.seq)
	head := cw.CP.HeadSeq
	sealPlace := findFirst(t, base, func(w *wire) bool { return isSeal(w) })
	seal, _ := wireAt(t, base, sealPlace.seq)

	t.Run("forged seal after a cut", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "audit")
		copyDir(t, base, dir)
		cutAfterLast(t, dir, func(w *wire) bool { return w.Seq == head })
		forgeAppend(t, dir, LogCheckpoint, `{"reason":"close"}`, cw.CP)
		verifyFails(t, dir, id.kel, ErrBadCheckpoint, "", 0, head+1, "signature does not verify")
	})
	t.Run("forged audit.pruned after deleting the oldest records", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "audit")
		copyDir(t, base, dir)
		dropThrough(t, dir, head)
		last := findFirst(t, dir, func(w *wire) bool { return isSeal(w) }).seq
		forgeAppend(t, dir, LogPruned, `{"bytes":1,"first_seq":1,"reason":"size","segments":["x"],"through_seq":`+itoa(head)+`}`, cw.CP)
		// and a forged seal (the real seal's block) so that the log still ends closed
		forgeAppend(t, dir, LogCheckpoint, `{"reason":"close"}`, seal.CP)
		verifyFails(t, dir, id.kel, ErrBadCheckpoint, "", 0, last+1, "signature does not verify")
	})
	t.Run("a seal's block moved after records added behind it", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "audit")
		copyDir(t, base, dir)
		forgeAppend(t, dir, AccessDenied, `{}`, nil)
		forgeAppend(t, dir, LogCheckpoint, `{"reason":"close"}`, seal.CP)
		verifyFails(t, dir, id.kel, ErrBadCheckpoint, "", 0, sealPlace.seq+2, "a seal must directly follow its head")
	})
	t.Run("a data record carrying a checkpoint block", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "audit")
		copyDir(t, base, dir)
		forgeAppend(t, dir, AccessDenied, `{}`, seal.CP)
		verifyFails(t, dir, id.kel, ErrBadCheckpoint, "", 0, sealPlace.seq+1, "may not carry a checkpoint")
	})
}

// TestPrunedRangeSigned: the range an audit.pruned record names is signed; changing it (the chain and
// later heads recomputed, as without the key) fails at that record.
func TestPrunedRangeSigned(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	dir := t.TempDir()
	o := id.opts(0)
	o.SegmentMaxBytes = 2000
	o.Retention = Retention{MaxBytes: 6000}
	l := open(t, dir, o)
	appendN(t, l, 60, AccessDenied)
	if err := l.ApplyRetention(context.Background()); err != nil {
		t.Fatal(err)
	}
	closeLog(t, l)
	if rep := mustVerify(t, dir, id.kel); !rep.Anchored {
		t.Fatalf("not anchored: %+v", rep)
	}
	p := findFirst(t, dir, func(w *wire) bool { return EventType(w.Type) == LogPruned })
	rechainHeads(t, dir, func(w *wire) {
		if w.Seq == p.seq {
			var d map[string]any
			if err := json.Unmarshal(w.Details, &d); err != nil {
				t.Fatal(err)
			}
			d["first_seq"] = d["first_seq"].(float64) + 1
			b, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			w.Details = b
		}
	})
	verifyFails(t, dir, id.kel, ErrBadCheckpoint, p.seg, p.line, p.seq, "the signature does not verify")
}
