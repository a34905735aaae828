package custody

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/keystore/software"
	"github.com/custos-agent/custos/signature"
)

// env is one agent home with a software keystore (cheap scrypt) and a clock the test moves.
type env struct {
	t        *testing.T
	home     string
	ksURI    string
	recURI   string // a second software keystore for the recovery key
	passFile string
	mu       sync.Mutex
	now      time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	root := t.TempDir()
	pf := filepath.Join(root, "pass")
	if err := os.WriteFile(pf, []byte("test passphrase\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(root, "home")
	q := "?passphrase-source=file:" + pf + "&work-factor=10"
	return &env{
		t: t, home: home, passFile: pf,
		ksURI:  "file:" + filepath.Join(home, KeysDir) + q,
		recURI: "file:" + filepath.Join(root, "offline") + q,
		now:    time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC),
	}
}

func (e *env) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

func (e *env) advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(d)
}

func (e *env) opts(failAt func(string) error) Options {
	return Options{
		Openers: map[string]keystore.OpenFunc{"file": software.Open},
		Now:     e.clock,
		FailAt:  failAt,
		Logger:  slog.New(slog.DiscardHandler),
	}
}

func (e *env) init(recovery bool) *Custody {
	e.t.Helper()
	req := InitRequest{Keystore: e.ksURI, Algorithm: keystore.Ed25519}
	if recovery {
		req.Recovery = e.recURI
	}
	c, err := Init(context.Background(), e.home, req, e.opts(nil))
	if err != nil {
		e.t.Fatalf("Init: %v", err)
	}
	e.t.Cleanup(func() { _ = c.Close() })
	return c
}

func (e *env) open() *Custody {
	e.t.Helper()
	c, err := Open(context.Background(), e.home, e.opts(nil))
	if err != nil {
		e.t.Fatalf("Open: %v", err)
	}
	e.t.Cleanup(func() { _ = c.Close() })
	return c
}

// digestDir hashes every file name, mode and content under dir.
func digestDir(t *testing.T, dirs ...string) string {
	t.Helper()
	h := sha256.New()
	for _, dir := range dirs {
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			fi, _ := d.Info()
			fmt.Fprintf(h, "%s %v\n", p, fi.Mode())
			if d.Type().IsRegular() {
				b, _ := os.ReadFile(p)
				h.Write(b)
			}
			return nil
		})
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// assertUsable checks what must hold after any interruption: the home opens, the log verifies, the
// current signer is the key the verified log names and signs, and the keystore holds no key that
// identity.json does not know. It returns the current generation.
func assertUsable(t *testing.T, e *env) uint64 {
	t.Helper()
	c := e.open()
	entries, _ := os.ReadDir(e.home)
	for _, d := range entries {
		if strings.Contains(d.Name(), ".tmp-") {
			t.Errorf("temporary file %s left in the home directory after Open", d.Name())
		}
	}
	st, err := VerifyHome(e.home)
	if err != nil {
		t.Fatalf("VerifyHome after reopen: %v", err)
	}
	if st.Generation != c.State().Generation {
		t.Fatalf("VerifyHome says generation %d, Open says %d", st.Generation, c.State().Generation)
	}
	s, err := c.Signer(context.Background())
	if err != nil {
		t.Fatalf("Signer after reopen: %v", err)
	}
	if !s.Public().Equal(st.Current) {
		t.Fatal("the signer is not the key the verified log says is current")
	}
	msg := []byte("after the interruption")
	sig, err := signature.Sign(context.Background(), s, signature.UserData, msg)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if err := signature.Verify(st.Current, signature.UserData, msg, sig); err != nil {
		t.Fatalf("signature does not verify under the log's current key: %v", err)
	}
	known := map[string]bool{}
	for _, g := range c.Keys() {
		if g.State != Destroyed {
			known[g.Key] = true
		}
	}
	if r := c.Recovery(); r != nil {
		known[r.Key] = true
	}
	ks, err := software.Open(context.Background(), e.ksURI, keystore.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	keys, err := ks.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !known[k.URI] {
			t.Errorf("orphan key %s left in the keystore", k.Label)
		}
	}
	for _, g := range c.Keys() {
		if g.State == Destroyed && slices.ContainsFunc(keys, func(k keystore.Key) bool { return k.URI == g.Key }) {
			t.Errorf("generation %d is recorded as destroyed but its key still exists", g.Generation)
		}
	}
	return st.Generation
}

func TestInitOpenRotate(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	c := e.init(false)
	id := c.ID()
	if !strings.HasPrefix(id.String(), "ed25519:") || c.State().Generation != 0 {
		t.Fatalf("ID %s generation %d", id, c.State().Generation)
	}
	for name, want := range map[string]os.FileMode{e.home: 0o700, filepath.Join(e.home, IdentityFile): 0o600, filepath.Join(e.home, LogFile): 0o600, filepath.Join(e.home, KeysDir): 0o700} {
		fi, err := os.Stat(name)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v (err %v), want %v", name, fi.Mode().Perm(), err, want)
		}
	}
	keys := c.Keys()
	if len(keys) != 2 || keys[0].State != Active || keys[1].State != Next {
		t.Fatalf("after init: %+v", keys)
	}
	_ = c.Close()

	c = e.open()
	if !c.ID().Equal(id) {
		t.Fatal("the ID changed across Open")
	}
	g, err := c.Rotate(ctx, RotateRequest{Grace: time.Hour})
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if g.Generation != 1 || !c.ID().Equal(id) {
		t.Fatalf("after rotate: generation %d, ID %s", g.Generation, c.ID())
	}
	keys = c.Keys()
	if len(keys) != 3 || keys[0].State != Retired || !keys[0].RetiredUntil.Equal(e.clock().Add(time.Hour)) || keys[1].State != Active || keys[2].State != Next {
		t.Fatalf("after rotate: %+v", keys)
	}
	if gen := assertUsable(t, e); gen != 1 {
		t.Fatalf("generation %d after one rotation", gen)
	}
	// Nothing expires before the grace period ends.
	if done, err := c.DestroyExpired(ctx); err != nil || len(done) != 0 {
		t.Fatalf("DestroyExpired before the grace period: %v %v", done, err)
	}
	e.advance(time.Hour + time.Second)
	done, err := c.DestroyExpired(ctx)
	if err != nil || len(done) != 1 || done[0].Generation != 0 {
		t.Fatalf("DestroyExpired after the grace period: %+v %v", done, err)
	}
	gen0File := strings.TrimPrefix(strings.SplitN(keys[0].Key, "?", 2)[0], "file:")
	if _, err := os.Stat(gen0File); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the generation 0 key file still exists: %v", err)
	}
	// Rotate again destroying the old key at once.
	g, err = c.Rotate(ctx, RotateRequest{Grace: time.Hour, DestroyOld: true})
	if err != nil || g.Generation != 2 {
		t.Fatalf("second Rotate: %v %+v", err, g)
	}
	keys = c.Keys()
	if keys[1].State != Destroyed || keys[1].DestroyedAt == nil {
		t.Fatalf("DestroyOld left generation 1 as %+v", keys[1])
	}
	if gen := assertUsable(t, e); gen != 2 {
		t.Fatalf("generation %d", gen)
	}
	l := c.Log()
	if len(l.Events) != 3 || l.Events[2].Type != identity.Rotation {
		t.Fatalf("log has %d events", len(l.Events))
	}
}

func TestInitRefusesExisting(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	first := e.init(false)
	before := digestDir(t, e.home)
	_, err := Init(ctx, e.home, InitRequest{Keystore: e.ksURI, Algorithm: keystore.P256}, e.opts(nil))
	if !errors.Is(err, ErrIdentityExists) || !strings.Contains(err.Error(), first.ID().String()) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second Init: got %v", err)
	}
	if digestDir(t, e.home) != before {
		t.Fatal("a refused Init changed the home directory")
	}
	c, err := Init(ctx, e.home, InitRequest{Keystore: e.ksURI, Algorithm: keystore.P256, Force: true}, e.opts(nil))
	if err != nil {
		t.Fatalf("Init --force: %v", err)
	}
	defer c.Close()
	if c.ID().Equal(first.ID()) || !strings.HasPrefix(c.ID().String(), "p256:") {
		t.Fatalf("Init --force kept the old ID")
	}
	r := c.ReplacedKeys()
	if len(r) != 2 || r[0] != first.Keys()[0].Key {
		t.Fatalf("ReplacedKeys = %v", r)
	}
	// The replaced keys are left alone (a --force by mistake must not destroy them); removing them by
	// hand leaves exactly the new identity's keys.
	ks, err := software.Open(ctx, e.ksURI, keystore.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	for _, uri := range r {
		if err := ks.Destroy(ctx, uri); err != nil {
			t.Fatalf("replaced key %s: %v", uri, err)
		}
	}
	assertUsable(t, e)
}

func TestNoIdentity(t *testing.T) {
	e := newEnv(t)
	_, err := Open(context.Background(), e.home, e.opts(nil))
	if !errors.Is(err, ErrNoIdentity) || !strings.Contains(err.Error(), "agentctl init") {
		t.Fatalf("Open without an identity: %v", err)
	}
	if _, err := os.Stat(e.home); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("Open created the home directory")
	}
	if _, err := VerifyHome(e.home); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("VerifyHome: %v", err)
	}
	// A log without identity.json (an interrupted init) is named as such.
	if err := os.MkdirAll(e.home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.home, LogFile), []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), e.home, e.opts(nil)); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "interrupted init") {
		t.Fatalf("Open with only kel.jsonl: %v", err)
	}
	if _, err := Init(context.Background(), e.home, InitRequest{Keystore: e.ksURI, Algorithm: keystore.Ed25519}, e.opts(nil)); !errors.Is(err, ErrIdentityExists) {
		t.Fatalf("Init over a lone kel.jsonl: %v", err)
	}
}

func TestCorruptState(t *testing.T) {
	cases := []struct {
		name   string
		file   string
		mutate func(t *testing.T, b []byte) []byte
		reason string
	}{
		{"kel truncated", LogFile, func(_ *testing.T, b []byte) []byte { return b[:len(b)-10] }, "does not parse"},
		{"kel empty", LogFile, func(_ *testing.T, b []byte) []byte { return nil }, "does not verify"},
		{"kel last event dropped", LogFile, func(_ *testing.T, b []byte) []byte {
			lines := strings.SplitAfter(string(b), "\n")
			return []byte(strings.Join(lines[:len(lines)-2], ""))
		}, "disagrees"},
		{"kel signature flipped", LogFile, func(t *testing.T, b []byte) []byte {
			l, err := identity.DecodeLog(b)
			if err != nil {
				t.Fatal(err)
			}
			sig := l.Events[1].Signatures[0].Sig
			l.Events[1].Signatures[0].Sig = "AAAAAAAA" + sig[8:]
			if sig[:8] == "AAAAAAAA" {
				l.Events[1].Signatures[0].Sig = "BBBBBBBB" + sig[8:]
			}
			return l.Encode()
		}, "does not verify"},
		{"identity.json garbage", IdentityFile, func(_ *testing.T, b []byte) []byte { return []byte("{not json") }, "identity.json"},
		{"identity.json unknown field", IdentityFile, func(_ *testing.T, b []byte) []byte {
			return []byte(strings.Replace(string(b), `"version": 1,`, `"version": 1, "extra": true,`, 1))
		}, "unknown field"},
		{"identity.json active key swapped", IdentityFile, func(t *testing.T, b []byte) []byte {
			r, err := decodeRecord(b)
			if err != nil {
				t.Fatal(err)
			}
			a, n := r.find(Active), r.find(Next)
			r.Generations[a].PublicKey, r.Generations[n].PublicKey = r.Generations[n].PublicKey, r.Generations[a].PublicKey
			return r.encode()
		}, "not the key kel.jsonl names"},
		// The next key recorded is not the one the log pre-commits (here: the retired generation 0 key):
		// a later rotation would sign with a key the log's holders never agreed to (issue 21, second angle
		// on the pre-committed next-key digest).
		{"identity.json next key not the pre-committed one", IdentityFile, func(t *testing.T, b []byte) []byte {
			r, err := decodeRecord(b)
			if err != nil {
				t.Fatal(err)
			}
			n := r.find(Next)
			for i, g := range r.Generations {
				if g.Generation == 0 {
					r.Generations[n].PublicKey = r.Generations[i].PublicKey
				}
			}
			return r.encode()
		}, "is not the one kel.jsonl pre-commits"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			c := e.init(false)
			if _, err := c.Rotate(context.Background(), RotateRequest{Grace: time.Hour}); err != nil {
				t.Fatal(err)
			}
			_ = c.Close()
			path := filepath.Join(e.home, tc.file)
			b, _ := os.ReadFile(path)
			if err := os.WriteFile(path, tc.mutate(t, b), 0o600); err != nil {
				t.Fatal(err)
			}
			before := digestDir(t, e.home)
			_, err := Open(context.Background(), e.home, e.opts(nil))
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.reason) || !strings.Contains(err.Error(), "nothing was changed") {
				t.Fatalf("Open: got %v; want ErrCorrupt saying %q", err, tc.reason)
			}
			if !strings.Contains(err.Error(), tc.file) {
				t.Fatalf("the error does not name %s: %v", tc.file, err)
			}
			if _, err := VerifyHome(e.home); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("VerifyHome: %v", err)
			}
			if digestDir(t, e.home) != before {
				t.Fatal("a refused Open changed the home directory")
			}
		})
	}
}

var errCrash = errors.New("simulated crash")

// steps runs op once with a recording hook and returns every step name in order.
func steps(t *testing.T, op func(e *env, failAt func(string) error) error) []string {
	t.Helper()
	e := newEnv(t)
	var got []string
	if err := op(e, func(s string) error { got = append(got, s); return nil }); err != nil {
		t.Fatalf("dry run: %v", err)
	}
	return got
}

func TestRotateCrashAtEveryStep(t *testing.T) {
	for _, destroyOld := range []bool{false, true} {
		rotate := func(e *env, failAt func(string) error) error {
			c := e.init(false)
			_ = c.Close()
			c, err := Open(context.Background(), e.home, e.opts(failAt))
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Rotate(context.Background(), RotateRequest{Grace: time.Hour, DestroyOld: destroyOld})
			return err
		}
		all := steps(t, rotate)
		for _, want := range []string{"rotate:begin", "rotate:intent:rename", "rotate:generate-0", "rotate:record-keys:sync-dir", "rotate:sign", "rotate:log:rename", "rotate:log:sync-dir", "rotate:commit:rename"} {
			if !slices.Contains(all, want) {
				t.Fatalf("step %q missing from %v", want, all)
			}
		}
		if destroyOld && !slices.Contains(all, "destroy:0") {
			t.Fatalf("no destroy step with DestroyOld: %v", all)
		}
		for _, step := range all {
			t.Run(fmt.Sprintf("destroyOld=%v/%s", destroyOld, step), func(t *testing.T) {
				t.Parallel()
				e := newEnv(t)
				err := rotate(e, func(s string) error {
					if s == step {
						return errCrash
					}
					return nil
				})
				if !errors.Is(err, errCrash) {
					t.Fatalf("rotate with a crash at %s: got %v", step, err)
				}
				gen := assertUsable(t, e)
				committed := slices.Index(all, step) > slices.Index(all, "rotate:log:rename")
				if want := map[bool]uint64{false: 0, true: 1}[committed]; gen != want {
					t.Fatalf("after a crash at %s: generation %d, want %d", step, gen, want)
				}
				// A later rotation completes.
				c := e.open()
				if _, err := c.DestroyExpired(context.Background()); err != nil {
					t.Fatalf("DestroyExpired: %v", err)
				}
				g, err := c.Rotate(context.Background(), RotateRequest{Grace: time.Hour})
				if err != nil || g.Generation != gen+1 {
					t.Fatalf("the rotation after the crash: %v (generation %d)", err, g.Generation)
				}
				if got := assertUsable(t, e); got != gen+1 {
					t.Fatalf("generation %d after the second rotation", got)
				}
			})
		}
	}
}

func TestRecover(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	c := e.init(true)
	id := c.ID()
	if c.Recovery() == nil || !strings.Contains(c.Recovery().Key, "/offline/custos-recovery-") {
		t.Fatalf("no recovery key recorded: %+v", c.Recovery())
	}
	if _, err := c.Rotate(ctx, RotateRequest{Grace: time.Hour}); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	// Lose the current key.
	cur := e.open().Current()
	if err := os.Remove(strings.TrimPrefix(strings.SplitN(cur.Key, "?", 2)[0], "file:")); err != nil {
		t.Fatal(err)
	}
	c = e.open()
	if _, err := c.Signer(ctx); !errors.Is(err, keystore.ErrNotFound) {
		t.Fatalf("Signer with the key lost: %v", err)
	}
	// A keystore without the committed recovery key is refused, and nothing changes.
	before := digestDir(t, e.home)
	other := newEnv(t)
	if _, err := c.Recover(ctx, RecoverRequest{Recovery: other.recURI}); err == nil || !strings.Contains(err.Error(), "no key in") {
		t.Fatalf("Recover with the wrong keystore: %v", err)
	}
	if digestDir(t, e.home) != before {
		t.Fatal("a refused Recover changed the home directory")
	}
	// The recovery keystore URI finds the key by its committed digest.
	g, err := c.Recover(ctx, RecoverRequest{Recovery: e.recURI})
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	if g.Generation != 2 || !c.ID().Equal(id) {
		t.Fatalf("after recovery: generation %d, ID %s (was %s)", g.Generation, c.ID(), id)
	}
	l := c.Log()
	if last := l.Events[len(l.Events)-1]; last.Type != identity.Recovery || last.Generation != 2 {
		t.Fatalf("last event %s at %d", last.Type, last.Generation)
	}
	for _, k := range c.Keys() {
		if k.Generation < 2 && k.State != Destroyed && k.State != Retired {
			t.Errorf("generation %d is still %s after the recovery", k.Generation, k.State)
		}
	}
	if gen := assertUsable(t, e); gen != 2 {
		t.Fatalf("generation %d", gen)
	}
	if _, err := c.Rotate(ctx, RotateRequest{}); err != nil {
		t.Fatalf("Rotate after Recover: %v", err)
	}
	if gen := assertUsable(t, e); gen != 3 {
		t.Fatalf("generation %d", gen)
	}
}

func TestRecoverWithoutRecoveryKey(t *testing.T) {
	e := newEnv(t)
	c := e.init(false)
	before := digestDir(t, e.home)
	_, err := c.Recover(context.Background(), RecoverRequest{Recovery: e.recURI})
	if !errors.Is(err, identity.ErrNoRecovery) || !strings.Contains(err.Error(), "init --force") {
		t.Fatalf("got %v", err)
	}
	if digestDir(t, e.home) != before {
		t.Fatal("state changed")
	}
}

func TestRecoverCrashAtEveryStep(t *testing.T) {
	recover := func(e *env, failAt func(string) error) error {
		c := e.init(true)
		_ = c.Close()
		c, err := Open(context.Background(), e.home, e.opts(failAt))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Recover(context.Background(), RecoverRequest{})
		return err
	}
	all := steps(t, recover)
	for _, want := range []string{"recover:intent:rename", "recover:generate-1", "recover:log:rename", "recover:commit:sync-dir", "destroy:0", "destroy:1"} {
		if !slices.Contains(all, want) {
			t.Fatalf("step %q missing from %v", want, all)
		}
	}
	for _, step := range all {
		t.Run(step, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			err := recover(e, func(s string) error {
				if s == step {
					return errCrash
				}
				return nil
			})
			if !errors.Is(err, errCrash) {
				t.Fatalf("got %v", err)
			}
			gen := assertUsable(t, e)
			committed := slices.Index(all, step) > slices.Index(all, "recover:log:rename")
			if want := map[bool]uint64{false: 0, true: 1}[committed]; gen != want {
				t.Fatalf("after a crash at %s: generation %d, want %d", step, gen, want)
			}
			c := e.open()
			if _, err := c.DestroyExpired(context.Background()); err != nil {
				t.Fatalf("DestroyExpired: %v", err)
			}
			if _, err := c.Rotate(context.Background(), RotateRequest{}); err != nil {
				t.Fatalf("rotate after the interrupted recovery: %v", err)
			}
			assertUsable(t, e)
		})
	}
}

// failing wraps a keystore to make Generate or signing fail: a unit test of the clean-up logic around a
// real keystore.
type failing struct {
	keystore.Keystore
	generate, sign bool
}

func (f *failing) Generate(ctx context.Context, req keystore.GenerateRequest) (keystore.Key, error) {
	if f.generate {
		// Make the key, then fail: the worst case (a key exists that nothing committed).
		if _, err := f.Keystore.Generate(ctx, req); err != nil {
			return keystore.Key{}, err
		}
		return keystore.Key{}, keystore.Errorf(keystore.ErrUnavailable, "token removed")
	}
	return f.Keystore.Generate(ctx, req)
}

type failingSigner struct{ keystore.Signer }

func (failingSigner) Sign(context.Context, []byte) ([]byte, error) {
	return nil, keystore.Errorf(keystore.ErrUnavailable, "device error")
}

func (f *failing) Signer(ctx context.Context, uri string) (keystore.Signer, error) {
	s, err := f.Keystore.Signer(ctx, uri)
	if err != nil || !f.sign {
		return s, err
	}
	return failingSigner{s}, nil
}

func TestRotateRealErrorsRestoreState(t *testing.T) {
	for _, tc := range []struct {
		name           string
		generate, sign bool
		reason         string
	}{
		{"generate fails", true, false, "token removed"},
		{"signing fails", false, true, "device error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			_ = e.init(false).Close()
			before := digestDir(t, e.home)
			opts := e.opts(nil)
			opts.Openers = map[string]keystore.OpenFunc{"file": func(ctx context.Context, uri string, o keystore.OpenOptions) (keystore.Keystore, error) {
				ks, err := software.Open(ctx, uri, o)
				if err != nil {
					return nil, err
				}
				return &failing{Keystore: ks, generate: tc.generate, sign: tc.sign}, nil
			}}
			c, err := Open(context.Background(), e.home, opts)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Rotate(context.Background(), RotateRequest{Grace: time.Hour})
			_ = c.Close()
			if !errors.Is(err, keystore.ErrUnavailable) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("Rotate: got %v", err)
			}
			if digestDir(t, e.home) != before {
				t.Fatal("a failed rotation did not restore the home directory exactly")
			}
			if gen := assertUsable(t, e); gen != 0 {
				t.Fatalf("generation %d", gen)
			}
		})
	}
}

func TestRotateWrongPassphraseChangesNothing(t *testing.T) {
	e := newEnv(t)
	_ = e.init(false).Close()
	if err := os.WriteFile(e.passFile, []byte("wrong\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := digestDir(t, e.home)
	c := e.open()
	_, err := c.Rotate(context.Background(), RotateRequest{Grace: time.Hour})
	if !errors.Is(err, keystore.ErrWrongSecret) || !strings.Contains(err.Error(), "generation 0") {
		t.Fatalf("got %v", err)
	}
	if digestDir(t, e.home) != before {
		t.Fatal("state changed")
	}
}

func TestConcurrentRotations(t *testing.T) {
	// Two handles on one home rotate at once: the lock serialises them and both rotations land.
	e := newEnv(t)
	_ = e.init(false).Close()
	a, b := e.open(), e.open()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, c := range []*Custody{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = c.Rotate(context.Background(), RotateRequest{Grace: time.Hour})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if gen := assertUsable(t, e); gen != 2 {
		t.Fatalf("generation %d after two concurrent rotations", gen)
	}
	gens := []uint64{a.State().Generation, b.State().Generation}
	sort.Slice(gens, func(i, j int) bool { return gens[i] < gens[j] })
	if gens[0] != 1 || gens[1] != 2 {
		t.Fatalf("the handles saw generations %v", gens)
	}
}

func TestReloadSeesAnotherProcessRotation(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	_ = e.init(false).Close()
	daemon, cli := e.open(), e.open()
	if _, err := cli.Rotate(ctx, RotateRequest{Grace: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if daemon.State().Generation != 0 {
		t.Fatal("a handle changed without Reload")
	}
	if err := daemon.Reload(ctx); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	s, err := daemon.Signer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if daemon.State().Generation != 1 || !s.Public().Equal(cli.State().Current) {
		t.Fatalf("after Reload: generation %d", daemon.State().Generation)
	}
}

func TestRecoverIntoANewKeystore(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	c := e.init(true)
	id := c.ID()
	// The whole keystore is gone (a dead token): recover into another one.
	if err := os.RemoveAll(filepath.Join(e.home, KeysDir)); err != nil {
		t.Fatal(err)
	}
	newKS := "file:" + filepath.Join(e.home, "keys2") + "?passphrase-source=file:" + e.passFile + "&work-factor=10"
	g, err := c.Recover(ctx, RecoverRequest{Keystore: newKS})
	if err != nil {
		t.Fatalf("Recover into a new keystore: %v", err)
	}
	if !strings.Contains(g.Key, "/keys2/") || !strings.HasPrefix(c.KeystoreURI(), "file:"+filepath.Join(e.home, "keys2")) || !c.ID().Equal(id) {
		t.Fatalf("recovered key %s, keystore %s", g.Key, c.KeystoreURI())
	}
	_ = c.Close()
	c = e.open()
	s, err := c.Signer(ctx)
	if err != nil || !s.Public().Equal(c.State().Current) {
		t.Fatalf("Signer after recovery into a new keystore: %v", err)
	}
	if _, err := c.Rotate(ctx, RotateRequest{}); err != nil {
		t.Fatalf("Rotate in the new keystore: %v", err)
	}
	if !strings.Contains(c.Keys()[len(c.Keys())-1].Key, "/keys2/") {
		t.Fatal("the rotation made its key outside the new keystore")
	}
	if _, err := VerifyHome(e.home); err != nil {
		t.Fatal(err)
	}
}
