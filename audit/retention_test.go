package audit

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
)

type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func pruned(t *testing.T, dir string) []Entry {
	var out []Entry
	for _, e := range all(t, dir) {
		if e.Type == LogPruned {
			out = append(out, e)
		}
	}
	return out
}

func TestRetentionBySize(t *testing.T) {
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
	var total int64
	for _, p := range segPaths(t, dir) {
		fi, _ := os.Stat(p)
		total += fi.Size()
	}
	// The writer prunes after each new segment; what is left is at most MaxBytes plus the active one.
	if total > 6000+2500 {
		t.Fatalf("%d bytes left after retention to 6000", total)
	}
	ps := pruned(t, dir)
	if len(ps) == 0 {
		t.Fatal("no audit.pruned record")
	}
	last := ps[len(ps)-1]
	if last.Checkpoint == nil || last.Details["reason"] != "size" || num(last.Details["through_seq"]) != int64(last.Checkpoint.HeadSeq) {
		t.Fatalf("audit.pruned %+v", last.Record)
	}
	closeLog(t, l)
	rep := mustVerify(t, dir, id.kel)
	if rep.FirstSeq <= 1 || !rep.Anchored || !rep.Sealed {
		t.Fatalf("report after retention %+v", rep)
	}
	if uint64(num(last.Details["through_seq"])) != rep.FirstSeq-1 {
		t.Fatalf("the last audit.pruned vouches through seq %v, the log starts at %d", last.Details["through_seq"], rep.FirstSeq)
	}

	// Reopen a pruned log, write more, prune again: still verifies.
	l = open(t, dir, o)
	appendN(t, l, 40, AccessDenied)
	if err := l.ApplyRetention(context.Background()); err != nil {
		t.Fatal(err)
	}
	closeLog(t, l)
	rep2 := mustVerify(t, dir, id.kel)
	if rep2.FirstSeq <= rep.FirstSeq {
		t.Fatalf("second retention did not move the start: %d then %d", rep.FirstSeq, rep2.FirstSeq)
	}

	// Removing one more segment by hand (outside retention) is caught.
	segs := segPaths(t, dir)
	if err := os.Remove(segs[0]); err != nil {
		t.Fatal(err)
	}
	verifyFails(t, dir, id.kel, ErrBrokenChain, filepath.Base(segs[1]), 1, 0, "no signed audit.pruned record accounts for")
}

func TestRetentionByAge(t *testing.T) {
	id := newIdent(t, keystore.P256, 0)
	dir := t.TempDir()
	c := newClock()
	o := id.opts(0)
	o.Now = c.now
	o.SegmentMaxAge = time.Hour
	o.Retention = Retention{MaxAge: 24 * time.Hour}
	l := open(t, dir, o)
	for day := 0; day < 4; day++ {
		appendN(t, l, 5, AccessDenied)
		c.advance(12 * time.Hour) // a new segment every half day
	}
	appendN(t, l, 1, AccessDenied)
	if err := l.ApplyRetention(context.Background()); err != nil {
		t.Fatal(err)
	}
	closeLog(t, l)
	rep := mustVerify(t, dir, id.kel)
	cutoff := c.now().Add(-24 * time.Hour)
	for _, e := range all(t, dir) {
		if e.Type == AccessDenied && e.Time.Before(cutoff.Add(-12*time.Hour)) {
			t.Fatalf("record %d of %s survived retention of 24h at %s", e.Seq, e.Time, c.now())
		}
	}
	ps := pruned(t, dir)
	if len(ps) == 0 || ps[len(ps)-1].Details["reason"] != "age" || !rep.Anchored {
		t.Fatalf("retention by age: %d pruned records, report %+v", len(ps), rep)
	}
}

func TestRetentionNeverRemovesTheActiveSegment(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	dir := t.TempDir()
	o := id.opts(0)
	o.Retention = Retention{MaxBytes: 1} // everything is too much
	l := open(t, dir, o)
	appendN(t, l, 5, AccessDenied)
	if err := l.ApplyRetention(context.Background()); err != nil {
		t.Fatal(err)
	}
	closeLog(t, l)
	if n := len(segPaths(t, dir)); n != 1 {
		t.Fatalf("%d segments", n)
	}
	if rep := mustVerify(t, dir, id.kel); rep.FirstSeq != 1 {
		t.Fatalf("report %+v", rep)
	}
}
