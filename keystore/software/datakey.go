package software

import (
	"bytes"
	"context"
	"errors"
	"io"

	"filippo.io/age"

	"github.com/custos-agent/custos/keystore"
)

// maxDataKey bounds what UnwrapDataKey accepts back: a data key, not a file.
const maxDataKey = 1 << 10

var _ keystore.DataKeyWrapper = (*Keystore)(nil)

// WrapDataKey implements keystore.DataKeyWrapper: the data key is encrypted, as the key files are, in an
// age file with one scrypt recipient under the keystore's passphrase.
func (k *Keystore) WrapDataKey(ctx context.Context, plaintext []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.checkOpen(); err != nil {
		return nil, err
	}
	pass, err := k.passphrase()
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	w, err := age.Encrypt(&out, &scryptRecipient{pass: pass, workFactor: k.loc.workFactor})
	if err != nil {
		return nil, keystore.Errorf(keystore.ErrUnavailable, "wrap data key: %v", err)
	}
	if _, err := w.Write(plaintext); err != nil {
		return nil, keystore.Errorf(keystore.ErrUnavailable, "wrap data key: %v", err)
	}
	if err := w.Close(); err != nil {
		return nil, keystore.Errorf(keystore.ErrUnavailable, "wrap data key: %v", err)
	}
	return out.Bytes(), nil
}

// UnwrapDataKey implements keystore.DataKeyWrapper. Another passphrase gives ErrWrongSecret (and the
// passphrase is forgotten, as for a key file); a damaged blob gives ErrCorrupt.
func (k *Keystore) UnwrapDataKey(ctx context.Context, blob []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.checkOpen(); err != nil {
		return nil, err
	}
	pass, err := k.passphrase()
	if err != nil {
		return nil, err
	}
	r, err := age.Decrypt(bytes.NewReader(blob), &scryptIdentity{pass: pass})
	if err != nil {
		var noMatch *age.NoIdentityMatchError
		if errors.As(err, &noMatch) {
			k.forgetPassphrase()
			return nil, keystore.Errorf(keystore.ErrWrongSecret, "the passphrase of software keystore %s does not unwrap this data key", k.loc.dir)
		}
		return nil, keystore.Errorf(keystore.ErrCorrupt, "wrapped data key does not parse: %v", err)
	}
	pt, err := io.ReadAll(io.LimitReader(r, maxDataKey+1))
	if err != nil || len(pt) > maxDataKey {
		keystore.Wipe(pt)
		return nil, keystore.Errorf(keystore.ErrCorrupt, "wrapped data key is damaged or truncated")
	}
	return pt, nil
}
