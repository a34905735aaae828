// Package custody keeps an agent's identity over time in its home directory: which keystore holds which
// generation's key (identity.json), and the key event log that proves the chain (kel.jsonl, see package
// identity). It makes the identity (Init), opens it and hands out the current signer (Open, Signer),
// rotates to the pre-committed key (Rotate), recovers a lost key with the recovery key (Recover), and
// destroys retired keys after their grace period (DestroyExpired).
//
// Every change is crash-safe: each file is replaced atomically (temporary file, fsync, rename, fsync of
// the directory), and an operation first records its intent in identity.json, then makes its keys, then
// writes its event to the log (the commit point), then records the outcome. Open completes an interrupted
// operation whose event reached the log and undoes one whose event did not, so after a crash at any point
// either the old or the new generation is fully usable, never neither (docs/adr/0001).
package custody

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/atomicfile"
	"github.com/custos-agent/custos/internal/fileperm"
	"github.com/custos-agent/custos/keystore"
)

// Names inside the home directory (DESIGN 8).
const (
	IdentityFile = "identity.json"
	LogFile      = "kel.jsonl"
	KeysDir      = "keys" // software key files
	TPMDir       = "tpm"  // TPM key blobs
)

// Errors of this package; each error returned wraps one of them or a keystore/identity error.
var (
	// ErrNoIdentity: the home directory holds no identity (run agentctl init).
	ErrNoIdentity = errors.New("no identity")
	// ErrIdentityExists: Init found an identity and was not told to replace it.
	ErrIdentityExists = errors.New("an identity already exists")
	// ErrCorrupt: identity.json or kel.jsonl does not parse, does not verify, or they disagree.
	ErrCorrupt = errors.New("identity state corrupt")
	// ErrNoBackend: a URI names a keystore backend this program was built without.
	ErrNoBackend = errors.New("no keystore backend for this URI")
)

// maxLogSize bounds kel.jsonl.
const maxLogSize = identity.MaxLogEvents * (identity.MaxEventSize + 1)

// Options are what every entry point needs besides the home directory.
type Options struct {
	// Openers maps a URI scheme ("file", "pkcs11", "tpm") to its backend's Open.
	Openers map[string]keystore.OpenFunc
	// OpenOptions are passed to every backend (logger, prompt for secrets).
	OpenOptions keystore.OpenOptions
	// Now is the clock (default time.Now).
	Now func() time.Time
	// FailAt, when set, is called at every step of Init, Rotate, Recover and DestroyExpired with the
	// step's name; an error it returns stops the operation at once, without any clean-up, as a crash
	// would. Tests use it to show that every interruption leaves a usable identity.
	FailAt func(step string) error
	// Logger receives diagnostics (never secrets). Nil means OpenOptions.Log().
	Logger *slog.Logger
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func (o Options) log() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return o.OpenOptions.Log()
}

// simulatedCrash marks an error returned by Options.FailAt: the operation returns at once.
type simulatedCrash struct {
	step string
	err  error
}

func (e *simulatedCrash) Error() string { return fmt.Sprintf("stopped at step %s: %v", e.step, e.err) }
func (e *simulatedCrash) Unwrap() error { return e.err }

func (o Options) fail(step string) error {
	if o.FailAt == nil {
		return nil
	}
	if err := o.FailAt(step); err != nil {
		return &simulatedCrash{step: step, err: err}
	}
	return nil
}

func isCrash(err error) bool {
	var c *simulatedCrash
	return errors.As(err, &c)
}

// Custody is an opened identity. Its methods are safe for concurrent use; changes are also serialised
// between processes by a lock file in the home directory.
type Custody struct {
	home string
	opts Options
	// existing: opened (Open), not made (Init): its keystores hold its keys already.
	existing bool

	mu       sync.Mutex
	rec      *record
	log      identity.Log
	st       identity.State
	stores   map[string]keystore.Keystore
	replaced []string
}

// InitRequest describes a new identity.
type InitRequest struct {
	// Keystore is the URI of the keystore that makes and holds the identity's keys.
	Keystore string
	// Algorithm of the identity keys (ed25519 or p256).
	Algorithm keystore.Algorithm
	// Recovery, optional, names the recovery key: an existing key URI, or a keystore URI in which a
	// recovery key is made. Its digest is committed in the inception event. Keep it offline.
	Recovery string
	// Force replaces an existing identity. Its keys are not destroyed (see Custody.ReplacedKeys).
	Force bool
}

// RotateRequest tunes a rotation.
type RotateRequest struct {
	// Grace is how long the old key is kept (retired) before DestroyExpired destroys it.
	Grace time.Duration
	// DestroyOld destroys the old key as soon as the rotation is committed.
	DestroyOld bool
}

// RecoverRequest names the recovery key and, optionally, a new keystore for the identity.
type RecoverRequest struct {
	// Recovery is the recovery key's URI, or the URI of a keystore holding it (it is found by the
	// digest committed in the log). Empty means the key URI recorded in identity.json.
	Recovery string
	// Keystore, when set, is where the new keys are made (for when the old keystore is gone).
	Keystore string
}

func paths(home string) (rec, kel string) {
	return filepath.Join(home, IdentityFile), filepath.Join(home, LogFile)
}

// readableHome returns nil when home does not exist (no identity) or can be listed; else an error that
// says the home cannot be read, never that there is no identity (issue 18, defect 6).
func readableHome(home string) error {
	f, err := os.Open(home)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err == nil {
		_, err = f.Readdirnames(1)
		f.Close()
		if err == nil || errors.Is(err, io.EOF) {
			return nil
		}
	}
	return fmt.Errorf("cannot read %s: %w: check --home / CUSTOS_HOME, and run as the user that owns it (ls -ld %s)", home, err, home)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// Init makes a new identity in home: generation 0 and the pre-committed generation 1 key in
// req.Keystore, the optional recovery key, and the inception event. It refuses to replace an existing
// identity unless req.Force is set.
func Init(ctx context.Context, home string, req InitRequest, opts Options) (*Custody, error) {
	if !req.Algorithm.Valid() {
		return nil, keystore.Errorf(keystore.ErrUnsupportedAlgorithm, "algorithm %q: use ed25519 or p256", req.Algorithm)
	}
	if req.Keystore == "" {
		return nil, errors.New("init: no keystore URI given")
	}
	recPath, kelPath := paths(home)
	if !req.Force {
		if err := refuseExisting(home); err != nil {
			return nil, err
		}
	}
	// Open the keystores first: a missing module or token, or a wrong PIN, is refused before anything
	// is created or changed.
	c := &Custody{home: home, opts: opts, stores: map[string]keystore.Keystore{}}
	ok := false
	defer func() {
		if !ok {
			_ = c.Close()
		}
	}()
	ks, err := c.keystore(ctx, req.Keystore)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(ks.Info().Algorithms, req.Algorithm) {
		return nil, keystore.Errorf(keystore.ErrUnsupportedAlgorithm, "the %s keystore cannot make %s keys (it makes %v)", ks.Info().Backend, req.Algorithm, ks.Info().Algorithms)
	}
	if req.Recovery != "" {
		if _, err := c.keystore(ctx, req.Recovery); err != nil {
			return nil, fmt.Errorf("recovery keystore: %w", err)
		}
	}
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, fmt.Errorf("create home directory %s: %w", home, err)
	}
	fileperm.Warn(opts.log(), home)
	unlock, err := lock(ctx, home)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if exists(recPath) || exists(kelPath) {
		if !req.Force {
			return nil, refuseExisting(home)
		}
		if b, err := readLimited(recPath, maxRecordSize); err == nil {
			if old, err := decodeRecord(b); err == nil {
				for _, g := range old.Generations {
					if g.State != Destroyed {
						c.replaced = append(c.replaced, g.Key)
					}
				}
			}
		}
	}
	var rk *RecoveryKey
	if req.Recovery != "" {
		r, err := c.initRecovery(ctx, req.Recovery, req.Algorithm)
		if err != nil {
			return nil, err
		}
		if r.Keystore == ks.Info().URI {
			opts.log().Warn("the recovery key is in the identity's own keystore: it will not survive the loss of that keystore")
		}
		rk = &r
	}
	if err := opts.fail("init:generate"); err != nil {
		return nil, err
	}
	var made []keystore.Key
	cleanup := func() {
		for _, k := range made {
			if err := ks.Destroy(context.WithoutCancel(ctx), k.URI); err != nil {
				opts.log().Warn("could not destroy a key of the failed init; destroy it by hand", "key", k.URI, "err", err)
			}
		}
	}
	for gen := uint64(0); gen < 2; gen++ {
		k, err := ks.Generate(ctx, keystore.GenerateRequest{Algorithm: req.Algorithm, Label: newLabel(fmt.Sprintf("g%d", gen))})
		if err != nil {
			cleanup()
			return nil, fmt.Errorf("generate the generation %d key: %w", gen, err)
		}
		made = append(made, k)
	}
	s0, err := ks.Signer(ctx, made[0].URI)
	if err == nil && !s0.Public().Equal(made[0].Public) {
		err = keystore.Errorf(keystore.ErrCorrupt, "the keystore's signer for %s is not the generated key", made[0].URI)
	}
	var rp keystore.PublicKey
	if rk != nil {
		rp, _ = rk.Public()
	}
	var ev identity.Event
	if err == nil {
		ev, err = identity.Incept(ctx, s0, made[1].Public, rp, opts.now())
	}
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("sign the inception event: %w", err)
	}
	l := identity.Log{Events: []identity.Event{ev}}
	st, err := l.Verify()
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("the new inception event does not verify: %w", err)
	}
	rec := &record{Version: RecordVersion, ID: st.ID.String(), Algorithm: req.Algorithm, Keystore: ks.Info().URI, Recovery: rk}
	for i, k := range made {
		state := Active
		if i == 1 {
			state = Next
		}
		rec.Generations = append(rec.Generations, Generation{
			Generation: uint64(i), Keystore: ks.Info().URI, Key: k.URI, Algorithm: k.Public.Algorithm,
			PublicKey: identity.EncodeKey(k.Public), State: state,
		})
	}
	// The order makes any interruption visible as "no identity.json": (old, old) → (none, old) →
	// (none, new log) → (new, new).
	if exists(recPath) {
		if err := opts.fail("init:remove-old"); err != nil {
			return nil, err
		}
		if err := os.Remove(recPath); err != nil {
			cleanup()
			return nil, fmt.Errorf("remove the old %s: %w", recPath, err)
		}
	}
	if err := writeFile(kelPath, l.Encode(), "init:log", opts.fail); err != nil {
		if !isCrash(err) {
			cleanup()
		}
		return nil, err
	}
	if err := writeFile(recPath, rec.encode(), "init:commit", opts.fail); err != nil {
		if !isCrash(err) {
			cleanup()
		}
		return nil, err
	}
	c.rec, c.log, c.st = rec, l, st
	ok = true
	opts.log().Info("identity created", "id", rec.ID, "keystore", rec.Keystore)
	return c, nil
}

func refuseExisting(home string) error {
	recPath, kelPath := paths(home)
	switch {
	case exists(recPath):
		id := ""
		if b, err := readLimited(recPath, maxRecordSize); err == nil {
			if r, err := decodeRecord(b); err == nil {
				id = " (" + r.ID + ")"
			}
		}
		return fmt.Errorf("%w in %s%s: use --force to replace it (its keys are not destroyed), or another --home", ErrIdentityExists, home, id)
	case exists(kelPath):
		return fmt.Errorf("%w in %s: %s exists without %s (an interrupted init?): use --force to start over", ErrIdentityExists, home, LogFile, IdentityFile)
	}
	return nil
}

// Open opens the identity in home: it verifies kel.jsonl from inception, checks identity.json against
// it, and completes or undoes an operation a crash interrupted. A corrupt or inconsistent state is
// refused with an error naming the file, and nothing is changed.
func Open(ctx context.Context, home string, opts Options) (*Custody, error) {
	recPath, kelPath := paths(home)
	if err := readableHome(home); err != nil {
		return nil, err
	}
	// At every start: a home or state files other users can reach are named, with the chmod to run
	// (issue 18, defect 9). They hold no secret (keys are in the keystore), but who may change them may
	// change which keys and logs the agent trusts.
	fileperm.Warn(opts.log(), home, recPath, kelPath)
	if !exists(recPath) {
		if exists(kelPath) {
			return nil, fmt.Errorf("%w: %s exists without %s in %s (an interrupted init?): run agentctl init --force", ErrCorrupt, LogFile, IdentityFile, home)
		}
		return nil, fmt.Errorf("%w in %s: run agentctl init first (or set --home / CUSTOS_HOME)", ErrNoIdentity, home)
	}
	c := &Custody{home: home, opts: opts, stores: map[string]keystore.Keystore{}, existing: true}
	unlock, err := lock(ctx, home)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := c.load(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// loadFiles reads and verifies identity.json and kel.jsonl without changing anything.
func loadFiles(home string) (*record, identity.Log, identity.State, error) {
	recPath, kelPath := paths(home)
	b, err := readLimited(recPath, maxRecordSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, identity.Log{}, identity.State{}, fmt.Errorf("%w in %s: run agentctl init first", ErrNoIdentity, home)
	}
	if err != nil {
		return nil, identity.Log{}, identity.State{}, fmt.Errorf("read %s: %w", recPath, err)
	}
	rec, err := decodeRecord(b)
	if err != nil {
		return nil, identity.Log{}, identity.State{}, fmt.Errorf("%w: %s: %v; nothing was changed: restore it from a backup", ErrCorrupt, recPath, err)
	}
	lb, err := readLimited(kelPath, maxLogSize)
	if err != nil {
		return nil, identity.Log{}, identity.State{}, fmt.Errorf("%w: %s: %v; nothing was changed: restore it from a backup", ErrCorrupt, kelPath, err)
	}
	l, err := identity.DecodeLog(lb)
	if err != nil {
		return nil, identity.Log{}, identity.State{}, fmt.Errorf("%w: key event log %s does not parse: %v; nothing was changed: restore it from a backup", ErrCorrupt, kelPath, err)
	}
	st, err := l.Verify()
	if err != nil {
		return nil, identity.Log{}, identity.State{}, fmt.Errorf("%w: key event log %s does not verify: %v; nothing was changed: restore it from a backup", ErrCorrupt, kelPath, err)
	}
	return rec, l, st, nil
}

// VerifyHome verifies kel.jsonl and its agreement with identity.json, reading only (no keystore, no
// lock, no change). An interrupted operation that Open would complete or undo is accepted.
func VerifyHome(home string) (identity.State, error) {
	rec, _, st, err := loadFiles(home)
	if err != nil {
		return identity.State{}, err
	}
	if _, _, err := resolve(rec, st); err != nil {
		return identity.State{}, fmt.Errorf("%w: %s disagrees with %s: %v", ErrCorrupt, IdentityFile, LogFile, err)
	}
	return st, nil
}

// action is what reconciling a pending operation must do besides writing the resolved record.
type action int

const (
	actNone     action = iota
	actRollback        // the event is not in the log: destroy the pending keys
	actForward         // the event is in the log: the operation is complete once the record says so
)

// resolve computes what identity.json must say given the verified log, and what else must happen.
func resolve(rec *record, st identity.State) (*record, action, error) {
	p := rec.Pending
	if p == nil {
		return rec, actNone, rec.check(st)
	}
	active := rec.Generations[rec.find(Active)]
	switch {
	case st.Generation == active.Generation:
		r := rec.clone()
		r.Pending = nil
		return r, actRollback, r.check(st)
	case st.Generation == active.Generation+1 && p.Generation == st.Generation:
		for _, k := range p.Keys {
			if k.Key == "" {
				return nil, 0, fmt.Errorf("the log holds the %s event of generation %d but identity.json never recorded its key %s", p.Op, p.Generation, k.Label)
			}
		}
		r := finalize(rec)
		return r, actForward, r.check(st)
	}
	return nil, 0, fmt.Errorf("identity.json has a pending %s to generation %d but kel.jsonl is at generation %d", p.Op, p.Generation, st.Generation)
}

// finalize returns the record once rec's pending operation is committed.
func finalize(rec *record) *record {
	r := rec.clone()
	p := r.Pending
	r.Pending = nil
	until := p.RetireUntil
	newGen := func(k pendingKey, s KeyState) Generation {
		return Generation{Generation: k.Generation, Keystore: p.Keystore, Key: k.Key, Algorithm: k.Algorithm, PublicKey: k.PublicKey, State: s}
	}
	switch p.Op {
	case opRotate:
		a, n := r.find(Active), r.find(Next)
		r.Generations[a].State, r.Generations[a].RetiredUntil = Retired, &until
		r.Generations[n].State = Active
		r.Generations = append(r.Generations, newGen(p.Keys[0], Next))
	case opRecover:
		for i := range r.Generations {
			g := &r.Generations[i]
			switch {
			case g.State == Active || g.State == Next:
				g.State, g.RetiredUntil = Retired, &until
				g.Note = fmt.Sprintf("replaced by the recovery at generation %d", p.Generation)
			case g.State == Retired && g.RetiredUntil.After(until):
				// A recovery means keys were lost (or taken): no grace for the older ones either.
				g.RetiredUntil = &until
			}
		}
		r.Generations = append(r.Generations, newGen(p.Keys[0], Active), newGen(p.Keys[1], Next))
		r.Keystore = p.Keystore
	}
	sort.SliceStable(r.Generations, func(i, j int) bool { return r.Generations[i].Generation < r.Generations[j].Generation })
	return r
}

// load (re)reads the files under the lock and reconciles an interrupted operation.
func (c *Custody) load(ctx context.Context) error {
	rec, l, st, err := loadFiles(c.home)
	if err != nil {
		return err
	}
	r, act, err := resolve(rec, st)
	if err != nil {
		return fmt.Errorf("%w: %s disagrees with %s in %s: %v; nothing was changed", ErrCorrupt, IdentityFile, LogFile, c.home, err)
	}
	recPath, _ := paths(c.home)
	switch act {
	case actRollback:
		c.opts.log().Warn("undoing an interrupted operation whose event never reached the key event log", "op", rec.Pending.Op, "generation", rec.Pending.Generation)
		for _, k := range rec.Pending.Keys {
			c.destroyPending(ctx, rec.Pending.Keystore, k)
		}
		if err := writeFile(recPath, r.encode(), "reconcile:rollback", func(string) error { return nil }); err != nil {
			return err
		}
	case actForward:
		c.opts.log().Warn("completing an interrupted operation whose event is in the key event log", "op", rec.Pending.Op, "generation", rec.Pending.Generation)
		if err := writeFile(recPath, r.encode(), "reconcile:forward", func(string) error { return nil }); err != nil {
			return err
		}
	}
	atomicfile.RemoveStaleTemps(c.home)
	c.rec, c.log, c.st = r, l, st
	return nil
}

// destroyPending destroys a key an undone operation made (found by label if its URI was never recorded).
func (c *Custody) destroyPending(ctx context.Context, ksURI string, k pendingKey) {
	ks, err := c.keystore(ctx, ksURI)
	if err != nil {
		c.opts.log().Warn("cannot open the keystore to destroy a key of an undone operation; destroy it by hand", "label", k.Label, "err", err)
		return
	}
	uri := k.Key
	if uri == "" {
		keys, err := ks.List(ctx)
		if err != nil {
			c.opts.log().Warn("cannot list the keystore to find a key of an undone operation; destroy it by hand", "label", k.Label, "err", err)
			return
		}
		for _, kk := range keys {
			if kk.Label == k.Label {
				uri = kk.URI
			}
		}
		if uri == "" {
			return // never made
		}
	}
	if err := ks.Destroy(ctx, uri); err != nil && !errors.Is(err, keystore.ErrNotFound) {
		c.opts.log().Warn("could not destroy a key of an undone operation; destroy it by hand", "key", uri, "err", err)
	}
}

// keystore opens (once) the keystore at uri with the backend its scheme names.
func (c *Custody) keystore(ctx context.Context, uri string) (keystore.Keystore, error) {
	if ks, ok := c.stores[uri]; ok {
		return ks, nil
	}
	scheme, _, ok := strings.Cut(uri, ":")
	open := c.opts.Openers[scheme]
	if !ok || open == nil {
		var known []string
		for s := range c.opts.Openers {
			known = append(known, s+":")
		}
		slices.Sort(known)
		return nil, fmt.Errorf("%w: %q (this agentctl has %s)", ErrNoBackend, keystoreRedact(uri), strings.Join(known, ", "))
	}
	oo := c.opts.OpenOptions
	oo.HoldsKeys = c.existing
	ks, err := open(ctx, uri, oo)
	if err != nil {
		return nil, err
	}
	c.stores[uri] = ks
	if canon := ks.Info().URI; canon != "" {
		if _, ok := c.stores[canon]; !ok {
			c.stores[canon] = ks // the same keystore under the URI it calls itself
		}
	}
	return ks, nil
}

func keystoreRedact(uri string) string {
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		return uri[:i]
	}
	return uri
}

// signerFor returns the signer of generation g and checks it is the key identity.json (checked against
// the log) records.
func (c *Custody) signerFor(ctx context.Context, g Generation) (keystore.Signer, error) {
	ks, err := c.keystore(ctx, g.Keystore)
	if err != nil {
		return nil, err
	}
	s, err := ks.Signer(ctx, g.Key)
	if err != nil {
		return nil, fmt.Errorf("the generation %d key (%s): %w", g.Generation, keystoreRedact(g.Key), err)
	}
	want, _ := g.Public()
	if !s.Public().Equal(want) {
		return nil, keystore.Errorf(keystore.ErrCorrupt, "the key at %s is not the generation %d key the key event log names", keystoreRedact(g.Key), g.Generation)
	}
	return s, nil
}

// Signer returns the signer of the current generation.
func (c *Custody) Signer(ctx context.Context) (keystore.Signer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.signerFor(ctx, c.rec.Generations[c.rec.find(Active)])
}

// ID is the agent ID.
func (c *Custody) ID() identity.ID {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.ID
}

// State is what the verified key event log says now (generation, current key, commitments).
func (c *Custody) State() identity.State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

// Log returns a copy of the verified key event log.
func (c *Custody) Log() identity.Log {
	c.mu.Lock()
	defer c.mu.Unlock()
	return identity.Log{Events: slices.Clone(c.log.Events)}
}

// Current is the active generation.
func (c *Custody) Current() Generation {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rec.Generations[c.rec.find(Active)]
}

// Keys returns every generation identity.json records, in order, with its state.
func (c *Custody) Keys() []Generation {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.rec.Generations)
}

// Recovery returns the recorded recovery key, or nil.
func (c *Custody) Recovery() *RecoveryKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rec.Recovery == nil {
		return nil
	}
	r := *c.rec.Recovery
	return &r
}

// KeystoreURI is the URI of the keystore where new keys of the identity are made.
func (c *Custody) KeystoreURI() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rec.Keystore
}

// KeystoreInfo opens the identity's keystore (if not yet open) and describes it.
func (c *Custody) KeystoreInfo(ctx context.Context) (keystore.Info, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ks, err := c.keystore(ctx, c.rec.Keystore)
	if err != nil {
		return keystore.Info{}, err
	}
	return ks.Info(), nil
}

// Home is the home directory.
func (c *Custody) Home() string { return c.home }

// ReplacedKeys lists the key URIs of the identity an Init with Force replaced. They were not destroyed.
func (c *Custody) ReplacedKeys() []string { return slices.Clone(c.replaced) }

// Close closes every keystore the identity opened.
func (c *Custody) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	closed := map[keystore.Keystore]bool{}
	for uri, ks := range c.stores {
		if !closed[ks] {
			closed[ks] = true
			errs = append(errs, ks.Close())
		}
		delete(c.stores, uri)
	}
	return errors.Join(errs...)
}

func newLabel(what string) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("custody: crypto/rand failed: " + err.Error())
	}
	return "custos-" + what + "-" + hex.EncodeToString(b[:])
}

// eventTime is now, but never before the last event (a clock that went back must not break the chain).
func eventTime(now time.Time, st identity.State) time.Time {
	if now.Unix() < st.Time {
		return time.Unix(st.Time, 0)
	}
	return now
}

// DataKeyWrapper returns the identity's keystore (where its keys are made) as a keystore.DataKeyWrapper,
// with its URI, for the data key of encryption at rest (agent/atrest, ADR 0098); nil when its backend
// cannot wrap a data key. Rotation keeps the keystore, so the wrap survives it.
func (c *Custody) DataKeyWrapper(ctx context.Context) (keystore.DataKeyWrapper, string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ks, err := c.keystore(ctx, c.rec.Keystore)
	if err != nil {
		return nil, "", err
	}
	for { // through wrappers that hide the capability (metrics.InstrumentKeystore)
		if w, ok := ks.(keystore.DataKeyWrapper); ok {
			return w, c.rec.Keystore, nil
		}
		u, ok := ks.(interface{ Unwrap() keystore.Keystore })
		if !ok {
			return nil, c.rec.Keystore, nil
		}
		ks = u.Unwrap()
	}
}
