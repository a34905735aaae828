package pkcs11_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/pkcs11"
	"github.com/custos-agent/custos/pkcs11/softhsmtest"
)

// Faults injected underneath a running keystore, through the shared module context. After each, signing
// with both algorithms works again (a recovery plus one retry), without any error reaching the caller.
func TestRecovery(t *testing.T) {
	tests := []struct {
		name       string
		fault      func(t *testing.T, h pkcs11.Hooks)
		moduleInit bool // the fix needs a module re-initialisation
	}{
		{"C_CloseAllSessions", func(t *testing.T, h pkcs11.Hooks) {
			if err := h.CloseAllSessions(); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"C_Logout", func(t *testing.T, h pkcs11.Hooks) {
			if err := h.Logout(); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"module reset (C_Finalize underneath)", func(t *testing.T, h pkcs11.Hooks) {
			if err := h.ResetModule(); err != nil {
				t.Fatal(err)
			}
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ks := open(t, softhsmtest.NewToken(t))
			h := pkcs11.HooksOf(ks)
			keys := []keystore.Key{generate(t, ks, keystore.Ed25519, "e"), generate(t, ks, keystore.P256, "p")}
			var signers []keystore.Signer
			for _, k := range keys {
				s, err := ks.Signer(testCtx(t), k.URI)
				if err != nil {
					t.Fatal(err)
				}
				signers = append(signers, s)
			}
			// Fill the pool with several sessions, all of which the fault will invalidate.
			signConcurrently(t, keys, signers, 4, 2)
			if err := h.FillPool(testCtx(t), 4); err != nil {
				t.Fatal(err)
			}
			if n := len(h.IdleSessions()); n < 4 {
				t.Fatalf("pool holds %d sessions, want at least 4", n)
			}
			gen := h.ModuleGen()
			tc.fault(t, h)
			// Many goroutines hit the broken sessions at once: none may see an error.
			signConcurrently(t, keys, signers, 8, 4)
			if h.Recoveries() == 0 {
				t.Fatal("no recovery ran, so the fault was not exercised")
			}
			if got := h.ModuleGen(); tc.moduleInit != (got > gen) {
				t.Errorf("module generation %d -> %d; want re-initialisation = %v", gen, got, tc.moduleInit)
			}
			rec := h.Recoveries()
			signConcurrently(t, keys, signers, 4, 4)
			if h.Recoveries() != rec {
				t.Errorf("recoveries went on after the fault was repaired: %d -> %d", rec, h.Recoveries())
			}
			// The keystore's other operations work too.
			if len(labels(t, ks)) != 2 {
				t.Errorf("List after recovery: %v", labels(t, ks))
			}
			if err := ks.(keystore.Pinger).Ping(testCtx(t)); err != nil {
				t.Errorf("Ping after recovery: %v", err)
			}
		})
	}
}

// A pooled session that fails is dropped from the pool and replaced, and the caller sees no error.
func TestBrokenSessionEvicted(t *testing.T) {
	ks := open(t, softhsmtest.NewToken(t))
	h := pkcs11.HooksOf(ks)
	k := generate(t, ks, keystore.Ed25519, "k")
	s, err := ks.Signer(testCtx(t), k.URI)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sign(testCtx(t), []byte("warm")); err != nil {
		t.Fatal(err)
	}
	broken, ok := h.BreakIdleSession()
	if !ok {
		t.Fatal("no pooled session to break")
	}
	for i := 0; i < 3; i++ {
		sig, err := s.Sign(testCtx(t), []byte("after"))
		if err != nil {
			t.Fatalf("Sign %d after a pooled session broke: %v", i, err)
		}
		if err := k.Public.Verify([]byte("after"), sig); err != nil {
			t.Fatal(err)
		}
	}
	if slices.Contains(h.IdleSessions(), broken) {
		t.Fatalf("broken session %d is still pooled: %v", broken, h.IdleSessions())
	}
	if h.Recoveries() != 1 {
		t.Errorf("recoveries = %d, want 1", h.Recoveries())
	}
}

// Two keystores of the process on the same module: a module re-initialisation caused by one (here: a
// device reset seen by the first) is repaired in the other too, and closing one leaves the other working.
func TestSharedModule(t *testing.T) {
	a := open(t, softhsmtest.NewToken(t))
	b := open(t, softhsmtest.NewToken(t))
	ka := generate(t, a, keystore.Ed25519, "a")
	kb := generate(t, b, keystore.P256, "b")
	signVerify(t, a, ka, "1")
	signVerify(t, b, kb, "1")
	ha, hb := pkcs11.HooksOf(a), pkcs11.HooksOf(b)
	if err := ha.ResetModule(); err != nil {
		t.Fatal(err)
	}
	signVerify(t, a, ka, "2")
	signVerify(t, b, kb, "2")
	if ha.Recoveries() == 0 || hb.Recoveries() == 0 {
		t.Fatalf("recoveries a=%d b=%d, want both > 0", ha.Recoveries(), hb.Recoveries())
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	signVerify(t, b, kb, "3")
}

func signConcurrently(t *testing.T, keys []keystore.Key, signers []keystore.Signer, goroutines, each int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each*len(signers))
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				for j, s := range signers {
					msg := []byte(fmt.Sprintf("g%d i%d", g, i))
					sig, err := s.Sign(testCtx(t), msg)
					if err != nil {
						errs <- fmt.Errorf("%s: %w", keys[j].Label, err)
						continue
					}
					if err := keys[j].Public.Verify(msg, sig); err != nil {
						errs <- err
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// After the token logs out underneath, looking a key up (private objects are invisible without a login)
// must repair the login rather than report the key missing.
func TestLookupAfterLogout(t *testing.T) {
	ks := open(t, softhsmtest.NewToken(t))
	h := pkcs11.HooksOf(ks)
	k := generate(t, ks, keystore.Ed25519, "k")
	for i, step := range []func() error{
		func() error { _, err := ks.PublicKey(testCtx(t), k.URI); return err },
		func() error { _, err := ks.Signer(testCtx(t), k.URI); return err },
		func() error {
			_, err := ks.(pkcs11.AttributeReader).KeyAttributes(testCtx(t), k.URI)
			return err
		},
		func() error {
			keys, err := ks.List(testCtx(t))
			if err == nil && len(keys) != 1 {
				err = fmt.Errorf("List after logout returned %d keys, want 1", len(keys))
			}
			return err
		},
	} {
		if err := h.Logout(); err != nil {
			t.Fatal(err)
		}
		if err := step(); err != nil {
			t.Errorf("step %d after C_Logout: %v", i, err)
		}
	}
	signVerify(t, ks, k, "after")
}
