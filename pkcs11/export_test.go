package pkcs11

import (
	"context"

	p11 "github.com/miekg/pkcs11"

	"github.com/custos-agent/custos/keystore"
)

// Hooks reach inside a keystore, for tests that break things underneath it and for benchmarks that
// compare it with raw miekg/pkcs11 calls on the same module context.
type Hooks struct{ ks *tokenKeystore }

// HooksOf returns the hooks of a keystore made by Open.
func HooksOf(k keystore.Keystore) Hooks { return Hooks{ks: k.(*tokenKeystore)} }

// Raw runs f with the shared module context and the keystore's current slot.
func (h Hooks) Raw(f func(c *p11.Ctx, slot uint) error) error {
	st := h.ks.state.Load()
	return h.ks.mod.call(func(c *p11.Ctx, _ uint64) error { return f(c, st.slot) })
}

// Ctx returns the shared module context and the keystore's slot without holding the module lock, for
// benchmarks that keep a raw session while also calling the keystore (holding the read lock across a
// keystore call would be a recursive read lock). Nothing may re-initialise the module meanwhile.
func (h Hooks) Ctx() (*p11.Ctx, uint) {
	h.ks.mod.mu.RLock()
	defer h.ks.mod.mu.RUnlock()
	return h.ks.mod.ctx, h.ks.state.Load().slot
}

// CloseAllSessions calls C_CloseAllSessions on the keystore's slot: every session of the process on the
// token disappears (and the token logs out).
func (h Hooks) CloseAllSessions() error {
	return h.Raw(func(c *p11.Ctx, slot uint) error { return c.CloseAllSessions(slot) })
}

// Logout calls C_Logout on the login session: the token logs out under every session.
func (h Hooks) Logout() error {
	st := h.ks.state.Load()
	return h.Raw(func(c *p11.Ctx, _ uint) error { return c.Logout(st.login) })
}

// ResetModule calls C_Finalize behind the registry's back, as a device reset would look: the next call
// answers CKR_CRYPTOKI_NOT_INITIALIZED.
func (h Hooks) ResetModule() error {
	m := h.ks.mod
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ctx.Finalize()
}

// BreakIdleSession closes the handle of one pooled session but leaves it in the pool, so the next
// operation that takes it fails with CKR_SESSION_HANDLE_INVALID.
func (h Hooks) BreakIdleSession() (p11.SessionHandle, bool) {
	select {
	case s := <-h.ks.idle:
		_ = h.ks.mod.call(func(c *p11.Ctx, _ uint64) error { return c.CloseSession(s.h) })
		h.ks.idle <- s
		return s.h, true
	default:
		return 0, false
	}
}

// FillPool opens n sessions at once and returns them to the pool, so that the pool holds at least n.
func (h Hooks) FillPool(ctx context.Context, n int) error {
	var held []session
	defer func() {
		for _, s := range held {
			h.ks.put(s, nil)
		}
	}()
	for i := 0; i < n; i++ {
		s, _, err := h.ks.get(ctx)
		if err != nil {
			return err
		}
		held = append(held, s)
	}
	return nil
}

// IdleSessions lists the pooled session handles (without disturbing the pool order much).
func (h Hooks) IdleSessions() []p11.SessionHandle {
	var out []session
	for {
		select {
		case s := <-h.ks.idle:
			out = append(out, s)
			continue
		default:
		}
		break
	}
	hs := make([]p11.SessionHandle, 0, len(out))
	for _, s := range out {
		hs = append(hs, s.h)
		h.ks.idle <- s
	}
	return hs
}

// Recoveries counts the recoveries the keystore ran.
func (h Hooks) Recoveries() uint64 { return h.ks.recoveries.Load() }

// ModuleGen is the module's initialisation count.
func (h Hooks) ModuleGen() uint64 { return h.ks.mod.gen.Load() }

// PrivateHandle finds the private object of a key (for raw calls in tests and benchmarks).
func (h Hooks) PrivateHandle(ctx context.Context, keyURI string) (p11.ObjectHandle, error) {
	r, err := h.ks.parseKeyURI(keyURI)
	if err != nil {
		return 0, err
	}
	var obj p11.ObjectHandle
	err = h.ks.do(ctx, func(c *p11.Ctx, sh p11.SessionHandle, _ *tokState) error {
		k, err := lookupKey(c, sh, r.id, r.object)
		obj = k.priv
		return err
	})
	return obj, err
}

// PublicHandle finds the public object of a key.
func (h Hooks) PublicHandle(ctx context.Context, keyURI string) (p11.ObjectHandle, error) {
	r, err := h.ks.parseKeyURI(keyURI)
	if err != nil {
		return 0, err
	}
	var obj p11.ObjectHandle
	err = h.ks.do(ctx, func(c *p11.Ctx, sh p11.SessionHandle, _ *tokState) error {
		k, err := lookupKey(c, sh, r.id, r.object)
		obj = k.pubH
		return err
	})
	return obj, err
}

// Mechanisms used by the raw benchmarks.
const (
	MechEdDSA = ckmEdDSA
	MechECDSA = p11.CKM_ECDSA
)

// RawToDER exposes the r||s to DER conversion.
var RawToDER = rawECDSAToDER
