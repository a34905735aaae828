package audit

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// ident is a test identity: a key event log with gens+1 generations and the signers of each.
type ident struct {
	keys []keystore.Signer // keys[g] signs generation g; the last one is the pre-committed next key
	kel  identity.Log
	id   string
}

func newIdent(t testing.TB, alg keystore.Algorithm, rotations int) *ident {
	t.Helper()
	ctx := context.Background()
	gen := func() keystore.Signer {
		s, err := keystore.GenerateMemorySigner(alg)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	keys := []keystore.Signer{gen(), gen()}
	now := time.Now().Add(-time.Hour)
	e, err := identity.Incept(ctx, keys[0], keys[1].Public(), keystore.PublicKey{}, now)
	if err != nil {
		t.Fatal(err)
	}
	kel := identity.Log{Events: []identity.Event{e}}
	for i := 0; i < rotations; i++ {
		st, err := kel.Verify()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, gen())
		e, err := identity.Rotate(ctx, st, keys[i], keys[i+1], keys[i+2].Public(), now.Add(time.Duration(i+1)*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		kel.Events = append(kel.Events, e)
	}
	st, err := kel.Verify()
	if err != nil {
		t.Fatal(err)
	}
	return &ident{keys: keys, kel: kel, id: st.ID.String()}
}

func (id *ident) opts(gen uint64) Options {
	return Options{Signer: id.keys[gen], Generation: gen, AgentID: id.id, Logger: quietLogger()}
}

func open(t testing.TB, dir string, o Options) *Log {
	t.Helper()
	l, err := Open(context.Background(), dir, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

func appendN(t testing.TB, l *Log, n int, typ EventType) []uint64 {
	t.Helper()
	var seqs []uint64
	for i := 0; i < n; i++ {
		seq, err := l.Append(context.Background(), Record{
			Type: typ, Actor: "ed25519:peer", Subject: "task", Outcome: OutcomeDenied,
			Details: map[string]any{"i": i, "permission": "submit_tasks"},
		})
		if err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
		seqs = append(seqs, seq)
	}
	return seqs
}

func closeLog(t testing.TB, l *Log) {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func all(t testing.TB, dir string) []Entry {
	t.Helper()
	var out []Entry
	if err := Query(context.Background(), dir, Filter{}, func(e Entry) error {
		out = append(out, e)
		return nil
	}); err != nil {
		t.Fatalf("Query: %v", err)
	}
	return out
}

func mustVerify(t testing.TB, dir string, kel identity.Log) Report {
	t.Helper()
	rep, err := Verify(dir, kel)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return rep
}

// verifyLive verifies the log of a running writer with the head it reports (as agentctl does through
// the daemon).
func verifyLive(t testing.TB, l *Log, dir string, kel identity.Log) (Report, error) {
	t.Helper()
	h, err := l.Head(context.Background())
	if err != nil {
		t.Fatalf("Head: %v", err)
	}
	return VerifyRunning(dir, kel, h)
}

// verifyFails checks that Verify fails with kind, at segment/line/seq, with a message containing want.
func verifyFails(t testing.TB, dir string, kel identity.Log, kind error, seg string, line int, seq uint64, want string) *VerifyError {
	t.Helper()
	_, err := Verify(dir, kel)
	if err == nil {
		t.Fatalf("Verify succeeded; want %v", kind)
	}
	if !errors.Is(err, kind) {
		t.Fatalf("Verify: %v; want errors.Is %v", err, kind)
	}
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("Verify: %T %v is not a *VerifyError", err, err)
	}
	if (seg != "" && ve.Segment != seg) || (line != 0 && ve.Line != line) || (seq != 0 && ve.Seq != seq) {
		t.Fatalf("Verify: %v\nat %s line %d seq %d; want %s line %d seq %d", err, ve.Segment, ve.Line, ve.Seq, seg, line, seq)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("Verify: %q does not say %q", err, want)
	}
	return ve
}

// lines returns the lines of a segment (without newlines).
func lines(t testing.TB, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ls := bytes.SplitAfter(b, []byte("\n"))
	if len(ls) > 0 && len(ls[len(ls)-1]) == 0 {
		ls = ls[:len(ls)-1]
	}
	return ls
}

func writeLines(t testing.TB, path string, ls [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(ls, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

func segPaths(t testing.TB, dir string) []string {
	t.Helper()
	segs, err := listSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range segs {
		out = append(out, filepath.Join(dir, s.name))
	}
	return out
}

// countingObserver records what the writer reports.
type countingObserver struct {
	mu                          sync.Mutex
	written, failed, cpFailed   int
	acks                        int
	lastWriteErr, lastSignError error
	failing                     bool
	lost                        int
}

func (o *countingObserver) AuditRecordsWritten(n int) { o.mu.Lock(); o.written += n; o.mu.Unlock() }
func (o *countingObserver) AuditWriteFailed(err error) {
	o.mu.Lock()
	o.failed++
	o.lastWriteErr = err
	o.mu.Unlock()
}
func (o *countingObserver) AuditCheckpointFailed(err error) {
	o.mu.Lock()
	o.cpFailed++
	o.lastSignError = err
	o.mu.Unlock()
}
func (o *countingObserver) AuditAckLatency(time.Duration) { o.mu.Lock(); o.acks++; o.mu.Unlock() }
func (o *countingObserver) AuditFailing(f bool)           { o.mu.Lock(); o.failing = f; o.mu.Unlock() }
func (o *countingObserver) AuditRecordLost()              { o.mu.Lock(); o.lost++; o.mu.Unlock() }

func (o *countingObserver) state() (failing bool, lost int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.failing, o.lost
}

func (o *countingObserver) snapshot() (written, failed, cpFailed, acks int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.written, o.failed, o.cpFailed, o.acks
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func identityRotate(t *testing.T, st identity.State, prior, next keystore.Signer, after keystore.Signer) (identity.Event, error) {
	t.Helper()
	return identity.Rotate(context.Background(), st, prior, next, after.Public(), time.Now())
}
