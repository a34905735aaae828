package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// auditHomeFixture is an agent home with kel.jsonl and an audit log of several segments, made in-test.
type auditHomeFixture struct {
	home   string
	id     string
	signer keystore.Signer
}

func newAuditHome(t *testing.T, records int) *auditHomeFixture {
	t.Helper()
	ctx := context.Background()
	signer, err := keystore.GenerateMemorySigner(keystore.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	next, err := keystore.GenerateMemorySigner(keystore.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := identity.Incept(ctx, signer, next.Public(), keystore.PublicKey{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(t.TempDir(), "home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	kel := identity.Log{Events: []identity.Event{ev}}
	if err := os.WriteFile(filepath.Join(home, "kel.jsonl"), kel.Encode(), 0o600); err != nil {
		t.Fatal(err)
	}
	f := &auditHomeFixture{home: home, id: ev.ID, signer: signer}
	l := f.open(t)
	for i := 0; i < records; i++ {
		r := audit.Record{Type: audit.AccessDenied, Actor: "ed25519:peer-a", Subject: "task_request", Outcome: audit.OutcomeDenied,
			Details: map[string]any{"permission": "submit_tasks", "i": i}}
		if i%4 == 0 {
			r = audit.Record{Type: audit.AuthFailure, Actor: "ed25519:peer-b", Outcome: audit.OutcomeFailure,
				Details: map[string]any{"reason": "bad_signature", "i": i}}
		}
		if _, err := l.Append(ctx, r); err != nil {
			t.Fatal(err)
		}
		if i%5 == 4 {
			if err := l.Checkpoint(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *auditHomeFixture) dir() string { return filepath.Join(f.home, "audit") }

func (f *auditHomeFixture) open(t *testing.T) *audit.Log {
	t.Helper()
	l, err := audit.Open(context.Background(), f.dir(), audit.Options{Signer: f.signer, AgentID: f.id, SegmentMaxBytes: 2000,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (f *auditHomeFixture) segments(t *testing.T) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(f.dir(), "*.jsonl"))
	if err != nil || len(m) < 3 {
		t.Fatalf("segments %v, %v", m, err)
	}
	return m
}

func agentctl(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(append([]string{"agentctl"}, args...), strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ls := bytes.SplitAfter(b, []byte("\n"))
	return ls[:len(ls)-1]
}

func writeLines(t *testing.T, path string, ls [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(ls, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

// seqOf returns the seq of a stored line.
func seqOf(t *testing.T, line []byte) uint64 {
	t.Helper()
	var r struct{ Seq uint64 }
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatal(err)
	}
	return r.Seq
}

func TestAuditVerifyCommand(t *testing.T) {
	f := newAuditHome(t, 40)
	code, out, errOut := agentctl("--home", f.home, "audit", "verify")
	if code != 0 || !regexp.MustCompile(`audit log verifies: \d+ records in \d+ segments, seq 1-\d+, \d+ checkpoints signed by key generation 0`).MatchString(out) ||
		!strings.Contains(out, "head: seq ") {
		t.Fatalf("verify: exit %d\n%s%s", code, out, errOut)
	}
	// --home after the subcommand works too.
	if code, _, errOut := agentctl("audit", "verify", "--home", f.home); code != 0 {
		t.Fatalf("audit verify --home: exit %d: %s", code, errOut)
	}

	other := newAuditHome(t, 40) // another agent, same layout
	segs := f.segments(t)
	base := filepath.Base
	tests := []struct {
		name   string
		tamper func(t *testing.T, dir string) (place, why string)
	}{
		{"flip one byte", func(t *testing.T, dir string) (string, string) {
			p := filepath.Join(dir, base(segs[1]))
			ls := readLines(t, p)
			n := 0
			for !bytes.Contains(ls[n], []byte(`"actor":"ed25519:peer-`)) {
				n++
			}
			seq := seqOf(t, ls[n])
			i := bytes.Index(ls[n], []byte("peer-")) + len("peer-")
			ls[n][i] ^= 0x20 // a -> A
			writeLines(t, p, ls)
			return at(base(segs[1]), n+1, seq), "the stored hash does not match the record's content"
		}},
		{"delete a record", func(t *testing.T, dir string) (string, string) {
			p := filepath.Join(dir, base(segs[1]))
			ls := readLines(t, p)
			gone := seqOf(t, ls[2])
			writeLines(t, p, append(ls[:2:2], ls[3:]...))
			return at(base(segs[1]), 3, gone+1), fmt.Sprintf("expected seq %d, found %d: record %d is missing", gone, gone+1, gone)
		}},
		{"reorder two records", func(t *testing.T, dir string) (string, string) {
			p := filepath.Join(dir, base(segs[2]))
			ls := readLines(t, p)
			s := seqOf(t, ls[1])
			ls[1], ls[2] = ls[2], ls[1]
			writeLines(t, p, ls)
			return at(base(segs[2]), 2, s+1), fmt.Sprintf("expected seq %d, found %d", s, s+1)
		}},
		{"truncate the tail", func(t *testing.T, dir string) (string, string) {
			p := filepath.Join(dir, base(segs[len(segs)-1]))
			ls := readLines(t, p)
			last := seqOf(t, ls[len(ls)-1])
			b, _ := os.ReadFile(p)
			if err := os.WriteFile(p, b[:len(b)-30], 0o600); err != nil {
				t.Fatal(err)
			}
			return fmt.Sprintf("%s line %d (expected seq %d)", base(p), len(ls), last), "torn audit record: the last line is incomplete"
		}},
		{"truncate whole records", func(t *testing.T, dir string) (string, string) {
			// Drop the last segment and the closing checkpoint with it: the end is not sealed.
			os.Remove(filepath.Join(dir, base(segs[len(segs)-1])))
			kept := segs[:len(segs)-1]
			seg, line, seq, ok := firstUncovered(t, kept)
			if !ok { // everything left is covered, but the seal is gone
				ls := readLines(t, kept[len(kept)-1])
				return at(base(kept[len(kept)-1]), len(ls), seqOf(t, ls[len(ls)-1])), "without the closing seal"
			}
			return at(seg, line, seq), "not covered by a signed checkpoint"
		}},
		{"swap in a segment from another agent", func(t *testing.T, dir string) (string, string) {
			theirs := other.segments(t)
			b, err := os.ReadFile(theirs[1])
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, base(segs[1])), b, 0o600); err != nil {
				t.Fatal(err)
			}
			return base(segs[1]) + " line 1 (seq ", "audit hash chain broken"
		}},
		{"rewrite without the key, checkpoint heads recomputed", func(t *testing.T, dir string) (string, string) {
			p := filepath.Join(dir, base(segs[1]))
			changed := seqOf(t, readLines(t, p)[1])
			rewriteWithoutKey(t, dir, func(w *auditWire) {
				if w.Seq == changed {
					w.Actor = "ed25519:someone-else"
				}
			})
			return "", "the signature does not verify"
		}},
		{"flip a byte of a checkpoint signature, hashes recomputed", func(t *testing.T, dir string) (string, string) {
			flipped := false
			rewriteWithoutKey(t, dir, func(w *auditWire) {
				if w.CP != nil && w.Seq > 5 && !flipped {
					flipped = true
					sig, err := base64.RawURLEncoding.DecodeString(w.CP.Sig)
					if err != nil {
						t.Fatal(err)
					}
					sig[3] ^= 0x01
					w.CP.Sig = base64.RawURLEncoding.EncodeToString(sig)
				}
			})
			return "", "the signature does not verify"
		}},
		{"alter a record, its own hash recomputed", func(t *testing.T, dir string) (string, string) {
			p := filepath.Join(dir, base(segs[1]))
			ls := readLines(t, p)
			var w auditWire
			if err := json.Unmarshal(ls[1], &w); err != nil {
				t.Fatal(err)
			}
			w.Subject = "nothing-happened"
			w.Hash = specHash(&w)
			b, err := json.Marshal(&w)
			if err != nil {
				t.Fatal(err)
			}
			ls[1] = append(b, '\n')
			writeLines(t, p, ls)
			return at(base(segs[1]), 3, w.Seq+1), fmt.Sprintf("prev does not match the hash of seq %d", w.Seq)
		}},
		{"lock held by someone, tail cut back to a checkpoint", func(t *testing.T, dir string) (string, string) {
			// Remove the seal (the last record): the lock must not excuse it.
			p := filepath.Join(dir, base(segs[len(segs)-1]))
			ls := readLines(t, p)
			writeLines(t, p, ls[:len(ls)-1])
			holdAuditLock(t, dir)
			return "", "audit/LOCK is held, but no agent daemon answers"
		}},
		{"lock held by someone, torn last line", func(t *testing.T, dir string) (string, string) {
			p := filepath.Join(dir, base(segs[len(segs)-1]))
			ls := readLines(t, p)
			last := seqOf(t, ls[len(ls)-1])
			b, _ := os.ReadFile(p)
			if err := os.WriteFile(p, b[:len(b)-30], 0o600); err != nil {
				t.Fatal(err)
			}
			holdAuditLock(t, dir)
			return fmt.Sprintf("%s line %d (expected seq %d)", base(p), len(ls), last), "torn audit record: the last line is incomplete"
		}},
		{"swap in another agent's whole log", func(t *testing.T, dir string) (string, string) {
			os.RemoveAll(dir)
			copyTree(t, other.dir(), dir)
			return "00000000000000000001.jsonl line ", "made with a key that is not in kel.jsonl of " + f.id
		}},
	}
	// Cutting whole records off the end leaves what a killed agent leaves: an unsealed tail, a warning with
	// exit 0 by default (TestAuditVerifyUnsealedTail), an error under --strict. Every other case is an error
	// either way.
	unsealedOnly := map[string]bool{"truncate whole records": true}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			home := filepath.Join(t.TempDir(), "home")
			copyTree(t, f.home, home)
			place, why := tc.tamper(t, filepath.Join(home, "audit"))
			code, out, errOut := agentctl("--home", home, "audit", "verify")
			if unsealedOnly[tc.name] {
				if code != 0 || !strings.Contains(errOut, "warning: the log is not sealed") || !strings.Contains(errOut, why) {
					t.Fatalf("an unsealed tail without --strict: exit %d, want 0 with a warning saying %q\n%s%s", code, why, out, errOut)
				}
				code, out, errOut = agentctl("--home", home, "audit", "verify", "--strict")
			}
			if code != 1 {
				t.Fatalf("exit %d, want 1\n%s%s", code, out, errOut)
			}
			want := "agentctl: audit log " + filepath.Join(home, "audit") + " does not verify: " + place
			if !strings.HasPrefix(errOut, want) || !strings.Contains(errOut, why) {
				t.Fatalf("stderr:\n%s\nwant it to start with %q and say %q", errOut, want, why)
			}
			if !regexp.MustCompile(`\.jsonl line \d+ \((expected )?seq \d+\): `).MatchString(errOut) {
				t.Fatalf("stderr does not name segment, line and seq: %s", errOut)
			}
			if out != "" {
				t.Fatalf("stdout on failure: %q", out)
			}
		})
	}

	t.Run("unsealed tail", func(t *testing.T) { testUnsealedTail(t, f) })
	t.Run("no key event log", func(t *testing.T) {
		home := filepath.Join(t.TempDir(), "home")
		copyTree(t, f.home, home)
		os.Remove(filepath.Join(home, "kel.jsonl"))
		code, _, errOut := agentctl("--home", home, "audit", "verify")
		if code != 1 || !strings.Contains(errOut, "no key event log at "+filepath.Join(home, "kel.jsonl")) {
			t.Fatalf("exit %d: %s", code, errOut)
		}
	})
	t.Run("no audit log", func(t *testing.T) {
		home := filepath.Join(t.TempDir(), "home")
		copyTree(t, f.home, home)
		os.RemoveAll(filepath.Join(home, "audit"))
		code, _, errOut := agentctl("--home", home, "audit", "verify")
		if code != 1 || !strings.Contains(errOut, "no audit log") {
			t.Fatalf("exit %d: %s", code, errOut)
		}
	})
	t.Run("writer running", func(t *testing.T) {
		home := filepath.Join(t.TempDir(), "home")
		copyTree(t, f.home, home)
		g := &auditHomeFixture{home: home, id: f.id, signer: f.signer}
		l := g.open(t)
		defer l.Close()
		if _, err := l.Append(context.Background(), audit.Record{Type: audit.AgentStarted}); err != nil {
			t.Fatal(err)
		}
		if err := l.Checkpoint(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Append(context.Background(), audit.Record{Type: audit.ConfigLoaded, Details: map[string]any{"digest": "abc"}}); err != nil {
			t.Fatal(err)
		}
		// Without the daemon's word the unsealed log does not verify, although the writer holds the lock.
		code, out, errOut := agentctl("--home", home, "audit", "verify")
		if code != 1 || !strings.Contains(errOut, "not covered by a signed checkpoint") || !strings.Contains(errOut, "audit/LOCK is held") {
			t.Fatalf("without the daemon: exit %d\n%s%s", code, out, errOut)
		}
		serveAuditHead(t, home, l)
		code, out, errOut = agentctl("--home", home, "audit", "verify")
		if code != 0 || !regexp.MustCompile(`the agent is writing the log \(its head seq \d+ is in the log\): 1 records are not yet covered`).MatchString(out) {
			t.Fatalf("exit %d\n%s%s", code, out, errOut)
		}
		// Cut the last record below the head the daemon reports.
		segs, _ := filepath.Glob(filepath.Join(home, "audit", "*.jsonl"))
		p := segs[len(segs)-1]
		ls := readLines(t, p)
		writeLines(t, p, ls[:len(ls)-1])
		code, out, errOut = agentctl("--home", home, "audit", "verify")
		if code != 1 || !strings.Contains(errOut, "does not hold the running agent's head") {
			t.Fatalf("tail cut below the daemon's head: exit %d\n%s%s", code, out, errOut)
		}
	})
	if code, _, errOut := agentctl("--home", f.home, "audit", "verify", "extra"); code != 2 || !strings.Contains(errOut, "takes no arguments") {
		t.Fatalf("extra argument: exit %d: %s", code, errOut)
	}
}

// firstUncovered finds, independently of the verifier, the first record that no checkpoint covers.
func firstUncovered(t *testing.T, segs []string) (string, int, uint64, bool) {
	t.Helper()
	type at struct {
		seg  string
		line int
		seq  uint64
	}
	var data []at
	var covered uint64
	for _, p := range segs {
		for i, l := range readLines(t, p) {
			var r struct {
				Seq uint64
				CP  *struct {
					HeadSeq uint64 `json:"head_seq"`
				} `json:"cp"`
			}
			if err := json.Unmarshal(l, &r); err != nil {
				t.Fatal(err)
			}
			if r.CP != nil {
				covered = max(covered, r.CP.HeadSeq)
			} else {
				data = append(data, at{filepath.Base(p), i + 1, r.Seq})
			}
		}
	}
	for _, d := range data {
		if d.seq > covered {
			return d.seg, d.line, d.seq, true
		}
	}
	return "", 0, 0, false
}

func at(seg string, line int, seq uint64) string {
	return fmt.Sprintf("%s line %d (seq %d)", seg, line, seq)
}

func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestAuditQueryCommand(t *testing.T) {
	f := newAuditHome(t, 40)
	code, out, errOut := agentctl("--home", f.home, "audit", "query", "--type", "auth.failure", "--actor", "ed25519:peer-b")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 10 {
		t.Fatalf("query: exit %d, %d lines\n%s%s", code, len(lines), out, errOut)
	}
	line := regexp.MustCompile(`^\d{4}-\d\d-\d\dT[0-9:.]+Z #\d+ auth\.failure failure actor=ed25519:peer-b i=\d+ reason=bad_signature$`)
	for _, l := range lines {
		if !line.MatchString(l) {
			t.Fatalf("line %q", l)
		}
	}
	// Families, and --json prints the stored lines.
	code, out, _ = agentctl("--home", f.home, "audit", "query", "--type", "auth.*", "--type", "access.denied", "--json")
	stored := map[string]bool{}
	for _, p := range f.segments(t) {
		for _, l := range readLines(t, p) {
			stored[strings.TrimSuffix(string(l), "\n")] = true
		}
	}
	js := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(js) != 40 {
		t.Fatalf("json query: exit %d, %d lines", code, len(js))
	}
	for _, l := range js {
		if !stored[l] || !json.Valid([]byte(l)) {
			t.Fatalf("--json line is not a stored record: %s", l)
		}
	}
	// Time windows: everything was written in the last minute.
	if code, out, _ := agentctl("--home", f.home, "audit", "query", "--since", "1h", "--type", "auth.failure"); code != 0 || strings.Count(out, "\n") != 10 {
		t.Fatalf("--since 1h: exit %d, %d lines", code, strings.Count(out, "\n"))
	}
	if code, out, _ := agentctl("--home", f.home, "audit", "query", "--until", "1d", "--type", "auth.failure"); code != 0 || out != "" {
		t.Fatalf("--until 1d: exit %d: %q", code, out)
	}
	if code, out, _ := agentctl("--home", f.home, "audit", "query", "--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)); code != 0 || out != "" {
		t.Fatalf("--since the future: exit %d: %q", code, out)
	}
	for _, bad := range [][]string{
		{"--since", "yesterday"}, {"--until", "-5m"}, {"--type", "Auth Failure"}, {"--since", "1h", "--until", "2h"},
	} {
		code, _, errOut := agentctl(append([]string{"--home", f.home, "audit", "query"}, bad...)...)
		if code != 2 || !strings.HasPrefix(errOut, "agentctl: --") {
			t.Fatalf("query %v: exit %d: %s", bad, code, errOut)
		}
	}
}

func TestAuditOutputIsSafe(t *testing.T) {
	// Strings from peers must not reach a terminal raw.
	e := audit.Entry{Record: audit.Record{Seq: 7, Time: time.Unix(0, 0), Type: audit.AuthFailure, Outcome: audit.OutcomeFailure,
		Actor: "evil\x1b[2Jpeer", Details: map[string]any{"reason": "bad signature\n", "n": json.Number("3")}}}
	got := formatEntry(e)
	want := `1970-01-01T00:00:00Z #7 auth.failure failure actor="evil\x1b[2Jpeer" n=3 reason="bad signature\n"`
	if got != want {
		t.Fatalf("formatEntry:\n%s\nwant\n%s", got, want)
	}
}

func TestAuditTailCommand(t *testing.T) {
	f := newAuditHome(t, 12)
	code, out, errOut := agentctl("--home", f.home, "audit", "tail", "-n", "3", "--type", "access.denied")
	ls := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(ls) != 3 || !strings.Contains(ls[0], " i=9 ") || !strings.Contains(ls[2], " i=11 ") {
		t.Fatalf("tail -n 3: exit %d\n%s%s", code, out, errOut)
	}

	// tail -f prints new records as the agent writes them, until interrupted.
	l := f.open(t)
	defer l.Close()
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		var errb bytes.Buffer
		done <- run([]string{"agentctl", "--home", f.home, "audit", "tail", "-f", "-n", "1", "--type", "access.denied"}, strings.NewReader(""), pw, &errb)
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	next := func() string {
		got := make(chan string, 1)
		go func() {
			if sc.Scan() {
				got <- sc.Text()
			} else {
				got <- ""
			}
		}()
		select {
		case s := <-got:
			return s
		case <-time.After(10 * time.Second):
			t.Fatal("tail -f printed nothing for 10s")
			return ""
		}
	}
	if first := next(); !strings.Contains(first, " i=11 ") {
		t.Fatalf("tail -f first line %q", first)
	}
	for i := 100; i < 103; i++ {
		if _, err := l.Append(context.Background(), audit.Record{Type: audit.AccessDenied, Details: map[string]any{"i": i}}); err != nil {
			t.Fatal(err)
		}
		if got := next(); !strings.Contains(got, fmt.Sprintf(" i=%d", i)) {
			t.Fatalf("tail -f: %q, want record i=%d", got, i)
		}
	}
	// The command has its interrupt handler installed (it printed), so SIGINT stops it, not the test.
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, pr)
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("tail -f exit %d after SIGINT", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("tail -f did not stop on SIGINT")
	}
}

// auditWire mirrors the record's JSON form (docs/adr/0004-audit-log.md), field for field, so that
// json.Marshal writes it canonically.
type auditWire struct {
	V       int               `json:"v"`
	Seq     uint64            `json:"seq"`
	Time    string            `json:"time"`
	Type    string            `json:"type"`
	Actor   string            `json:"actor"`
	Subject string            `json:"subject"`
	Outcome string            `json:"outcome"`
	Details json.RawMessage   `json:"details"`
	CP      *audit.Checkpoint `json:"cp,omitempty"`
	Prev    string            `json:"prev"`
	Hash    string            `json:"hash"`
}

// specHash computes a record's hash from the ADR's description, independently of package audit: SHA-256
// over "custos/v1/audit-record\0" and the length-prefixed fields.
func specHash(w *auditWire) string {
	h := sha256.New()
	h.Write([]byte("custos/v1/audit-record\x00"))
	field := func(b []byte) {
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(b)))
		h.Write(l[:])
		h.Write(b)
	}
	u64 := func(v uint64) { field(binary.BigEndian.AppendUint64(nil, v)) }
	u64(uint64(w.V))
	field([]byte(w.Type))
	field([]byte(w.Actor))
	field([]byte(w.Subject))
	field([]byte(w.Outcome))
	field(w.Details)
	if w.CP == nil {
		field(nil)
	} else {
		field([]byte("cp"))
		u64(w.CP.Gen)
		field([]byte(w.CP.Kid))
		u64(w.CP.HeadSeq)
		field([]byte(w.CP.Head))
		field([]byte(w.CP.Sig))
	}
	u64(w.Seq)
	field([]byte(w.Time))
	field([]byte(w.Prev))
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}

// rewriteWithoutKey applies edit to every record and recomputes every hash, prev link and checkpoint
// head, as someone without the agent's key would: only the checkpoint signatures can tell.
func rewriteWithoutKey(t *testing.T, dir string, edit func(*auditWire)) {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	prev := ""
	hashes := map[uint64]string{}
	for _, p := range segs {
		var out [][]byte
		for _, l := range readLines(t, p) {
			var w auditWire
			if err := json.Unmarshal(l, &w); err != nil {
				t.Fatal(err)
			}
			edit(&w)
			if w.CP != nil && hashes[w.CP.HeadSeq] != "" {
				w.CP.Head = hashes[w.CP.HeadSeq]
			}
			w.Prev = prev
			w.Hash = specHash(&w)
			b, err := json.Marshal(&w)
			if err != nil {
				t.Fatal(err)
			}
			prev, hashes[w.Seq] = w.Hash, w.Hash
			out = append(out, append(b, '\n'))
		}
		writeLines(t, p, out)
	}
}

// serveAuditHead serves the daemon's audit.head operation for l on home's control socket.
func serveAuditHead(t *testing.T, home string, l *audit.Log) {
	t.Helper()
	srv, err := control.Listen(control.Config{Path: filepath.Join(home, api.ControlFile), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Ops: map[string]control.Op{api.OpAuditHead: {Permission: rbac.CtlAuditVerify, Fn: func(ctx context.Context, _ rbac.Cred, _ json.RawMessage) (any, error) {
			return l.Head(ctx)
		}}}})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	t.Cleanup(func() { _ = srv.Close() })
}

// holdAuditLock takes audit/LOCK as `flock audit/LOCK sleep 1d` would, until the test ends.
func holdAuditLock(t *testing.T, dir string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
}

// testUnsealedTail: a stopped log whose only fault is its tail (the seal gone and records after the last
// checkpoint: what SIGKILL leaves) verifies with a warning and exit 0, says so in --json, and is an error
// with --strict; the same tail with a record altered before it is an error without --strict.
func testUnsealedTail(t *testing.T, f *auditHomeFixture) {
	home := filepath.Join(t.TempDir(), "home")
	copyTree(t, f.home, home)
	g := &auditHomeFixture{home: home, id: f.id, signer: f.signer}
	l := g.open(t)
	for i := 0; i < 3; i++ {
		if _, err := l.Append(context.Background(), audit.Record{Type: audit.AgentStarted, Details: map[string]any{"i": i}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(home, "audit", "*.jsonl"))
	p := segs[len(segs)-1]
	ls := readLines(t, p)
	writeLines(t, p, ls[:len(ls)-1]) // the seal, as if the agent had been killed before Close
	code, out, errOut := agentctl("--home", home, "audit", "verify")
	if code != 0 || !strings.Contains(out, "audit log verifies up to its unsealed tail") || !strings.Contains(out, "head: seq ") ||
		!strings.Contains(errOut, "warning: the log is not sealed") || !strings.Contains(errOut, "the agent was killed") {
		t.Fatalf("unsealed tail: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = agentctl("--home", home, "audit", "verify", "--json")
	var v struct {
		Verifies, Unsealed bool
		Warnings           []string
	}
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || !v.Verifies || !v.Unsealed || len(v.Warnings) == 0 {
		t.Fatalf("unsealed tail --json: exit %d %v\n%s", code, err, out)
	}
	if code, _, errOut := agentctl("--home", home, "audit", "verify", "--strict"); code != 1 || !strings.Contains(errOut, "not covered by a signed checkpoint") {
		t.Fatalf("unsealed tail --strict: exit %d\n%s", code, errOut)
	}
	// Anything else wrong besides: an error, whatever the tail.
	for i := len(segs) - 1; len(readLines(t, p)) < 2; i-- {
		p = segs[i-1] // the seal may have been alone in a new segment
	}
	ls = readLines(t, p)
	n := len(ls) - 2
	var w auditWire
	if err := json.Unmarshal(ls[n], &w); err != nil {
		t.Fatal(err)
	}
	w.Subject = "nothing-happened"
	w.Hash = specHash(&w)
	b, err := json.Marshal(&w)
	if err != nil {
		t.Fatal(err)
	}
	ls[n] = append(b, '\n')
	writeLines(t, p, ls)
	if code, out, errOut := agentctl("--home", home, "audit", "verify"); code != 1 || !strings.Contains(errOut, "prev does not match") {
		t.Fatalf("unsealed tail and an altered record: exit %d\n%s%s", code, out, errOut)
	}
}
