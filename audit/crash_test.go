package audit

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

// The crash test re-executes the test binary as a writer process (TestMain sees crashChildEnv), which
// appends from many goroutines and prints "seq worker i" for every acknowledged record until it is
// killed with SIGKILL.
const crashChildEnv = "CUSTOS_AUDIT_CRASH_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
		return
	}
	os.Exit(m.Run())
}

func crashChild(dir string) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		os.Exit(3)
	}
	seed, err := os.ReadFile(os.Getenv(crashChildEnv + "_SEED"))
	if err != nil {
		fail(err)
	}
	signer, err := keystore.NewMemorySigner(ed25519.NewKeyFromSeed(seed))
	if err != nil {
		fail(err)
	}
	l, err := Open(context.Background(), dir, Options{
		Signer: signer, AgentID: os.Getenv(crashChildEnv + "_ID"), CheckpointEvery: 200,
		SegmentMaxBytes: 64 << 10, Logger: quietLogger(),
	})
	if err != nil {
		fail(err)
	}
	var out sync.Mutex
	for w := 0; w < 16; w++ {
		go func() {
			for i := 0; ; i++ {
				seq, err := l.Append(context.Background(), Record{Type: AuthFailure, Actor: "ed25519:w" + strconv.Itoa(w),
					Outcome: OutcomeFailure, Details: map[string]any{"reason": "bad_signature", "w": w, "i": i}})
				if err != nil {
					fail(err)
				}
				out.Lock()
				fmt.Fprintf(os.Stdout, "%d %d %d\n", seq, w, i)
				out.Unlock()
			}
		}()
	}
	select {} // until SIGKILL
}

func TestCrashKeepsAcknowledgedRecords(t *testing.T) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := keystore.NewMemorySigner(priv)
	if err != nil {
		t.Fatal(err)
	}
	next, err := keystore.GenerateMemorySigner(keystore.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := identity.Incept(context.Background(), signer, next.Public(), keystore.PublicKey{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	kel := identity.Log{Events: []identity.Event{ev}}
	home := t.TempDir()
	seedFile := filepath.Join(home, "seed")
	if err := os.WriteFile(seedFile, priv.Seed(), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(home, "audit")

	acked := map[uint64][2]int{}
	for round := 0; round < 2; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, crashChildEnv+"_SEED="+seedFile, crashChildEnv+"_ID="+ev.ID)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Kill the writer in the middle of heavy appends.
		n := 0
		deadline := time.After(20 * time.Second)
	read:
		for n < 3000 {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatalf("the writer exited early: %s", stderr.String())
				}
				record(t, acked, line)
				n++
			case <-deadline:
				break read
			}
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for line := range lines { // what it printed before it died
			record(t, acked, line)
		}
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("writer: %v (%s)", err, stderr.String())
		}
		if n < 500 {
			t.Fatalf("only %d records acknowledged before the kill", n)
		}

		// The unclean end is reported, not accepted.
		_, err = Verify(dir, kel)
		if !errors.Is(err, ErrUnsigned) && !errors.Is(err, ErrTorn) {
			t.Fatalf("Verify after SIGKILL: %v; want ErrUnsigned or ErrTorn", err)
		}
		if round == 1 {
			// A power loss can always leave half a line. (So can a SIGKILL, but only when it lands inside
			// a write of more than a page: Linux stops a regular-file write at a page boundary when a
			// fatal signal is pending. That depends on timing; this line makes it certain.)
			segs := segPaths(t, dir)
			f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString(`{"v":1,"seq":`)
			f.Close()
			verifyFails(t, dir, kel, ErrTorn, filepath.Base(segs[len(segs)-1]), 0, 0, "the last line is incomplete")
		}
		t.Logf("round %d: %d records acknowledged before SIGKILL", round, n)
	}

	// The next open repairs and signs; every acknowledged record is there, as written.
	l, err := Open(context.Background(), dir, Options{Signer: signer, AgentID: ev.ID, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	closeLog(t, l)
	rep := mustVerify(t, dir, kel)
	found := map[uint64]Entry{}
	var recovered, repaired int
	for _, e := range all(t, dir) {
		found[e.Seq] = e
		switch e.Type {
		case LogRecovered:
			recovered++
		case LogRepaired:
			repaired++
		}
	}
	for seq, wi := range acked {
		e, ok := found[seq]
		if !ok {
			t.Fatalf("acknowledged record %d is missing (log has %d records)", seq, rep.Records)
		}
		if e.Type != AuthFailure || num(e.Details["w"]) != int64(wi[0]) || num(e.Details["i"]) != int64(wi[1]) {
			t.Fatalf("record %d is %s %v, acknowledged as worker %d item %d", seq, e.Type, e.Details, wi[0], wi[1])
		}
	}
	// Round 0's kill is noted by round 1's open: recovered, or repaired when the kill cut a batch write
	// at a page boundary. Round 1's torn line is noted by the last open: repaired.
	if recovered+repaired != 2 || repaired < 1 {
		t.Fatalf("%d audit.recovered and %d audit.repaired records, want one of each (or two repaired)", recovered, repaired)
	}
	t.Logf("%d acknowledged records all present in %d records, %d segments", len(acked), rep.Records, rep.Segments)
}

func record(t *testing.T, acked map[uint64][2]int, line string) {
	t.Helper()
	var seq uint64
	var w, i int
	if _, err := fmt.Sscanf(line, "%d %d %d", &seq, &w, &i); err != nil {
		t.Fatalf("child printed %q: %v", line, err)
	}
	if _, dup := acked[seq]; dup {
		t.Fatalf("seq %d acknowledged twice", seq)
	}
	acked[seq] = [2]int{w, i}
}
