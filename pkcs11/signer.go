package pkcs11

import (
	"context"
	"crypto/sha256"
	"fmt"

	p11 "github.com/miekg/pkcs11"

	"github.com/custos-agent/custos/keystore"
)

// signer signs with one key of a tokenKeystore. The hot path is: a pooled session, the cached private
// key handle, C_SignInit, C_Sign. The handle is looked up again (by CKA_ID) only after a recovery.
type signer struct {
	ks  *tokenKeystore
	key *keyRef
}

func (s *signer) Public() keystore.PublicKey { return s.key.pub }

// Sign signs the whole message: Ed25519 (CKM_EDDSA) over the message itself, giving 64 raw bytes; P-256
// (CKM_ECDSA) over its SHA-256, computed here, with the token's r||s returned as ASN.1 DER.
func (s *signer) Sign(ctx context.Context, message []byte) ([]byte, error) {
	k := s.key
	if k.dead.Load() {
		return nil, keystore.Errorf(keystore.ErrKeyLost, "key %q is no longer on token %q (destroyed)", k.label, s.ks.ref.label)
	}
	input := message
	p256 := k.pub.Algorithm == keystore.P256
	if p256 {
		d := sha256.Sum256(message)
		input = d[:]
	}
	var sig []byte
	err := s.ks.do(ctx, func(c *p11.Ctx, sh p11.SessionHandle, st *tokState) error {
		h := k.cache.Load()
		if h == nil || h.epoch != st.epoch {
			hs, err := findPrivate(c, sh, k.id)
			if err != nil {
				return err
			}
			if len(hs) != 1 {
				if err := requireLogin(c, sh); err != nil {
					return err
				}
				k.dead.Store(true) // gone for good: later calls fail fast
				return keystore.Errorf(keystore.ErrKeyLost, "key %q (id %x) is no longer on token %q", k.label, k.id, s.ks.ref.label)
			}
			h = &handleCache{priv: hs[0], epoch: st.epoch}
			k.cache.Store(h)
		}
		if err := c.SignInit(sh, k.mech, h.priv); err != nil {
			return err
		}
		var err error
		sig, err = c.Sign(sh, input)
		return err
	})
	if err != nil {
		if isRV(err, p11.CKR_OBJECT_HANDLE_INVALID, p11.CKR_KEY_HANDLE_INVALID) {
			// Still invalid after a fresh login and lookup: the object went away underneath us.
			return nil, keystore.Errorf(keystore.ErrKeyLost, "sign with key %q: the key's handle stays invalid after a fresh login (%v)", k.label, err)
		}
		return nil, s.ks.fail(fmt.Sprintf("sign with key %q", k.label), err)
	}
	if p256 {
		return rawECDSAToDER(sig)
	}
	if len(sig) != 64 {
		return nil, keystore.Errorf(keystore.ErrCorrupt, "token returned an Ed25519 signature of %d bytes", len(sig))
	}
	return sig, nil
}

// rawECDSAToDER converts PKCS#11's r||s (32 bytes each for P-256) to DER SEQUENCE { INTEGER r, INTEGER s }.
func rawECDSAToDER(raw []byte) ([]byte, error) {
	if len(raw) != 64 {
		return nil, keystore.Errorf(keystore.ErrCorrupt, "token returned a P-256 signature of %d bytes, want 64 (r||s)", len(raw))
	}
	r, s := derInt(raw[:32]), derInt(raw[32:])
	out := make([]byte, 0, 2+len(r)+len(s))
	out = append(out, 0x30, byte(len(r)+len(s)))
	out = append(out, r...)
	return append(out, s...), nil
}

// derInt encodes a big-endian unsigned integer as a DER INTEGER (minimal, non-negative).
func derInt(b []byte) []byte {
	for len(b) > 1 && b[0] == 0 {
		b = b[1:]
	}
	pad := len(b) > 0 && b[0]&0x80 != 0
	n := len(b)
	if pad {
		n++
	}
	out := make([]byte, 0, 2+n)
	out = append(out, 0x02, byte(n))
	if pad {
		out = append(out, 0)
	}
	return append(out, b...)
}
