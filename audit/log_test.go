package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
)

func TestAppendVerifyQuery(t *testing.T) {
	for _, alg := range []keystore.Algorithm{keystore.Ed25519, keystore.P256} {
		t.Run(string(alg), func(t *testing.T) {
			id := newIdent(t, alg, 0)
			dir := filepath.Join(t.TempDir(), "audit")
			obs := &countingObserver{}
			o := id.opts(0)
			o.CheckpointEvery = 50
			o.Observer = obs
			l := open(t, dir, o)
			const workers, each = 8, 40
			var wg sync.WaitGroup
			seen := make(chan uint64, workers*each)
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < each; i++ {
						seq, err := l.Append(context.Background(), Record{
							Type: AuthFailure, Actor: fmt.Sprintf("ed25519:w%d", w), Outcome: OutcomeFailure,
							Details: map[string]any{"reason": "bad_signature", "i": i, "w": w},
						})
						if err != nil {
							t.Errorf("Append: %v", err)
							return
						}
						seen <- seq
					}
				}()
			}
			wg.Wait()
			close(seen)
			closeLog(t, l)
			uniq := map[uint64]bool{}
			for s := range seen {
				if uniq[s] {
					t.Fatalf("seq %d acknowledged twice", s)
				}
				uniq[s] = true
			}
			if len(uniq) != workers*each {
				t.Fatalf("%d distinct seqs, want %d", len(uniq), workers*each)
			}

			rep := mustVerify(t, dir, id.kel)
			entries := all(t, dir)
			if rep.Records != uint64(len(entries)) || rep.LastSeq != uint64(len(entries)) || rep.FirstSeq != 1 {
				t.Fatalf("report %+v for %d entries", rep, len(entries))
			}
			if !rep.Sealed || rep.CoveredSeq != rep.LastSeq-1 || rep.Checkpoints < 2 || rep.Anchored || rep.WriterActive {
				t.Fatalf("report %+v", rep)
			}
			// How many count checkpoints there are depends on the signer's speed (records that arrive
			// while one is signed wait for the next), so the test asks only that the count rule fired.
			byCount := 0
			for _, e := range entries {
				if e.Type == LogCheckpoint && e.Details["reason"] == "count" {
					byCount++
				}
			}
			if byCount == 0 {
				t.Fatalf("no checkpoint signed because %d records were uncovered (report %+v)", o.CheckpointEvery, rep)
			}
			if entries[0].Type != LogCreated || entries[0].Prev != "" || entries[len(entries)-1].Type != LogCheckpoint {
				t.Fatalf("first %s, last %s", entries[0].Type, entries[len(entries)-1].Type)
			}
			auth := 0
			for i, e := range entries {
				if e.Seq != uint64(i+1) {
					t.Fatalf("entry %d has seq %d", i, e.Seq)
				}
				if e.Type == AuthFailure {
					auth++
					if !uniq[e.Seq] || e.Details["reason"] != "bad_signature" || e.Outcome != OutcomeFailure {
						t.Fatalf("entry %+v", e.Record)
					}
				}
			}
			if auth != workers*each {
				t.Fatalf("%d auth records, want %d", auth, workers*each)
			}
			written, failed, _, acks := obs.snapshot()
			if written != len(entries) || failed != 0 || acks != workers*each {
				t.Fatalf("observer: written %d (want %d), failed %d, acks %d", written, len(entries), failed, acks)
			}
			// Files are 0600 in a 0700 directory.
			if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
				t.Fatalf("dir mode %v", fi.Mode().Perm())
			}
			for _, p := range segPaths(t, dir) {
				if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
					t.Fatalf("%s mode %v", p, fi.Mode().Perm())
				}
			}
			// Reopening a sealed log writes nothing new until asked.
			l = open(t, dir, o)
			appendN(t, l, 1, AccessDenied)
			closeLog(t, l)
			after := all(t, dir)
			if after[len(entries)].Type != AccessDenied {
				t.Fatalf("after reopening a sealed log, the next record is %s", after[len(entries)].Type)
			}
			mustVerify(t, dir, id.kel)
		})
	}
}

func TestAppendValidation(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	dir := t.TempDir()
	l := open(t, dir, id.opts(0))
	defer closeLog(t, l)
	if err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := len(all(t, dir))
	big := strings.Repeat("x", MaxRecordSize)
	tests := []struct {
		name string
		r    Record
		want string
	}{
		{"empty type", Record{}, "must be 1 to 64 characters"},
		{"upper case", Record{Type: "Auth.Failure"}, "lowercase dot-separated"},
		{"bad char", Record{Type: "auth failure"}, "not allowed"},
		{"reserved", Record{Type: LogCheckpoint}, "reserved for the log itself"},
		{"outcome", Record{Type: AccessDenied, Outcome: "maybe"}, `outcome "maybe"`},
		{"missing reason", Record{Type: AuthFailure}, `must carry the detail "reason"`},
		{"missing digest", Record{Type: ConfigChanged, Details: map[string]any{"path": "x"}}, `must carry the detail "digest"`},
		{"trust", Record{Type: TrustChanged, Details: map[string]any{"from": "new"}}, `detail "to"`},
		{"too large", Record{Type: AccessDenied, Details: map[string]any{"blob": big}}, "too large"},
		{"long actor", Record{Type: AccessDenied, Actor: big}, "limited to 1024 bytes"},
		{"not json", Record{Type: AccessDenied, Details: map[string]any{"f": func() {}}}, "not JSON-encodable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := l.Append(context.Background(), tc.r)
			if !errors.Is(err, ErrInvalidRecord) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Append: %v; want ErrInvalidRecord saying %q", err, tc.want)
			}
		})
	}
	if n := len(all(t, dir)); n != before {
		t.Fatalf("refused records changed the log: %d records, had %d", n, before)
	}
}

func TestSecretKeys(t *testing.T) {
	secret := []string{"pin", "PIN", "user_pin", "soPIN", "so-pin", "userPin", "passphrase", "Password", "db_password",
		"userpassword", "secret", "client_secret", "clientSecret", "private", "privateKey", "private_key", "token",
		"access_token", "refreshToken", "api_key", "apiKey", "APIKey", "session_key", "credentials", "seed", "otp",
		"Authorization", "cookie"}
	clean := []string{"shipping", "mapping", "spinner", "opinion", "token_label", "key_uri", "reason", "peer",
		"generation", "public_key", "keystore", "digest", "passed", "pinned_cert"}
	for _, k := range secret {
		if !secretKey(k) {
			t.Errorf("%q is not treated as a secret key (words %q)", k, keyWords(k))
		}
	}
	for _, k := range clean {
		if secretKey(k) {
			t.Errorf("%q is treated as a secret key (words %q)", k, keyWords(k))
		}
	}
}

func TestSecretsNeverWritten(t *testing.T) {
	const pin = "4711-very-secret"
	pem := "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI" + pin + "\n-----END PRIVATE KEY-----\n"
	details := map[string]any{
		"generation": 1,
		"key_uri":    "pkcs11:token=custos;object=id?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:PIN",
		"user_pin":   pin,
		"keystore":   map[string]any{"backend": "pkcs11", "soPIN": pin, "uris": []any{"pkcs11:token=a?pin-value=" + pin}},
		"pem":        pem,
		"note":       "Bearer " + pin,
	}
	wantPaths := []string{"keystore.soPIN", "keystore.uris[0]", "note", "pem", "user_pin"}

	paths, err := CheckDetails(details)
	if err != nil {
		t.Fatal(err)
	}
	if got := sortedCopy(paths); strings.Join(got, ",") != strings.Join(wantPaths, ",") {
		t.Fatalf("CheckDetails: %q, want %q", got, wantPaths)
	}
	if p, err := CheckDetails(map[string]any{"reason": "bad_signature", "token_label": "custos"}); err != nil || p != nil {
		t.Fatalf("clean details: %q, %v", p, err)
	}

	id := newIdent(t, keystore.Ed25519, 0)

	t.Run("redact", func(t *testing.T) {
		dir := t.TempDir()
		l := open(t, dir, id.opts(0))
		seq, err := l.Append(context.Background(), Record{Type: KeyRotate, Subject: id.id, Outcome: OutcomeSuccess, Details: details})
		if err != nil {
			t.Fatal(err)
		}
		closeLog(t, l)
		assertNoSecretOnDisk(t, dir, pin)
		var got Entry
		for _, e := range all(t, dir) {
			if e.Seq == seq {
				got = e
			}
		}
		if got.Details["user_pin"] != Redacted || got.Details["pem"] != Redacted || got.Details["note"] != Redacted {
			t.Fatalf("details not redacted: %v", got.Details)
		}
		ks := got.Details["keystore"].(map[string]any)
		if ks["soPIN"] != Redacted || ks["uris"].([]any)[0] != Redacted || ks["backend"] != "pkcs11" {
			t.Fatalf("nested details not redacted: %v", ks)
		}
		if !strings.Contains(got.Details["key_uri"].(string), "pin-source=env:PIN") {
			t.Fatalf("a pin-source (where the PIN is, not the PIN) was redacted: %v", got.Details["key_uri"])
		}
		var listed []string
		for _, p := range got.Details["audit_redacted"].([]any) {
			listed = append(listed, p.(string))
		}
		if strings.Join(sortedCopy(listed), ",") != strings.Join(wantPaths, ",") {
			t.Fatalf("audit_redacted %q, want %q", listed, wantPaths)
		}
		// The caller's map is not changed.
		if details["user_pin"] != pin {
			t.Fatal("Append changed the caller's details")
		}
		mustVerify(t, dir, id.kel)
	})

	t.Run("refuse", func(t *testing.T) {
		dir := t.TempDir()
		o := id.opts(0)
		o.Secrets = RefuseSecrets
		l := open(t, dir, o)
		if err := l.Checkpoint(context.Background()); err != nil {
			t.Fatal(err)
		}
		before := len(all(t, dir))
		_, err := l.Append(context.Background(), Record{Type: KeyRotate, Subject: id.id, Details: details})
		if !errors.Is(err, ErrSecret) || !strings.Contains(err.Error(), "user_pin") || !strings.Contains(err.Error(), "keystore.soPIN") {
			t.Fatalf("Append: %v; want ErrSecret naming the keys", err)
		}
		if strings.Contains(err.Error(), pin) {
			t.Fatalf("the error shows the secret: %v", err)
		}
		if n := len(all(t, dir)); n != before {
			t.Fatalf("a refused record was written (%d records, had %d)", n, before)
		}
		closeLog(t, l)
		assertNoSecretOnDisk(t, dir, pin)
	})
}

func assertNoSecretOnDisk(t *testing.T, dir, secret string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), secret) || strings.Contains(string(b), "MC4CAQAwBQYDK2VwBCIEI") {
			t.Fatalf("%s contains the secret", e.Name())
		}
	}
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	for i := range c {
		for j := i + 1; j < len(c); j++ {
			if c[j] < c[i] {
				c[i], c[j] = c[j], c[i]
			}
		}
	}
	return c
}

func TestCheckpointTriggers(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	reasons := func(dir string) map[string]int {
		out := map[string]int{}
		for _, e := range all(t, dir) {
			if e.Type == LogCheckpoint {
				out[e.Details["reason"].(string)]++
			}
		}
		return out
	}
	t.Run("every", func(t *testing.T) {
		dir := t.TempDir()
		o := id.opts(0)
		o.CheckpointEvery = 10
		o.CheckpointInterval = time.Hour
		l := open(t, dir, o)
		// Checkpoints are signed in the background: after every 10 records, wait for the next one.
		for i := 1; i <= 3; i++ {
			appendN(t, l, 10, AccessDenied)
			waitFor(t, func() bool { return reasons(dir)["count"] >= i })
		}
		closeLog(t, l)
		r := reasons(dir)
		if r["open"] != 1 || r["count"] < 3 || r["count"] > 4 || r["close"] != 1 || r["interval"] != 0 {
			t.Fatalf("checkpoint reasons %v", r)
		}
		mustVerify(t, dir, id.kel)
	})
	t.Run("interval", func(t *testing.T) {
		dir := t.TempDir()
		o := id.opts(0)
		o.CheckpointEvery = 1000
		o.CheckpointInterval = 40 * time.Millisecond
		l := open(t, dir, o)
		seqs := appendN(t, l, 3, AccessDenied)
		// Only an interval checkpoint can cover these (CheckpointEvery is 1000).
		var rep Report
		waitFor(t, func() bool {
			var err error
			rep, err = verifyLive(t, l, dir, id.kel)
			return err == nil && rep.Pending == 0 && rep.CoveredSeq >= seqs[2]
		})
		if !rep.Live || reasons(dir)["interval"] < 1 {
			t.Fatalf("while open after an interval checkpoint: %+v, reasons %v", rep, reasons(dir))
		}
		closeLog(t, l)
	})
	t.Run("manual", func(t *testing.T) {
		dir := t.TempDir()
		l := open(t, dir, id.opts(0))
		seqs := appendN(t, l, 2, AccessDenied)
		if err := l.Checkpoint(context.Background()); err != nil {
			t.Fatal(err)
		}
		rep, err := verifyLive(t, l, dir, id.kel)
		if err != nil || rep.CoveredSeq < seqs[1] || rep.CoveredSeq != rep.LastSeq-1 || rep.Pending != 0 {
			t.Fatalf("after Checkpoint: %+v, %v", rep, err)
		}
		closeLog(t, l)
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWriterActive(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	dir := t.TempDir()
	o := id.opts(0)
	o.CheckpointInterval = time.Hour
	l := open(t, dir, o)
	if _, err := Open(context.Background(), dir, o); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "is the agent running?") {
		t.Fatalf("second Open: %v; want ErrLocked", err)
	}
	if err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 5, AccessDenied)
	rep, err := verifyLive(t, l, dir, id.kel)
	if err != nil {
		t.Fatalf("Verify while a writer runs: %v", err)
	}
	if !rep.WriterActive || !rep.Live || rep.Pending != 5 || rep.Sealed {
		t.Fatalf("report while open: %+v", rep)
	}
	closeLog(t, l)
	if err := l.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := l.Append(context.Background(), Record{Type: AccessDenied}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	rep = mustVerify(t, dir, id.kel)
	if rep.WriterActive || rep.Pending != 0 || !rep.Sealed {
		t.Fatalf("report after close: %+v", rep)
	}
}

func TestKeyRotation(t *testing.T) {
	id := newIdent(t, keystore.P256, 2)
	dir := t.TempDir()
	l := open(t, dir, id.opts(0))
	appendN(t, l, 3, AccessDenied)
	if err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := l.SetSigner(id.keys[1], 1); err != nil {
		t.Fatal(err)
	}
	if err := l.SetSigner(id.keys[0], 0); err == nil || !strings.Contains(err.Error(), "older than the current 1") {
		t.Fatalf("SetSigner back to generation 0: %v", err)
	}
	appendN(t, l, 3, AccessDenied)
	if err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := l.SetSigner(id.keys[2], 2); err != nil {
		t.Fatal(err)
	}
	closeLog(t, l)
	rep := mustVerify(t, dir, id.kel)
	if fmt.Sprint(rep.Generations) != "[0 1 2]" {
		t.Fatalf("generations %v", rep.Generations)
	}
	// A KEL that ends before generation 2 cannot verify the seal.
	short := id.kel
	short.Events = short.Events[:2]
	last := all(t, dir)
	verifyFails(t, dir, short, ErrBadCheckpoint, "", 0, last[len(last)-1].Seq, "names key generation 2 but kel.jsonl has generations 0-1")

	// A checkpoint that claims generation 3 but is made with the key of generation 2.
	l = open(t, dir, id.opts(2))
	if err := l.SetSigner(id.keys[2], 3); err != nil {
		t.Fatal(err)
	}
	closeLog(t, l)
	longer := newIdentFrom(t, id, 1) // the same identity with one more rotation
	after := all(t, dir)
	verifyFails(t, dir, longer.kel, ErrBadCheckpoint, "", 0, after[len(after)-1].Seq,
		"names generation 3 but was made with the key of generation 2")
}

// newIdentFrom extends id's key event log by more rotations.
func newIdentFrom(t *testing.T, id *ident, more int) *ident {
	t.Helper()
	out := &ident{keys: append([]keystore.Signer(nil), id.keys...), kel: id.kel, id: id.id}
	out.kel.Events = append(out.kel.Events[:0:0], id.kel.Events...)
	for i := 0; i < more; i++ {
		st, err := out.kel.Verify()
		if err != nil {
			t.Fatal(err)
		}
		next, err := keystore.GenerateMemorySigner(st.Current.Algorithm)
		if err != nil {
			t.Fatal(err)
		}
		g := int(st.Generation)
		e, err := identityRotate(t, st, out.keys[g], out.keys[g+1], next)
		if err != nil {
			t.Fatal(err)
		}
		out.kel.Events = append(out.kel.Events, e)
		out.keys = append(out.keys, next)
	}
	return out
}

// failingSigner fails while broken is set: a stand-in for a keystore that is unavailable, to test the
// writer's logic around a failed signature.
type failingSigner struct {
	keystore.Signer
	mu     sync.Mutex
	broken bool
}

func (f *failingSigner) Sign(ctx context.Context, msg []byte) ([]byte, error) {
	f.mu.Lock()
	broken := f.broken
	f.mu.Unlock()
	if broken {
		return nil, keystore.Errorf(keystore.ErrUnavailable, "token removed")
	}
	return f.Signer.Sign(ctx, msg)
}

func (f *failingSigner) set(b bool) { f.mu.Lock(); f.broken = b; f.mu.Unlock() }

func TestCheckpointSigningFails(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	dir := t.TempDir()
	fs := &failingSigner{Signer: id.keys[0]}
	obs := &countingObserver{}
	o := id.opts(0)
	o.Signer = fs
	o.Observer = obs
	o.CheckpointEvery = 5
	o.CheckpointInterval = time.Hour
	l := open(t, dir, o)
	if err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	fs.set(true)
	appendN(t, l, 6, AccessDenied) // appends go on while the keystore is away
	err := l.Checkpoint(context.Background())
	if !errors.Is(err, keystore.ErrUnavailable) || !strings.Contains(err.Error(), "token removed") {
		t.Fatalf("Checkpoint with a broken signer: %v", err)
	}
	_, _, cpFailed, _ := obs.snapshot()
	if cpFailed < 1 {
		t.Fatalf("observer saw %d checkpoint failures", cpFailed)
	}
	var failed []Entry
	for _, e := range all(t, dir) {
		if e.Type == LogCheckpointFailed {
			failed = append(failed, e)
		}
	}
	if len(failed) == 0 || !strings.Contains(failed[0].Details["error"].(string), "token removed") {
		t.Fatalf("no audit.checkpoint_failed record: %+v", failed)
	}
	rep, err := verifyLive(t, l, dir, id.kel)
	if err != nil || rep.Pending == 0 {
		t.Fatalf("while signing fails: %+v, %v", rep, err)
	}
	fs.set(false)
	if err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	closeLog(t, l)
	mustVerify(t, dir, id.kel)
}

// TestWriteFailureRefusesWhileTheDiskFails: while writes keep failing (EIO on every write and fsync,
// also those of the writer's attempts to recover), Append and Checkpoint are refused, the observer hears
// of the failure once, and Close cannot seal; opening the log later notes the unclean end.
func TestWriteFailureRefusesWhileTheDiskFails(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	dir := t.TempDir()
	obs := &countingObserver{}
	disk := &faultDisk{}
	o := disk.opts(id.opts(0))
	o.Observer = obs
	l := open(t, dir, o)
	appendN(t, l, 2, AccessDenied)
	disk.set(syscall.EIO, syscall.EIO)
	_, err := l.Append(context.Background(), Record{Type: AccessDenied})
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), CauseIOError) || !strings.Contains(err.Error(), "input/output error") {
		t.Fatalf("Append after a write failure: %v", err)
	}
	if _, err := l.Append(context.Background(), Record{Type: AccessDenied}); !errors.Is(err, ErrFailed) {
		t.Fatalf("second Append: %v", err)
	}
	waitAttempts(t, l, 3) // the writer has tried to recover, and failed, several times
	if _, failed, _, _ := obs.snapshot(); failed != 1 {
		t.Fatalf("observer saw %d write failures, want 1", failed)
	}
	if failing, lost := obs.state(); !failing || lost != 2 {
		t.Fatalf("observer: failing %v, lost %d; want true, 2", failing, lost)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Checkpoint(ctx); !errors.Is(err, ErrFailed) {
		t.Fatalf("Checkpoint of a failed log: %v", err)
	}
	if err := l.ApplyRetention(ctx); err != nil {
		t.Fatalf("ApplyRetention with nothing to remove: %v", err)
	}
	if err := l.Close(); !errors.Is(err, ErrFailed) {
		t.Fatalf("Close: %v", err)
	}
	// Not sealed; reopening notes the unclean end and signs.
	verifyFails(t, dir, id.kel, ErrUnsigned, "", 0, 0, "not covered by a signed checkpoint")
	l = open(t, dir, id.opts(0))
	closeLog(t, l)
	mustVerify(t, dir, id.kel)
	es := all(t, dir)
	if es[len(es)-3].Type != LogRecovered || es[len(es)-3].Details["cause"] != CauseCrash {
		t.Fatalf("no audit.recovered record with cause crash: %s %v", es[len(es)-3].Type, es[len(es)-3].Details)
	}
}

func TestQueryAndTail(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	dir := t.TempDir()
	o := id.opts(0)
	o.SegmentMaxBytes = 2048
	l := open(t, dir, o)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 30; i++ {
		typ, actor := AccessDenied, "ed25519:a"
		if i%3 == 0 {
			typ, actor = AuthSuccess, "ed25519:b"
		}
		if _, err := l.Append(context.Background(), Record{Type: typ, Actor: actor, Time: t0.Add(time.Duration(i) * time.Minute),
			Details: map[string]any{"i": i}}); err != nil {
			t.Fatal(err)
		}
	}
	if len(segPaths(t, dir)) < 3 {
		t.Fatalf("expected several segments, have %d", len(segPaths(t, dir)))
	}
	count := func(f Filter) (n int, first, last int64) {
		first = -1
		err := Query(context.Background(), dir, f, func(e Entry) error {
			i, _ := e.Details["i"].(json.Number).Int64()
			if first < 0 {
				first = i
			}
			last = i
			n++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	tests := []struct {
		name          string
		f             Filter
		n             int
		firstI, lastI int64
	}{
		{"type", Filter{Types: []string{string(AuthSuccess)}}, 10, 0, 27},
		{"prefix", Filter{Types: []string{"auth.*"}}, 10, 0, 27},
		{"two types", Filter{Types: []string{"auth.", "access.denied"}}, 30, 0, 29},
		{"actor", Filter{Actor: "ed25519:a"}, 20, 1, 29},
		{"since until", Filter{Since: t0.Add(10 * time.Minute), Until: t0.Add(20 * time.Minute), Types: []string{"access.*", "auth.*"}}, 10, 10, 19},
	}
	for _, tc := range tests {
		n, first, last := count(tc.f)
		if n != tc.n || first != tc.firstI || last != tc.lastI {
			t.Errorf("%s: %d records %d..%d, want %d records %d..%d", tc.name, n, first, last, tc.n, tc.firstI, tc.lastI)
		}
	}

	// Tail: the last 4 access.denied records, then follow new ones across a new segment.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan Entry, 100)
	done := make(chan error, 1)
	go func() {
		done <- Tail(ctx, dir, TailOptions{N: 4, Follow: true, Poll: 10 * time.Millisecond,
			Filter: Filter{Types: []string{string(AccessDenied)}}}, func(e Entry) error {
			got <- e
			return nil
		})
	}()
	want := []int64{25, 26, 28, 29}
	for _, w := range want {
		e := <-got
		if i, _ := e.Details["i"].(json.Number).Int64(); i != w {
			t.Fatalf("tail: i=%d, want %d", i, w)
		}
	}
	segsBefore := len(segPaths(t, dir))
	for i := 100; i < 120; i++ {
		if _, err := l.Append(context.Background(), Record{Type: AccessDenied, Details: map[string]any{"i": i, "pad": strings.Repeat("p", 100)}}); err != nil {
			t.Fatal(err)
		}
	}
	if len(segPaths(t, dir)) == segsBefore {
		t.Fatal("no new segment while following")
	}
	for i := int64(100); i < 120; i++ {
		select {
		case e := <-got:
			if n, _ := e.Details["i"].(json.Number).Int64(); n != i {
				t.Fatalf("follow: i=%d, want %d", n, i)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("follow: record %d did not arrive", i)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Tail: %v", err)
	}
	closeLog(t, l)
	mustVerify(t, dir, id.kel)
}
