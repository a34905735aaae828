package pkcs11

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	p11 "github.com/miekg/pkcs11"

	"github.com/custos-agent/custos/keystore"
)

// A PKCS#11 module is process-wide state: C_Initialize may be called once per process until C_Finalize,
// login state is per token per process, and SoftHSM reads SOFTHSM2_CONF at C_Initialize. Therefore the
// loaded modules live in one registry per process (the only package-level state here), shared by every
// keystore that uses the same library file, reference-counted, and finalised when the last one closes.
var modules = moduleRegistry{mods: map[string]*module{}}

type moduleRegistry struct {
	mu   sync.Mutex
	mods map[string]*module // by real (symlink-resolved) path
}

// module is one loaded, initialised PKCS#11 library.
type module struct {
	path string // real path of the library

	// mu is held for reading around every call into ctx, and for writing to initialise or finalise the
	// module. A re-initialisation therefore waits for calls in flight and never pulls a module from under
	// them.
	mu  sync.RWMutex
	ctx *p11.Ctx // nil once the last reference is released
	// gen counts initialisations. It is written under mu (write) and read atomically. Session handles are
	// tagged with it, because handle numbers of an earlier initialisation may name someone else's session.
	gen atomic.Uint64
	// foreign is set when the module was already initialised in this process by code outside this
	// package (C_Initialize said CKR_CRYPTOKI_ALREADY_INITIALIZED); such a module is never finalised here.
	foreign bool

	refs int // guarded by modules.mu

	// admin serialises Generate, Destroy and InitToken across all keystores of this module, so that
	// "is this label free?" and "create it" cannot interleave within the process.
	admin sync.Mutex

	// Login state is per token and shared by every keystore of the process: a second C_Login answers
	// CKR_USER_ALREADY_LOGGED_IN without looking at the PIN. To still refuse a wrong PIN, we keep, per
	// token serial, an HMAC (under a random per-process key) of the PIN that logged in.
	macMu   sync.Mutex
	macKey  [32]byte
	pinMACs map[string][]byte
}

// acquireModule loads and initialises the library at path, or takes another reference on it. shared
// is true when the module was already initialised by an earlier keystore of this process.
func acquireModule(path string) (m *module, shared bool, err error) {
	if !filepath.IsAbs(path) {
		return nil, false, keystore.Errorf(keystore.ErrBadURI,
			"module-path %q is not an absolute path: give the full path of the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so", path)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, false, keystore.Errorf(keystore.ErrUnavailable,
			"PKCS#11 module %s not found (%v): install softhsm2 (apt-get install softhsm2) or check module-path", path, errors.Unwrap(err))
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, false, keystore.Errorf(keystore.ErrUnavailable, "PKCS#11 module %s: %v: check module-path", path, err)
	}
	modules.mu.Lock()
	defer modules.mu.Unlock()
	if m := modules.mods[real]; m != nil {
		m.refs++
		return m, true, nil
	}
	ctx := p11.New(real)
	if ctx == nil {
		return nil, false, keystore.Errorf(keystore.ErrUnavailable,
			"cannot load %s as a PKCS#11 module (dlopen or C_GetFunctionList failed): check module-path names a PKCS#11 library", path)
	}
	m = &module{path: real, ctx: ctx, refs: 1, pinMACs: map[string][]byte{}}
	if _, err := rand.Read(m.macKey[:]); err != nil {
		ctx.Destroy()
		return nil, false, fmt.Errorf("pkcs11: random key: %w", err)
	}
	if err := ctx.Initialize(); err != nil {
		if !isRV(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			ctx.Destroy()
			return nil, false, keystore.Errorf(keystore.ErrUnavailable, "C_Initialize of PKCS#11 module %s failed: %v%s", path, err, softHSMConfHint(path))
		}
		m.foreign = true
	}
	m.gen.Store(1)
	modules.mods[real] = m
	return m, false, nil
}

// release drops one reference; the last one finalises and unloads the module.
func (m *module) release() {
	modules.mu.Lock()
	defer modules.mu.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(modules.mods, m.path)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx == nil {
		return
	}
	if !m.foreign {
		_ = m.ctx.Finalize()
	}
	m.ctx.Destroy()
	m.ctx = nil
}

// errModuleGone is returned for calls on a module whose last reference was released.
var errModuleGone = keystore.Errorf(keystore.ErrClosed, "the PKCS#11 module was finalised")

// call runs f under the read lock with the module's context and current generation.
func (m *module) call(f func(c *p11.Ctx, gen uint64) error) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.ctx == nil {
		return errModuleGone
	}
	return f(m.ctx, m.gen.Load())
}

// reinit finalises and initialises the module again, unless another caller already did so since
// generation seen. Every session of the earlier generation is gone afterwards; keystores notice the new
// generation and log in again.
func (m *module) reinit(seen uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx == nil {
		return errModuleGone
	}
	if m.gen.Load() != seen {
		return nil
	}
	_ = m.ctx.Finalize() // may say CKR_CRYPTOKI_NOT_INITIALIZED after a device reset: that is fine
	if err := m.ctx.Initialize(); err != nil && !isRV(err, p11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		// Leave the generation as it is: the next call sees CKR_CRYPTOKI_NOT_INITIALIZED and tries again.
		return keystore.Errorf(keystore.ErrUnavailable, "re-initialising PKCS#11 module %s failed: %v", m.path, err)
	}
	m.gen.Add(1)
	return nil
}

func (m *module) pinMAC(pin []byte) []byte {
	h := hmac.New(sha256.New, m.macKey[:])
	h.Write(pin)
	return h.Sum(nil)
}

// rememberPIN records that pin logged in to the token with serial.
func (m *module) rememberPIN(serial string, pin []byte) {
	m.macMu.Lock()
	defer m.macMu.Unlock()
	m.pinMACs[serial] = m.pinMAC(pin)
}

// samePIN reports whether pin is the one that logged in to the token; known is false when the login was
// made by someone else in this process (then the PIN cannot be checked).
func (m *module) samePIN(serial string, pin []byte) (same, known bool) {
	m.macMu.Lock()
	defer m.macMu.Unlock()
	want, ok := m.pinMACs[serial]
	if !ok {
		return false, false
	}
	return hmac.Equal(want, m.pinMAC(pin)), true
}

// tokenMatch is one slot whose token fits a label/serial selector.
type tokenMatch struct {
	slot uint
	info p11.TokenInfo
}

// findTokens lists the initialised tokens matching label and serial (either may be empty, not both),
// and every initialised token (for error messages).
func findTokens(c *p11.Ctx, label, serial string) (matches, all []tokenMatch, err error) {
	slots, err := c.GetSlotList(true)
	if err != nil {
		return nil, nil, err
	}
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err != nil {
			continue // a slot may lose its token between the two calls
		}
		if ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		all = append(all, tokenMatch{slot: s, info: ti})
		if (label == "" || ti.Label == label) && (serial == "" || ti.SerialNumber == serial) {
			matches = append(matches, tokenMatch{slot: s, info: ti})
		}
	}
	return matches, all, nil
}
