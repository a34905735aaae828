package audit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// Negative vectors: audit logs as data, each with the refusal verify must give. A vector file is
//
//	# comment
//	expect: <reason>[: <text the error must contain>]   (reason: ok, malformed, torn, broken_chain,
//	                                                      bad_checkpoint, unsigned)
//	lock: held                                          (optional: the test holds audit/LOCK)
//	segment: <file name>                                (then that segment's lines, as stored)
//	partial: <bytes>                                    (a last line written without its newline)
//
// They are checked against testdata/vectors/kel.jsonl. CUSTOS_UPDATE_VECTORS=1 rewrites them (with a
// new key) from the scenarios in writeVectors.

var reasons = map[string]error{
	"malformed": ErrMalformed, "torn": ErrTorn, "broken_chain": ErrBrokenChain,
	"bad_checkpoint": ErrBadCheckpoint, "unsigned": ErrUnsigned,
}

const vectorDir = "testdata/vectors"

func TestNegativeVectors(t *testing.T) {
	if os.Getenv("CUSTOS_UPDATE_VECTORS") == "1" {
		writeVectors(t)
	}
	b, err := os.ReadFile(filepath.Join(vectorDir, "kel.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	kel, err := identity.DecodeLog(b)
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(vectorDir, "*.log"))
	if err != nil || len(files) < 8 {
		t.Fatalf("vectors %v, %v", files, err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".log"), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "audit")
			expect, lock := loadVector(t, f, dir)
			if lock {
				holdLock(t, dir)
			}
			reason, text, _ := strings.Cut(expect, ": ")
			rep, err := Verify(dir, kel)
			if reason == "ok" {
				if err != nil || !rep.Sealed {
					t.Fatalf("Verify: %+v %v; want a sealed log that verifies", rep, err)
				}
				return
			}
			kind, ok := reasons[reason]
			if !ok {
				t.Fatalf("unknown reason %q", reason)
			}
			if !errors.Is(err, kind) || !strings.Contains(fmt.Sprint(err), text) {
				t.Fatalf("Verify: %v; want %s saying %q", err, reason, text)
			}
		})
	}
}

// loadVector writes the segments of vector file f into dir and returns its expectation.
func loadVector(t *testing.T, f, dir string) (expect string, lock bool) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	segs := map[string]*bytes.Buffer{}
	var cur *bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, MaxRecordSize)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "expect: "):
			expect = strings.TrimPrefix(line, "expect: ")
		case line == "lock: held":
			lock = true
		case strings.HasPrefix(line, "segment: "):
			cur = &bytes.Buffer{}
			segs[strings.TrimPrefix(line, "segment: ")] = cur
		case strings.HasPrefix(line, "partial: "):
			cur.WriteString(strings.TrimPrefix(line, "partial: "))
		default:
			cur.WriteString(line + "\n")
		}
	}
	if err := sc.Err(); err != nil || expect == "" || len(segs) == 0 {
		t.Fatalf("vector %s: no expect line or segments (%v)", f, err)
	}
	for name, buf := range segs {
		if err := os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return expect, lock
}

// writeVector stores the log in dir as vector name.
func writeVector(t *testing.T, name, comment, expect string, lock bool, dir string) {
	t.Helper()
	var out bytes.Buffer
	fmt.Fprintf(&out, "# %s\nexpect: %s\n", comment, expect)
	if lock {
		out.WriteString("lock: held\n")
	}
	paths := segPaths(t, dir)
	sort.Strings(paths)
	for _, p := range paths {
		fmt.Fprintf(&out, "segment: %s\n", filepath.Base(p))
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for len(b) > 0 {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				fmt.Fprintf(&out, "partial: %s\n", b)
				break
			}
			out.Write(b[:i+1])
			b = b[i+1:]
		}
	}
	if err := os.WriteFile(filepath.Join(vectorDir, name+".log"), out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeVectors builds a small real log and the attacks on it, and stores them as vectors.
func writeVectors(t *testing.T) {
	t.Helper()
	id := newIdent(t, keystore.Ed25519, 0)
	if err := os.MkdirAll(vectorDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vectorDir, "kel.jsonl"), id.kel.Encode(), 0o644); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(t.TempDir(), "base")
	l := open(t, base, id.opts(0))
	for i := 0; i < 4; i++ {
		appendN(t, l, 3, AccessDenied)
		if err := l.Checkpoint(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	appendN(t, l, 2, AuthSuccess)
	closeLog(t, l)
	mustVerify(t, base, id.kel)
	c := findFirst(t, base, func(w *wire) bool { return string(w.Details) == `{"reason":"manual"}` && w.Seq > 8 })
	cw, _ := wireAt(t, base, c.seq)
	sealPlace := findFirst(t, base, isSeal)
	seal, _ := wireAt(t, base, sealPlace.seq)
	fresh := func() string {
		dir := filepath.Join(t.TempDir(), "audit")
		copyDir(t, base, dir)
		return dir
	}
	dir := fresh()
	writeVector(t, "valid", "the untampered log: verifies and is sealed", "ok", false, dir)

	dir = fresh()
	cutAfterLast(t, dir, func(w *wire) bool { return w.Seq == cw.CP.HeadSeq })
	forgeAppend(t, dir, LogCheckpoint, `{"reason":"close"}`, cw.CP)
	writeVector(t, "forged-seal-after-cut", "issue 20.1a: cut back to a checkpoint's head, a seal forged from that checkpoint's signed block",
		"bad_checkpoint: the signature does not verify", false, dir)

	dir = fresh()
	dropThrough(t, dir, cw.CP.HeadSeq)
	forgeAppend(t, dir, LogPruned, fmt.Sprintf(`{"bytes":1,"first_seq":1,"reason":"size","segments":["x"],"through_seq":%d}`, cw.CP.HeadSeq), cw.CP)
	forgeAppend(t, dir, LogCheckpoint, `{"reason":"close"}`, seal.CP)
	writeVector(t, "forged-pruned-after-delete", "issue 20.1b: the oldest records deleted, an audit.pruned forged from a checkpoint's block, the seal's block reused after it",
		"bad_checkpoint: the signature does not verify", false, dir)

	dir = fresh()
	forgeAppend(t, dir, AccessDenied, `{}`, nil)
	forgeAppend(t, dir, LogCheckpoint, `{"reason":"close"}`, seal.CP)
	writeVector(t, "seal-block-moved", "a record added after the seal, the seal's block copied behind it",
		"bad_checkpoint: a seal must directly follow its head", false, dir)

	dir = fresh()
	rechainHeads(t, dir, func(w *wire) {
		if w.Seq == 3 {
			w.Actor = "ed25519:someone-else"
		}
	})
	writeVector(t, "rewritten-heads-recomputed", "issue 21.1: a record changed, every hash, link and checkpoint head recomputed without the key",
		"bad_checkpoint: the signature does not verify", false, dir)

	dir = fresh()
	cutAfterLast(t, dir, func(w *wire) bool { return w.Seq == cw.Seq })
	writeVector(t, "lock-held-seal-cut", "issue 20.2: the tail cut back to a checkpoint while someone holds audit/LOCK",
		"unsigned: without the closing seal", true, dir)

	dir = fresh()
	cutAfterLast(t, dir, func(w *wire) bool { return EventType(w.Type) == AuthSuccess })
	writeVector(t, "lock-held-uncovered-tail", "issue 20.2: the checkpoints cut off the tail while someone holds audit/LOCK",
		"unsigned: not covered by a signed checkpoint", true, dir)

	dir = fresh()
	p := segPaths(t, dir)[len(segPaths(t, dir))-1]
	b, _ := os.ReadFile(p)
	if err := os.WriteFile(p, b[:len(b)-17], 0o600); err != nil {
		t.Fatal(err)
	}
	writeVector(t, "lock-held-torn-line", "issue 20.2: the last line cut short while someone holds audit/LOCK",
		"torn: the last line is incomplete", true, dir)
}
