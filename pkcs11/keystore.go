package pkcs11

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	p11 "github.com/miekg/pkcs11"

	"github.com/custos-agent/custos/keystore"
)

// Open opens the keystore on the token named by uri, which is either a keystore URI
//
//	pkcs11:token=<label>[;serial=<s>]?module-path=/abs/lib.so&pin-source=file:/path|env:NAME
//
// or a key URI (the same with ;object=<key label>;id=%xx.. added). It loads and initialises the module
// once per process, finds the token by label (and serial, if given) and logs in with the PIN from
// pin-source, or from opts.Prompt when the URI has no pin-source. The PIN is zeroed after login.
//
// Errors: ErrBadURI for a malformed URI or a pin-value in it; ErrUnavailable for a missing module or
// token; ErrWrongSecret when the token refuses the PIN.
func Open(ctx context.Context, uri string, opts keystore.OpenOptions) (keystore.Keystore, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r, err := parseRef(uri)
	if err != nil {
		return nil, err
	}
	if r.pinSource == "" && opts.Prompt == nil {
		return nil, keystore.Errorf(keystore.ErrBadURI,
			"pkcs11 URI for token %q has no pin-source and there is no terminal to ask for the PIN: add ?pin-source=file:/path/to/pin-file (0600) or &pin-source=env:VARIABLE", r.label)
	}
	mod, shared, err := acquireModule(r.modulePath)
	if err != nil {
		return nil, err
	}
	ks := &tokenKeystore{
		mod:    mod,
		ref:    ref{label: r.label, serial: r.serial, modulePath: r.modulePath, pinSource: r.pinSource},
		prompt: opts.Prompt,
		holds:  opts.HoldsKeys,
		log:    opts.Log().With("backend", "pkcs11", "token", r.label),
		keys:   map[string]*keyRef{},
	}
	if err := ks.open(ctx, shared); err != nil {
		mod.release()
		return nil, err
	}
	return ks, nil
}

// tokenKeystore is a keystore on one token. It keeps one login session open for its lifetime (so the
// token stays logged in and object handles stay valid) and a pool of sessions for operations.
type tokenKeystore struct {
	mod    *module
	ref    ref // token selector and query attributes, as given (no key part)
	prompt func(string) ([]byte, error)
	holds  bool // keystore.OpenOptions.HoldsKeys: the token holds an existing identity's keys
	log    *slog.Logger

	// Set by open, read-only afterwards.
	serial string // the token's serial number, found by label at open
	algs   []keystore.Algorithm
	hw     bool

	closed atomic.Bool
	// mu serialises recovery and Close.
	mu    sync.Mutex
	state atomic.Pointer[tokState]

	// The session pool: sem bounds the sessions in use, idle holds sessions ready for reuse.
	sem  chan struct{}
	idle chan session

	keysMu sync.Mutex
	keys   map[string]*keyRef // by string(CKA_ID): shared by signers, so Destroy can retire them

	recoveries atomic.Uint64
}

// tokState is the login of a keystore: it is replaced as a whole by every recovery.
type tokState struct {
	slot  uint
	login p11.SessionHandle // the login session; never used for operations
	gen   uint64            // module generation the login session belongs to
	// epoch counts logins. Sessions and cached object handles from an earlier epoch are not reused.
	epoch uint64
}

// session is a pooled session handle with the module generation and login epoch it was opened under.
type session struct {
	h     p11.SessionHandle
	gen   uint64
	epoch uint64
}

func (ks *tokenKeystore) open(ctx context.Context, shared bool) error {
	// Find the token. SoftHSM (and other modules) enumerate tokens only at C_Initialize, so a token
	// created after this process initialised the module is invisible until the module is re-initialised:
	// when the module was already running, look once more after a re-initialisation. Other keystores of
	// the process notice the new generation and log in again on their next operation.
	var match tokenMatch
	for attempt := 0; ; attempt++ {
		var matches, all []tokenMatch
		var gen uint64
		err := ks.mod.call(func(c *p11.Ctx, g uint64) error {
			gen = g
			var err error
			matches, all, err = findTokens(c, ks.ref.label, ks.ref.serial)
			return err
		})
		if err != nil {
			return keystore.Errorf(keystore.ErrUnavailable, "list the tokens of PKCS#11 module %s: %v", ks.ref.modulePath, err)
		}
		if len(matches) == 1 {
			match = matches[0]
			break
		}
		if len(matches) > 1 {
			var serials []string
			for _, m := range matches {
				serials = append(serials, m.info.SerialNumber)
			}
			return keystore.Errorf(keystore.ErrBadURI, "%d tokens are labelled %q (serials %s): add ;serial=<serial> to the URI",
				len(matches), ks.ref.label, strings.Join(serials, ", "))
		}
		if shared && attempt == 0 {
			if err := ks.mod.reinit(gen); err != nil {
				return err
			}
			continue
		}
		return ks.tokenMissing(all)
	}
	ks.serial = match.info.SerialNumber
	maxSess := defaultMaxSessions
	if n := match.info.MaxRwSessionCount; n != ckEffectivelyInfinite && n != ckUnavailableInfo && int(n)-1 < maxSess {
		maxSess = int(n) - 1
	}
	if maxSess < 1 {
		return keystore.Errorf(keystore.ErrUnavailable, "token %q allows only %d read-write session(s); this keystore needs at least 2",
			ks.ref.label, match.info.MaxRwSessionCount)
	}
	ks.sem = make(chan struct{}, maxSess)
	ks.idle = make(chan session, maxSess)

	if err := ks.mod.call(func(c *p11.Ctx, _ uint64) error {
		si, err := c.GetSlotInfo(match.slot)
		if err != nil {
			return err
		}
		ks.hw = si.Flags&ckfHWSlot != 0
		mechs, err := c.GetMechanismList(match.slot)
		if err != nil {
			return err
		}
		has := map[uint]bool{}
		for _, m := range mechs {
			has[m.Mechanism] = true
		}
		if has[ckmECEdwardsKeyPairGen] && has[ckmEdDSA] {
			ks.algs = append(ks.algs, keystore.Ed25519)
		}
		if has[p11.CKM_EC_KEY_PAIR_GEN] && has[p11.CKM_ECDSA] {
			ks.algs = append(ks.algs, keystore.P256)
		}
		return nil
	}); err != nil {
		return keystore.Errorf(keystore.ErrUnavailable, "read slot and mechanism information of token %q: %v", ks.ref.label, err)
	}
	st, err := ks.login(ctx, nil)
	if err != nil {
		return err
	}
	ks.state.Store(st)
	ks.log.Debug("pkcs11 keystore open", "serial", ks.serial, "algorithms", ks.algs, "max_sessions", maxSess)
	return nil
}

func (ks *tokenKeystore) tokenMissing(all []tokenMatch) error {
	var present []string
	for _, m := range all {
		present = append(present, fmt.Sprintf("%q (serial %s)", m.info.Label, m.info.SerialNumber))
		if ks.ref.label != "" && m.info.Label == ks.ref.label {
			return keystore.Errorf(keystore.ErrUnavailable,
				"the token labelled %q in PKCS#11 module %s has serial %s, not %s: correct serial= in the URI or leave it out",
				ks.ref.label, ks.ref.modulePath, m.info.SerialNumber, ks.ref.serial)
		}
	}
	if len(present) == 0 {
		present = []string{"none"}
	}
	if ks.ref.label == "" {
		return keystore.Errorf(keystore.ErrUnavailable, "no initialised token with serial %q in PKCS#11 module %s (tokens present: %s): correct serial= or name the token by token=<label>",
			ks.ref.serial, ks.ref.modulePath, strings.Join(present, ", "))
	}
	if ks.holds {
		// The token was there when the identity was made: it is not visible to this process, and a new
		// token of the same label would not hold the keys.
		return keystore.Errorf(keystore.ErrUnavailable,
			"no token labelled %q is visible in PKCS#11 module %s (tokens present: %s); it holds this identity's keys: do not create a new one, make it visible to this process%s",
			ks.ref.label, ks.ref.modulePath, strings.Join(present, ", "), softHSMConfHint(ks.ref.modulePath))
	}
	return keystore.Errorf(keystore.ErrUnavailable,
		"no initialised token labelled %q in PKCS#11 module %s (tokens present: %s); create it with: softhsm2-util --init-token --free --label %q (for SoftHSM; set SOFTHSM2_CONF if you use your own token directory)",
		ks.ref.label, ks.ref.modulePath, strings.Join(present, ", "), ks.ref.label)
}

// readPIN returns the PIN from the pin-source or the prompt, and a description of where it came from.
// The caller wipes the PIN.
func (ks *tokenKeystore) readPIN() ([]byte, string, error) {
	src := describePINSource(ks.ref.pinSource)
	var pin []byte
	var err error
	if ks.ref.pinSource != "" {
		pin, err = keystore.ReadSecretLog(ks.ref.pinSource, ks.log)
		if err != nil {
			return nil, src, keystore.Errorf(keystore.ErrUnavailable, "cannot read the PIN for token %q: %v", ks.ref.label, err)
		}
	} else {
		if ks.prompt == nil {
			return nil, src, keystore.Errorf(keystore.ErrUnavailable, "token %q needs its PIN again and there is no pin-source nor terminal: add pin-source to the URI", ks.ref.label)
		}
		pin, err = ks.prompt(fmt.Sprintf("PIN for PKCS#11 token %q", ks.ref.label))
		if err != nil {
			return nil, src, keystore.Errorf(keystore.ErrUnavailable, "reading the PIN for token %q: %v", ks.ref.label, err)
		}
	}
	if len(pin) == 0 {
		return nil, src, keystore.Errorf(keystore.ErrWrongSecret, "the PIN from %s for token %q is empty", src, ks.ref.label)
	}
	return pin, src, nil
}

// login finds the token again (its slot number may have changed), opens a new login session, logs in
// and closes the previous login session. prev is nil at open.
func (ks *tokenKeystore) login(ctx context.Context, prev *tokState) (*tokState, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	pin, src, err := ks.readPIN()
	if err != nil {
		return nil, err
	}
	defer keystore.Wipe(pin)
	var st *tokState
	err = ks.mod.call(func(c *p11.Ctx, gen uint64) error {
		matches, all, err := findTokens(c, ks.ref.label, ks.serial)
		if err != nil {
			return err
		}
		if len(matches) != 1 {
			return ks.tokenMissing(all)
		}
		slot := matches[0].slot
		sh, err := c.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		if err != nil {
			return err
		}
		// miekg/pkcs11 takes the PIN as a string: view the bytes as one instead of copying them into
		// memory we could not wipe. (The binding still copies it into C memory it frees without zeroing.)
		lerr := c.Login(sh, p11.CKU_USER, unsafe.String(unsafe.SliceData(pin), len(pin)))
		switch {
		case lerr == nil:
			ks.mod.rememberPIN(ks.serial, pin)
		case isRV(lerr, p11.CKR_USER_ALREADY_LOGGED_IN):
			same, known := ks.mod.samePIN(ks.serial, pin)
			if known && !same {
				_ = c.CloseSession(sh)
				return keystore.Errorf(keystore.ErrWrongSecret, "the PIN from %s was refused by token %q (it differs from the PIN this process logged in with)", src, ks.ref.label)
			}
			if !known {
				ks.log.Warn("token was already logged in by other code in this process; the PIN could not be checked")
			}
		case wrongPIN(lerr):
			_ = c.CloseSession(sh)
			return keystore.Errorf(keystore.ErrWrongSecret, "the PIN from %s was refused by token %q (%v)", src, ks.ref.label, lerr)
		case isRV(lerr, p11.CKR_USER_PIN_NOT_INITIALIZED):
			_ = c.CloseSession(sh)
			return keystore.Errorf(keystore.ErrUnavailable, "token %q has no user PIN yet: set one with softhsm2-util --init-pin or the token's tools", ks.ref.label)
		default:
			_ = c.CloseSession(sh)
			return lerr
		}
		var epoch uint64
		if prev != nil {
			epoch = prev.epoch + 1
			if prev.gen == gen {
				_ = c.CloseSession(prev.login)
			}
		}
		st = &tokState{slot: slot, login: sh, gen: gen, epoch: epoch}
		return nil
	})
	if err != nil {
		if errors.Is(err, keystore.ErrWrongSecret) || errors.Is(err, keystore.ErrUnavailable) || errors.Is(err, keystore.ErrClosed) {
			return nil, err
		}
		return nil, fmt.Errorf("log in to token %q: %w", ks.ref.label, err)
	}
	return st, nil
}

// recover repairs the keystore after an operation on a session of state seen failed with cause: it
// re-initialises the module for device-class errors (or when logging in again fails with one), logs in
// again, and starts a new epoch so that pooled sessions and cached handles are replaced. When another
// goroutine already recovered since seen, it does nothing.
func (ks *tokenKeystore) recover(ctx context.Context, seen *tokState, cls errClass, cause error) error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.closed.Load() {
		return ks.errClosed()
	}
	cur := ks.state.Load()
	modGen := ks.mod.gen.Load()
	if cur != seen && cur.gen == modGen {
		return nil
	}
	ks.recoveries.Add(1)
	if cause == nil {
		ks.log.Info("pkcs11 module was re-initialised; logging in again")
	} else {
		ks.log.Warn("pkcs11 session lost; recovering", "cause", cause.Error(), "reinit", cls == classDevice)
	}
	ks.drainIdle()
	reinitDone := false
	if cls == classDevice && cur.gen == modGen {
		if err := ks.mod.reinit(modGen); err != nil {
			return err
		}
		reinitDone = true
	}
	st, err := ks.login(ctx, cur)
	if err != nil && !reinitDone && classify(err) == classDevice {
		if rerr := ks.mod.reinit(ks.mod.gen.Load()); rerr != nil {
			return rerr
		}
		st, err = ks.login(ctx, cur)
	}
	if err != nil {
		if errors.Is(err, keystore.ErrWrongSecret) || errors.Is(err, keystore.ErrClosed) || errors.Is(err, keystore.ErrUnavailable) {
			return err
		}
		return keystore.Errorf(keystore.ErrUnavailable, "token %q: recovering after %v failed: %v", ks.ref.label, errString(cause), err)
	}
	ks.state.Store(st)
	return nil
}

func errString(err error) string {
	if err == nil {
		return "a module re-initialisation"
	}
	return err.Error()
}

// drainIdle closes every pooled session (those of the current module generation; older handles are
// simply forgotten, as their numbers may now belong to someone else).
func (ks *tokenKeystore) drainIdle() {
	for {
		select {
		case s := <-ks.idle:
			ks.closeSession(s)
		default:
			return
		}
	}
}

func (ks *tokenKeystore) closeSession(s session) {
	_ = ks.mod.call(func(c *p11.Ctx, gen uint64) error {
		if s.gen == gen {
			_ = c.CloseSession(s.h)
		}
		return nil
	})
}

// get takes a session from the pool or opens one. The caller gives it back with put.
func (ks *tokenKeystore) get(ctx context.Context) (session, *tokState, error) {
	select {
	case ks.sem <- struct{}{}:
	default:
		select {
		case ks.sem <- struct{}{}:
		case <-ctx.Done():
			return session{}, nil, ctx.Err()
		}
	}
	st := ks.state.Load()
	gen := ks.mod.gen.Load()
	for {
		select {
		case s := <-ks.idle:
			if s.gen != gen || s.epoch != st.epoch {
				ks.closeSession(s)
				continue
			}
			return s, st, nil
		default:
		}
		break
	}
	var s session
	err := ks.mod.call(func(c *p11.Ctx, g uint64) error {
		if g != st.gen {
			return errStale
		}
		h, err := c.OpenSession(st.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
		s = session{h: h, gen: g, epoch: st.epoch}
		return err
	})
	if err != nil {
		<-ks.sem
		return session{}, st, err
	}
	return s, st, nil
}

// put gives a session back. A session whose operation failed is closed and dropped, never reused; so
// is one from an earlier login or module generation, and every session once the keystore is closed.
func (ks *tokenKeystore) put(s session, opErr error) {
	defer func() { <-ks.sem }()
	st := ks.state.Load()
	if opErr != nil || ks.closed.Load() || s.epoch != st.epoch || s.gen != ks.mod.gen.Load() {
		ks.closeSession(s)
		return
	}
	select {
	case ks.idle <- s:
	default:
		ks.closeSession(s)
	}
}

// do runs op on a pooled session. On a session- or device-class failure it recovers (log in again, or
// re-initialise the module and log in again) and runs op once more on a fresh session.
func (ks *tokenKeystore) do(ctx context.Context, op func(c *p11.Ctx, sh p11.SessionHandle, st *tokState) error) error {
	retried := false
	for stale := 0; ; {
		if ks.closed.Load() {
			return ks.errClosed()
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if st := ks.state.Load(); st.gen != ks.mod.gen.Load() {
			// Another keystore re-initialised the module: log in again before touching anything.
			if err := ks.recover(ctx, st, classSession, nil); err != nil {
				return err
			}
		}
		s, st, err := ks.get(ctx)
		if err == nil {
			err = ks.mod.call(func(c *p11.Ctx, gen uint64) error {
				if gen != s.gen {
					return errStale
				}
				return op(c, s.h, st)
			})
			ks.put(s, err)
			if err == nil {
				return nil
			}
		}
		if errors.Is(err, errStale) && stale < 3 {
			stale++
			continue
		}
		cls := classify(err)
		if cls == classOther || retried || st == nil {
			return err
		}
		if rerr := ks.recover(ctx, st, cls, err); rerr != nil {
			return rerr
		}
		retried = true
	}
}

func (ks *tokenKeystore) errClosed() error {
	return keystore.Errorf(keystore.ErrClosed, "pkcs11 keystore for token %q is closed", ks.ref.label)
}

// Info describes the keystore.
func (ks *tokenKeystore) Info() keystore.Info {
	return keystore.Info{
		Backend:        "pkcs11",
		HardwareBacked: ks.hw,
		URI:            ks.ref.keystoreURI(),
		Algorithms:     append([]keystore.Algorithm(nil), ks.algs...),
	}
}

// Close closes every session of this keystore (the token logs out when no session of the process
// remains) and releases the module; the last keystore of the process finalises it.
func (ks *tokenKeystore) Close() error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if ks.closed.Swap(true) {
		return nil
	}
	ks.drainIdle()
	st := ks.state.Load()
	_ = ks.mod.call(func(c *p11.Ctx, gen uint64) error {
		if st.gen == gen {
			_ = c.CloseSession(st.login)
		}
		return nil
	})
	ks.mod.release()
	return nil
}

// Ping checks that the token answers and this keystore is logged in; like every operation it repairs
// a lost login or module on the way (and fails only when that does not help).
func (ks *tokenKeystore) Ping(ctx context.Context) error {
	return ks.do(ctx, func(c *p11.Ctx, sh p11.SessionHandle, _ *tokState) error {
		info, err := c.GetSessionInfo(sh)
		if err != nil {
			return err
		}
		if info.State != p11.CKS_RW_USER_FUNCTIONS {
			return p11.Error(p11.CKR_USER_NOT_LOGGED_IN)
		}
		return nil
	})
}

// softHSMConfHint is advice for a SoftHSM module that cannot find its token: SoftHSM finds tokens through
// the configuration file SOFTHSM2_CONF names (or its default), so a process started with another (a
// service unit without the variable) sees other tokens or none. "" for other modules.
func softHSMConfHint(modulePath string) string {
	if !strings.Contains(strings.ToLower(filepath.Base(modulePath)), "softhsm") {
		return ""
	}
	conf := os.Getenv("SOFTHSM2_CONF")
	if conf == "" {
		return " (SOFTHSM2_CONF is not set, so SoftHSM reads its default configuration: set SOFTHSM2_CONF to the configuration the token was made with, e.g. in the service's environment)"
	}
	return fmt.Sprintf(" (SOFTHSM2_CONF is %s: is that the configuration the token was made with?)", conf)
}
