package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/internal/backoff"
	"github.com/custos-agent/custos/keystore"
)

// faultDisk makes the writer's segment files fail on demand: a write that fails is a short write (half
// its bytes reach the file) followed by the error, as on a full file system; a failing fsync returns its
// error after the bytes were written (they may or may not be on disk).
type faultDisk struct {
	mu                sync.Mutex
	writeErr, syncErr error
}

func (d *faultDisk) set(writeErr, syncErr error) {
	d.mu.Lock()
	d.writeErr, d.syncErr = writeErr, syncErr
	d.mu.Unlock()
}

func (d *faultDisk) errs() (error, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.writeErr, d.syncErr
}

// opts makes o use the fault disk, with short retry delays.
func (d *faultDisk) opts(o Options) Options {
	o.wrapFile = func(f *os.File) segmentFile { return faultFile{File: f, d: d} }
	o.Retry = backoff.Policy{Min: 2 * time.Millisecond, Max: 20 * time.Millisecond}
	return o
}

type faultFile struct {
	*os.File
	d *faultDisk
}

func (f faultFile) Write(b []byte) (int, error) {
	if err, _ := f.d.errs(); err != nil {
		n, _ := f.File.Write(b[:len(b)/2])
		return n, &os.PathError{Op: "write", Path: f.Name(), Err: err}
	}
	return f.File.Write(b)
}

func (f faultFile) Sync() error {
	if _, err := f.d.errs(); err != nil {
		return &os.PathError{Op: "sync", Path: f.Name(), Err: err}
	}
	return f.File.Sync()
}

// waitAttempts waits until the writer has made at least n attempts to write again.
func waitAttempts(t *testing.T, l *Log, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for l.Health().Attempts < n {
		if time.Now().After(deadline) {
			t.Fatalf("the writer made %d attempts to recover in 30s, want %d: %+v", l.Health().Attempts, n, l.Health())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitWriting waits until the log writes again.
func waitWriting(t *testing.T, l *Log) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !l.Health().Writing {
		if time.Now().After(deadline) {
			t.Fatalf("the log did not recover in 30s: %+v", l.Health())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestDiskFullRefusesThenRecovers: a full disk (short writes ending in ENOSPC) makes Append refuse with
// the cause, Health and the observer say so; once space returns the writer re-syncs the segment and
// writes again by itself: every acknowledged record is in the log, the chain has no gap (Verify), and an
// audit.recovered record says why, since when and how many records were refused.
func TestDiskFullRefusesThenRecovers(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	dir := t.TempDir()
	obs := &countingObserver{}
	disk := &faultDisk{}
	o := disk.opts(id.opts(0))
	o.Observer = obs
	l := open(t, dir, o)
	acked := appendN(t, l, 5, AccessDenied)
	before := l.Health()
	if !before.Writing || before.Cause != "" {
		t.Fatalf("health of a writing log: %+v", before)
	}

	disk.set(syscall.ENOSPC, nil)
	refused := 0
	for i := 0; i < 4; i++ {
		_, err := l.Append(context.Background(), Record{Type: AccessDenied, Details: map[string]any{"i": 100 + i}})
		if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), CauseDiskFull) {
			t.Fatalf("Append on a full disk: %v", err)
		}
		refused++
	}
	waitAttempts(t, l, 2)
	h := l.Health()
	if h.Writing || h.Cause != CauseDiskFull || !strings.Contains(h.Error, "no space left on device") || h.RecordsLost != uint64(refused) || h.Since.IsZero() {
		t.Fatalf("health on a full disk: %+v (want cause %s, %d lost)", h, CauseDiskFull, refused)
	}
	if failing, lost := obs.state(); !failing || lost != refused {
		t.Fatalf("observer: failing %v, lost %d; want true, %d", failing, lost, refused)
	}

	disk.set(nil, nil) // space returns
	waitWriting(t, l)
	if failing, _ := obs.state(); failing {
		t.Fatal("observer still told the log fails after it recovered")
	}
	acked = append(acked, appendN(t, l, 3, AccessDenied)...)
	closeLog(t, l)

	rep := mustVerify(t, dir, id.kel)
	es := all(t, dir)
	if rep.Records != uint64(len(es)) {
		t.Fatalf("verify counted %d records, the log has %d", rep.Records, len(es))
	}
	bySeq := map[uint64]Entry{}
	var recovered []Entry
	for _, e := range es {
		bySeq[e.Seq] = e
		if e.Type == LogRecovered {
			recovered = append(recovered, e)
		}
		if n, ok := e.Details["i"].(json.Number); ok && strings.HasPrefix(n.String(), "10") && len(n.String()) == 3 {
			t.Fatalf("a refused record is in the log: %+v", e)
		}
	}
	for _, seq := range acked {
		if e, ok := bySeq[seq]; !ok || e.Type != AccessDenied {
			t.Fatalf("acknowledged record seq %d is missing or replaced: %+v", seq, e)
		}
	}
	if len(recovered) != 1 {
		t.Fatalf("%d audit.recovered records, want 1", len(recovered))
	}
	// last_seq is the last record written before the failure: the fifth acknowledged one or, when the
	// background signer was quick enough, a checkpoint after it.
	lastBefore := uint64(0)
	for _, e := range es {
		if e.Seq < recovered[0].Seq && e.Seq > lastBefore {
			lastBefore = e.Seq
		}
	}
	d := recovered[0].Details
	if d["cause"] != CauseDiskFull || d["records_lost"] != json.Number("4") || d["failed_at"] == nil ||
		d["last_seq"] != json.Number(jsonSeq(lastBefore)) || lastBefore < acked[4] ||
		(lastBefore != acked[4] && bySeq[lastBefore].Type != LogCheckpoint) {
		t.Fatalf("audit.recovered details: %v (last record before it: %d, fifth acknowledged: %d)", d, lastBefore, acked[4])
	}
}

func jsonSeq(s uint64) string { b, _ := json.Marshal(s); return string(b) }

// TestFsyncFailureDropsTheUnacknowledgedBatch: a batch whose write succeeded but whose fsync failed was
// never acknowledged; recovery cuts it off before writing again, so the chain continues from the last
// acknowledged record (without the cut the next record's prev would not match and Verify would fail).
func TestFsyncFailureDropsTheUnacknowledgedBatch(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	dir := t.TempDir()
	disk := &faultDisk{}
	l := open(t, dir, disk.opts(id.opts(0)))
	acked := appendN(t, l, 3, AccessDenied)
	size := func() int64 {
		var n int64
		for _, p := range segPaths(t, dir) {
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			n += fi.Size()
		}
		return n
	}
	good := size()
	disk.set(nil, syscall.EIO) // writes reach the page cache, fsync fails
	if _, err := l.Append(context.Background(), Record{Type: AccessDenied, Details: map[string]any{"lost": true}}); !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), CauseIOError) {
		t.Fatalf("Append with a failing fsync: %v", err)
	}
	if size() <= good {
		t.Fatal("the fault did not leave the unacknowledged record's bytes in the file; the test proves nothing")
	}
	disk.set(nil, nil)
	waitWriting(t, l)
	acked = append(acked, appendN(t, l, 2, AccessDenied)...)
	closeLog(t, l)
	mustVerify(t, dir, id.kel)
	es := all(t, dir)
	for _, e := range es {
		if e.Details["lost"] == true {
			t.Fatalf("the unacknowledged record (fsync failed) is in the log: %+v", e)
		}
	}
	seen := map[uint64]bool{}
	for _, e := range es {
		seen[e.Seq] = true
	}
	for _, s := range acked {
		if !seen[s] {
			t.Fatalf("acknowledged seq %d missing", s)
		}
	}
}

// TestResyncRefusesADamagedSegment: if the segment lost or changed acknowledged bytes while the log was
// failing (someone cut or edited it), the writer does not paper over it: it stays failed and says to
// verify.
func TestResyncRefusesADamagedSegment(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, path string)
		want   string
	}{
		{"cut", func(t *testing.T, path string) {
			if err := os.Truncate(path, 10); err != nil {
				t.Fatal(err)
			}
		}, "shorter than its acknowledged records"},
		{"last record replaced", func(t *testing.T, path string) {
			// A well-formed record of the same length in its place (its own hash right, another time):
			// only the comparison with the acknowledged head sees it.
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			last := strings.LastIndex(strings.TrimSuffix(string(b), "\n"), "\n") + 1
			w, _, err := decodeLine(b[last : len(b)-1])
			if err != nil {
				t.Fatal(err)
			}
			ts := []byte(w.Time)
			ts[len(ts)-2] = '0' + ('1'-ts[len(ts)-2]+'0')%2 // flip between 0 and 1 in a digit near the end
			w.Time = string(ts)
			line, _, err := encodeLine(w)
			if err != nil {
				t.Fatal(err)
			}
			if len(line) != len(b)-last {
				t.Fatalf("the replacement is %d bytes, the record %d", len(line), len(b)-last)
			}
			b = append(b[:last], line...)
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "is not the acknowledged head"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := newIdent(t, keystore.Ed25519, 0)
			dir := t.TempDir()
			disk := &faultDisk{}
			o := disk.opts(id.opts(0))
			l := open(t, dir, o)
			appendN(t, l, 3, AccessDenied)
			disk.set(syscall.ENOSPC, nil)
			if _, err := l.Append(context.Background(), Record{Type: AccessDenied}); !errors.Is(err, ErrFailed) {
				t.Fatalf("Append: %v", err)
			}
			paths := segPaths(t, dir)
			tc.damage(t, paths[len(paths)-1])
			disk.set(nil, nil)
			waitAttempts(t, l, 3)
			h := l.Health()
			if h.Writing || !strings.Contains(h.Error, tc.want) {
				t.Fatalf("health after the damage: %+v (want %q)", h, tc.want)
			}
			if err := l.Close(); !errors.Is(err, ErrFailed) {
				t.Fatalf("Close: %v", err)
			}
		})
	}
}

// TestVerifyReportsAnUnsealedTail: a log whose only fault is its tail (records after the last checkpoint,
// no seal: what a killed writer leaves) fails with ErrUnsigned and Report.Unsealed; a log with any
// other fault is not Unsealed, even if its tail is unsealed too.
func TestVerifyReportsAnUnsealedTail(t *testing.T) {
	removeSeal := func(t *testing.T, path string) {
		ls := lines(t, path)
		writeLines(t, path, ls[:len(ls)-1])
	}
	for _, tc := range []struct {
		name       string
		checkpoint bool // sign a checkpoint over everything before the seal
		damage     func(t *testing.T, path string)
		unsealed   bool
		kind       error
	}{
		{"seal removed, records uncovered", false, removeSeal, true, ErrUnsigned},
		{"seal removed, everything covered", true, removeSeal, true, ErrUnsigned},
		{"seal removed and a record altered", false, func(t *testing.T, path string) {
			ls := lines(t, path)
			ls = ls[:len(ls)-1]
			// The record before the last one: it has a successor whose link it breaks. Where the
			// first checkpoint lands depends on how fast the background signer is, so no fixed line.
			n := slices.IndexFunc(ls, func(b []byte) bool { return bytes.Contains(b, []byte(`"i":4,`)) })
			if n < 0 {
				t.Fatal("no record 4 in the segment")
			}
			i := bytes.Index(ls[n], []byte("submit_tasks"))
			ls[n][i] = 'S'
			writeLines(t, path, ls)
		}, false, ErrBrokenChain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := newIdent(t, keystore.Ed25519, 0)
			dir := t.TempDir()
			o := id.opts(0)
			o.CheckpointEvery = 1000000
			l := open(t, dir, o)
			appendN(t, l, 6, AccessDenied)
			if tc.checkpoint {
				if err := l.Checkpoint(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			closeLog(t, l)
			paths := segPaths(t, dir)
			tc.damage(t, paths[len(paths)-1])
			rep, err := Verify(dir, id.kel)
			if !errors.Is(err, tc.kind) || rep.Unsealed != tc.unsealed {
				t.Fatalf("Verify: %v (unsealed %v), want %v (unsealed %v)", err, rep.Unsealed, tc.kind, tc.unsealed)
			}
		})
	}
}
