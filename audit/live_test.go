package audit

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/custos-agent/custos/keystore"
)

// holdLock takes LOCK as `flock audit/LOCK sleep 1d` would, until the test ends.
func holdLock(t *testing.T, dir string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
}

// TestLockDoesNotMakeVerifyLenient: whoever holds audit/LOCK, Verify of a log without the running
// writer's head is strict: a missing seal, uncovered records and a torn last line fail.
func TestLockDoesNotMakeVerifyLenient(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	base := filepath.Join(t.TempDir(), "base")
	buildLog(t, id, base)
	tests := []struct {
		name   string
		tamper func(t *testing.T, dir string)
		kind   error
		want   string
	}{
		{"cut back to a checkpoint", func(t *testing.T, dir string) {
			cutAfterLast(t, dir, func(w *wire) bool { return string(w.Details) == `{"reason":"manual"}` })
		}, ErrUnsigned, "without the closing seal"},
		{"cut the checkpoints off the tail", func(t *testing.T, dir string) {
			cutAfterLast(t, dir, func(w *wire) bool { return w.CP == nil })
		}, ErrUnsigned, "not covered by a signed checkpoint"},
		{"a torn last line", func(t *testing.T, dir string) {
			segs := segPaths(t, dir)
			p := segs[len(segs)-1]
			b, _ := os.ReadFile(p)
			if err := os.WriteFile(p, b[:len(b)-17], 0o600); err != nil {
				t.Fatal(err)
			}
		}, ErrTorn, "the last line is incomplete"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "audit")
			copyDir(t, base, dir)
			tc.tamper(t, dir)
			holdLock(t, dir)
			ve := verifyFails(t, dir, id.kel, tc.kind, "", 0, 0, tc.want)
			t.Logf("%v", ve)
		})
	}
}

// TestVerifyRunning: with the running writer's head (what the daemon reports over the control socket),
// the records after the last checkpoint are accepted as pending only when the log holds that head; a
// tail cut below it fails.
func TestVerifyRunning(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	dir := t.TempDir()
	o := id.opts(0)
	o.CheckpointEvery = 1000
	l := open(t, dir, o)
	defer l.Close()
	if err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 5, AccessDenied)
	h, err := l.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyRunning(dir, id.kel, h)
	if err != nil {
		t.Fatalf("VerifyRunning: %v", err)
	}
	if !rep.WriterActive || rep.Pending != 5 || rep.Sealed || rep.LastSeq != h.Seq {
		t.Fatalf("report %+v, head %+v", rep, h)
	}
	// Without the head the same log is not accepted (no seal, records not covered).
	verifyFails(t, dir, id.kel, ErrUnsigned, "", 0, 0, "not covered by a signed checkpoint")

	// Cut the last two records: the writer's head is no longer in the log.
	p := segPaths(t, dir)[0]
	ls := lines(t, p)
	writeLines(t, p, ls[:len(ls)-2])
	_, err = VerifyRunning(dir, id.kel, h)
	if err == nil {
		t.Fatal("VerifyRunning accepted a log cut below the writer's head")
	}
	if want := "does not hold the running agent's head"; !strings.Contains(err.Error(), want) {
		t.Fatalf("VerifyRunning: %v; want %q", err, want)
	}
	// A record rewritten below the head (chain recomputed): the head's hash differs.
	writeLines(t, p, ls)
	rechain(t, dir, func(w *wire) {
		if w.Seq == h.Seq-1 {
			w.Subject = "other"
		}
	})
	if _, err := VerifyRunning(dir, id.kel, h); err == nil || !strings.Contains(err.Error(), "does not hold the running agent's head") {
		t.Fatalf("VerifyRunning of a rewritten tail: %v", err)
	}
}
