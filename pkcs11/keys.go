package pkcs11

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"unicode"
	"unicode/utf8"

	p11 "github.com/miekg/pkcs11"

	"github.com/custos-agent/custos/keystore"
)

// keyRef is what a signer holds: a key's identity, its public half, and the private object handle
// cached for the login epoch it was found in (handles are looked up again after every recovery).
type keyRef struct {
	id    []byte
	label string
	uri   string
	pub   keystore.PublicKey
	mech  []*p11.Mechanism
	cache atomic.Pointer[handleCache]
	dead  atomic.Bool // destroyed through this keystore
}

type handleCache struct {
	priv  p11.ObjectHandle
	epoch uint64
}

// keyInfo is a key pair found on the token.
type keyInfo struct {
	id         []byte
	label      string
	priv, pubH p11.ObjectHandle
	pub        keystore.PublicKey
}

// Generate makes a key pair on the token: the private half with CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE
// true and CKA_EXTRACTABLE false, the public half with CKA_TOKEN true, both with CKA_LABEL = req.Label
// and the same random 16-byte CKA_ID.
func (ks *tokenKeystore) Generate(ctx context.Context, req keystore.GenerateRequest) (keystore.Key, error) {
	if ks.closed.Load() {
		return keystore.Key{}, ks.errClosed()
	}
	if !req.Algorithm.Valid() {
		return keystore.Key{}, keystore.Errorf(keystore.ErrUnsupportedAlgorithm, "unknown algorithm %q: use ed25519 or p256", req.Algorithm)
	}
	if !slices.Contains(ks.algs, req.Algorithm) {
		return keystore.Key{}, keystore.Errorf(keystore.ErrUnsupportedAlgorithm,
			"token %q does not offer %s (its module lacks the mechanisms; it offers %v)", ks.ref.label, req.Algorithm, ks.algs)
	}
	if err := checkKeyLabel(req.Label); err != nil {
		return keystore.Key{}, err
	}
	id := make([]byte, idLen)
	if _, err := rand.Read(id); err != nil {
		return keystore.Key{}, fmt.Errorf("pkcs11: random key id: %w", err)
	}
	pubT, privT, mech := templates(req.Algorithm, req.Label, id)

	ks.mod.admin.Lock()
	defer ks.mod.admin.Unlock()
	var k keyInfo
	err := ks.do(ctx, func(c *p11.Ctx, sh p11.SessionHandle, _ *tokState) error {
		// On a retry after a lost session, the first attempt may have created the pair: find it by
		// its id rather than making a second one.
		if got, err := lookupKey(c, sh, id, ""); err == nil {
			k = got
			return nil
		} else if !errors.Is(err, keystore.ErrNotFound) {
			return err
		}
		used, err := findObjects(c, sh, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, req.Label)}, 1)
		if err != nil {
			return err
		}
		if len(used) > 0 {
			return keystore.Errorf(keystore.ErrExists, "token %q already holds an object labelled %q: choose another label, or destroy the old key first", ks.ref.label, req.Label)
		}
		pubH, privH, err := c.GenerateKeyPair(sh, []*p11.Mechanism{p11.NewMechanism(mech, nil)}, pubT, privT)
		if err != nil {
			return err
		}
		pub, err := readPublic(c, sh, pubH)
		if err != nil {
			return err
		}
		if pub.Algorithm != req.Algorithm {
			return keystore.Errorf(keystore.ErrCorrupt, "token %q made a %s key when asked for %s", ks.ref.label, pub.Algorithm, req.Algorithm)
		}
		k = keyInfo{id: id, label: req.Label, priv: privH, pubH: pubH, pub: pub}
		return nil
	})
	if err != nil {
		return keystore.Key{}, ks.fail(fmt.Sprintf("generate %s key %q", req.Algorithm, req.Label), err)
	}
	ks.log.Info("pkcs11 key generated", "label", req.Label, "algorithm", req.Algorithm)
	return keystore.Key{URI: ks.ref.keyURI(k.label, k.id), Label: k.label, Public: k.pub}, nil
}

func checkKeyLabel(label string) error {
	switch {
	case label == "":
		return keystore.Errorf(keystore.ErrBadURI, "key label is empty: give each key a name (it becomes CKA_LABEL and object= in the key URI)")
	case len(label) > maxKeyLabel:
		return keystore.Errorf(keystore.ErrBadURI, "key label of %d bytes is too long (at most %d)", len(label), maxKeyLabel)
	case !utf8.ValidString(label):
		return keystore.Errorf(keystore.ErrBadURI, "key label %q is not valid UTF-8", label)
	case strings.IndexFunc(label, unicode.IsControl) >= 0:
		return keystore.Errorf(keystore.ErrBadURI, "key label %q contains control characters", label)
	}
	return nil
}

func templates(alg keystore.Algorithm, label string, id []byte) (pub, priv []*p11.Attribute, mech uint) {
	keyType, params := uint(p11.CKK_EC), oidP256
	mech = p11.CKM_EC_KEY_PAIR_GEN
	if alg == keystore.Ed25519 {
		keyType, params, mech = ckkECEdwards, oidEd25519, ckmECEdwardsKeyPairGen
	}
	pub = []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PUBLIC_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, keyType),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, false),
		p11.NewAttribute(p11.CKA_VERIFY, true),
		p11.NewAttribute(p11.CKA_EC_PARAMS, params),
		p11.NewAttribute(p11.CKA_LABEL, label),
		p11.NewAttribute(p11.CKA_ID, id),
	}
	priv = []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, keyType),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_SIGN, true),
		p11.NewAttribute(p11.CKA_DERIVE, false),
		p11.NewAttribute(p11.CKA_LABEL, label),
		p11.NewAttribute(p11.CKA_ID, id),
	}
	return pub, priv, mech
}

// resolve parses a key URI, checks that it names this keystore's token, and finds the key on it.
func (ks *tokenKeystore) resolve(ctx context.Context, keyURI string) (*keyRef, error) {
	if ks.closed.Load() {
		return nil, ks.errClosed()
	}
	r, err := ks.parseKeyURI(keyURI)
	if err != nil {
		return nil, err
	}
	var k keyInfo
	err = ks.do(ctx, func(c *p11.Ctx, sh p11.SessionHandle, _ *tokState) error {
		var err error
		k, err = lookupKey(c, sh, r.id, r.object)
		return err
	})
	if err != nil {
		return nil, ks.fail("find key "+keyName(r), err)
	}
	ks.keysMu.Lock()
	defer ks.keysMu.Unlock()
	kr := ks.keys[string(k.id)]
	if kr == nil || kr.dead.Load() {
		kr = &keyRef{id: k.id, label: k.label, uri: ks.ref.keyURI(k.label, k.id), pub: k.pub}
		kr.mech = []*p11.Mechanism{p11.NewMechanism(p11.CKM_ECDSA, nil)}
		if k.pub.Algorithm == keystore.Ed25519 {
			kr.mech = []*p11.Mechanism{p11.NewMechanism(ckmEdDSA, nil)}
		}
		ks.keys[string(k.id)] = kr
	}
	return kr, nil
}

func keyName(r ref) string {
	if r.object != "" {
		return fmt.Sprintf("%q", r.object)
	}
	return fmt.Sprintf("id %x", r.id)
}

func (ks *tokenKeystore) parseKeyURI(keyURI string) (ref, error) {
	r, err := parseRef(keyURI)
	if err != nil {
		return ref{}, err
	}
	if !r.namesKey() {
		return ref{}, keystore.Errorf(keystore.ErrBadURI, "pkcs11 URI names no key: add ;object=<key label> or ;id=<key id>")
	}
	if r.label != "" && ks.ref.label != "" && r.label != ks.ref.label {
		return ref{}, keystore.Errorf(keystore.ErrNotFound, "key %s is on token %q, this keystore is token %q", keyName(r), r.label, ks.ref.label)
	}
	if r.serial != "" && r.serial != ks.serial {
		return ref{}, keystore.Errorf(keystore.ErrNotFound, "key %s is on the token with serial %q, this keystore is serial %q", keyName(r), r.serial, ks.serial)
	}
	if !sameFile(r.modulePath, ks.ref.modulePath) {
		return ref{}, keystore.Errorf(keystore.ErrNotFound, "key %s is reached through module %s, this keystore uses %s", keyName(r), r.modulePath, ks.ref.modulePath)
	}
	return r, nil
}

func sameFile(a, b string) bool {
	if a == b {
		return true
	}
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	if err1 != nil || err2 != nil {
		return false
	}
	if ra == rb {
		return true
	}
	sa, err1 := os.Stat(ra)
	sb, err2 := os.Stat(rb)
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// Signer returns a signer for the key. It looks the key up now (ErrNotFound if it is not on the token);
// the signer then caches the private key handle and signs with one C_SignInit and one C_Sign.
func (ks *tokenKeystore) Signer(ctx context.Context, keyURI string) (keystore.Signer, error) {
	kr, err := ks.resolve(ctx, keyURI)
	if err != nil {
		return nil, err
	}
	return &signer{ks: ks, key: kr}, nil
}

// PublicKey reads the public half of the key from the token.
func (ks *tokenKeystore) PublicKey(ctx context.Context, keyURI string) (keystore.PublicKey, error) {
	kr, err := ks.resolve(ctx, keyURI)
	if err != nil {
		return keystore.PublicKey{}, err
	}
	return kr.pub, nil
}

// Destroy deletes both halves of the key from the token (C_DestroyObject).
func (ks *tokenKeystore) Destroy(ctx context.Context, keyURI string) error {
	if ks.closed.Load() {
		return ks.errClosed()
	}
	r, err := ks.parseKeyURI(keyURI)
	if err != nil {
		return err
	}
	ks.mod.admin.Lock()
	defer ks.mod.admin.Unlock()
	var id []byte // the key's CKA_ID, once found
	destroyed := false
	err = ks.do(ctx, func(c *p11.Ctx, sh p11.SessionHandle, _ *tokState) error {
		if !destroyed {
			k, err := lookupKey(c, sh, r.id, r.object)
			if err != nil {
				return err
			}
			id = k.id
			if err := c.DestroyObject(sh, k.priv); err != nil {
				return err
			}
			destroyed = true
		}
		// The public half (and, on a retry, whatever is left of it).
		pubs, err := findObjects(c, sh, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PUBLIC_KEY),
			p11.NewAttribute(p11.CKA_ID, id),
		}, 0)
		if err != nil {
			return err
		}
		for _, h := range pubs {
			if err := c.DestroyObject(sh, h); err != nil {
				return err
			}
		}
		return nil
	})
	if id != nil {
		ks.keysMu.Lock()
		if kr := ks.keys[string(id)]; kr != nil {
			kr.dead.Store(true)
			delete(ks.keys, string(id))
		}
		ks.keysMu.Unlock()
	}
	if err != nil {
		return ks.fail("destroy key "+keyName(r), err)
	}
	ks.log.Info("pkcs11 key destroyed", "key", keyName(r))
	return nil
}

// List returns every Ed25519 and P-256 key pair on the token, sorted by label. Objects it cannot
// describe (other key types, a private key without its public half) are left out and logged.
func (ks *tokenKeystore) List(ctx context.Context) ([]keystore.Key, error) {
	if ks.closed.Load() {
		return nil, ks.errClosed()
	}
	var keys []keystore.Key
	err := ks.do(ctx, func(c *p11.Ctx, sh p11.SessionHandle, _ *tokState) error {
		keys = keys[:0]
		// Without a login private objects are invisible: an empty answer would be a lie.
		if err := requireLogin(c, sh); err != nil {
			return err
		}
		privs, err := findObjects(c, sh, []*p11.Attribute{p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY)}, 0)
		if err != nil {
			return err
		}
		for _, h := range privs {
			a, err := c.GetAttributeValue(sh, h, []*p11.Attribute{
				p11.NewAttribute(p11.CKA_ID, nil), p11.NewAttribute(p11.CKA_LABEL, nil),
			})
			if err != nil {
				return err
			}
			id, label := a[0].Value, string(a[1].Value)
			if len(id) == 0 {
				ks.log.Debug("pkcs11 List skips a private key without CKA_ID", "label", label)
				continue
			}
			k, err := lookupKey(c, sh, id, "")
			if err != nil {
				if classify(err) != classOther {
					return err
				}
				ks.log.Debug("pkcs11 List skips a key it cannot describe", "label", label, "err", err)
				continue
			}
			keys = append(keys, keystore.Key{URI: ks.ref.keyURI(k.label, k.id), Label: k.label, Public: k.pub})
		}
		return nil
	})
	if err != nil {
		return nil, ks.fail("list keys", err)
	}
	slices.SortFunc(keys, func(a, b keystore.Key) int { return strings.Compare(a.Label, b.Label) })
	return keys, nil
}

// KeyAttributes are the protection attributes of a key's private object, as the token reports them.
type KeyAttributes struct {
	Token            bool // CKA_TOKEN: stored on the token, not a session object
	Private          bool // CKA_PRIVATE: usable only after login
	Sensitive        bool // CKA_SENSITIVE: the value cannot be read in plaintext
	Extractable      bool // CKA_EXTRACTABLE: the value can be wrapped out of the token
	NeverExtractable bool // CKA_NEVER_EXTRACTABLE: it was never extractable
	AlwaysSensitive  bool // CKA_ALWAYS_SENSITIVE: it was always sensitive
}

// AttributeReader is an optional capability of the PKCS#11 keystore (find it by type assertion on the
// keystore.Keystore that Open returns): it reads back the protection attributes of a key's private
// object, so that operators and tests can prove a key cannot leave the token.
type AttributeReader interface {
	KeyAttributes(ctx context.Context, keyURI string) (KeyAttributes, error)
}

// KeyAttributes implements AttributeReader.
func (ks *tokenKeystore) KeyAttributes(ctx context.Context, keyURI string) (KeyAttributes, error) {
	if ks.closed.Load() {
		return KeyAttributes{}, ks.errClosed()
	}
	r, err := ks.parseKeyURI(keyURI)
	if err != nil {
		return KeyAttributes{}, err
	}
	var ka KeyAttributes
	err = ks.do(ctx, func(c *p11.Ctx, sh p11.SessionHandle, _ *tokState) error {
		k, err := lookupKey(c, sh, r.id, r.object)
		if err != nil {
			return err
		}
		a, err := c.GetAttributeValue(sh, k.priv, []*p11.Attribute{
			p11.NewAttribute(p11.CKA_TOKEN, nil),
			p11.NewAttribute(p11.CKA_PRIVATE, nil),
			p11.NewAttribute(p11.CKA_SENSITIVE, nil),
			p11.NewAttribute(p11.CKA_EXTRACTABLE, nil),
			p11.NewAttribute(p11.CKA_NEVER_EXTRACTABLE, nil),
			p11.NewAttribute(p11.CKA_ALWAYS_SENSITIVE, nil),
		})
		if err != nil {
			return err
		}
		b := func(i int) bool { return len(a[i].Value) == 1 && a[i].Value[0] != 0 }
		ka = KeyAttributes{Token: b(0), Private: b(1), Sensitive: b(2), Extractable: b(3), NeverExtractable: b(4), AlwaysSensitive: b(5)}
		return nil
	})
	if err != nil {
		return KeyAttributes{}, ks.fail("read attributes of key "+keyName(r), err)
	}
	return ka, nil
}

// fail puts err in a sentence. An error that already has a keystore kind keeps it; a bare PKCS#11 error
// (what remains after a recovery and one retry) is also ErrUnavailable.
func (ks *tokenKeystore) fail(what string, err error) error {
	for _, kind := range []error{keystore.ErrNotFound, keystore.ErrExists, keystore.ErrUnsupportedAlgorithm,
		keystore.ErrBadURI, keystore.ErrWrongSecret, keystore.ErrUnavailable, keystore.ErrKeyLost,
		keystore.ErrCorrupt, keystore.ErrClosed, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, kind) {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	return fmt.Errorf("%s on token %q: %w: %w", what, ks.ref.label, err, keystore.ErrUnavailable)
}

// findObjects returns up to max (0: all) objects matching tmpl.
func findObjects(c *p11.Ctx, sh p11.SessionHandle, tmpl []*p11.Attribute, max int) ([]p11.ObjectHandle, error) {
	if err := c.FindObjectsInit(sh, tmpl); err != nil {
		return nil, err
	}
	var out []p11.ObjectHandle
	for {
		n := 64
		if max > 0 {
			n = max - len(out)
		}
		hs, _, err := c.FindObjects(sh, n)
		if err != nil {
			_ = c.FindObjectsFinal(sh)
			return nil, err
		}
		out = append(out, hs...)
		if len(hs) == 0 || (max > 0 && len(out) >= max) {
			break
		}
	}
	if err := c.FindObjectsFinal(sh); err != nil {
		return nil, err
	}
	return out, nil
}

// requireLogin returns CKR_USER_NOT_LOGGED_IN (a session-class error, so the caller logs in again and
// retries) when the session is not in a user state. A search that finds no private object means
// "not there" only when logged in.
func requireLogin(c *p11.Ctx, sh p11.SessionHandle) error {
	info, err := c.GetSessionInfo(sh)
	if err != nil {
		return err
	}
	if info.State != p11.CKS_RW_USER_FUNCTIONS && info.State != p11.CKS_RO_USER_FUNCTIONS {
		return p11.Error(p11.CKR_USER_NOT_LOGGED_IN)
	}
	return nil
}

// findPrivate finds the private key object with CKA_ID id.
func findPrivate(c *p11.Ctx, sh p11.SessionHandle, id []byte) ([]p11.ObjectHandle, error) {
	return findObjects(c, sh, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY),
		p11.NewAttribute(p11.CKA_ID, id),
	}, 2)
}

// lookupKey finds the key pair with CKA_ID id (when given) and CKA_LABEL label (when given).
func lookupKey(c *p11.Ctx, sh p11.SessionHandle, id []byte, label string) (keyInfo, error) {
	tmpl := []*p11.Attribute{p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY)}
	if id != nil {
		tmpl = append(tmpl, p11.NewAttribute(p11.CKA_ID, id))
	}
	if label != "" {
		tmpl = append(tmpl, p11.NewAttribute(p11.CKA_LABEL, label))
	}
	name := fmt.Sprintf("labelled %q", label)
	if id != nil {
		name = fmt.Sprintf("with id %x", id)
		if label != "" {
			name += fmt.Sprintf(" labelled %q", label)
		}
	}
	privs, err := findObjects(c, sh, tmpl, 2)
	if err != nil {
		return keyInfo{}, err
	}
	switch len(privs) {
	case 0:
		if err := requireLogin(c, sh); err != nil {
			return keyInfo{}, err
		}
		return keyInfo{}, keystore.Errorf(keystore.ErrNotFound, "no private key %s on the token", name)
	case 2:
		return keyInfo{}, keystore.Errorf(keystore.ErrBadURI, "several private keys %s on the token: address one by its id", name)
	}
	a, err := c.GetAttributeValue(sh, privs[0], []*p11.Attribute{
		p11.NewAttribute(p11.CKA_ID, nil), p11.NewAttribute(p11.CKA_LABEL, nil),
	})
	if err != nil {
		return keyInfo{}, err
	}
	k := keyInfo{id: a[0].Value, label: string(a[1].Value), priv: privs[0]}
	if len(k.id) == 0 {
		return keyInfo{}, keystore.Errorf(keystore.ErrUnsupportedAlgorithm, "private key %s has no CKA_ID, so its public half cannot be matched", name)
	}
	pubs, err := findObjects(c, sh, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PUBLIC_KEY),
		p11.NewAttribute(p11.CKA_ID, k.id),
	}, 2)
	if err != nil {
		return keyInfo{}, err
	}
	if len(pubs) != 1 {
		return keyInfo{}, keystore.Errorf(keystore.ErrCorrupt, "private key %s has %d public halves with its CKA_ID (want 1)", name, len(pubs))
	}
	k.pubH = pubs[0]
	if k.pub, err = readPublic(c, sh, k.pubH); err != nil {
		return keyInfo{}, err
	}
	return k, nil
}

// readPublic reads and decodes a public key object (CKA_KEY_TYPE, CKA_EC_PARAMS, CKA_EC_POINT).
func readPublic(c *p11.Ctx, sh p11.SessionHandle, h p11.ObjectHandle) (keystore.PublicKey, error) {
	a, err := c.GetAttributeValue(sh, h, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_KEY_TYPE, nil),
		p11.NewAttribute(p11.CKA_EC_PARAMS, nil),
		p11.NewAttribute(p11.CKA_EC_POINT, nil),
	})
	if err != nil {
		if isRV(err, p11.CKR_ATTRIBUTE_TYPE_INVALID) {
			return keystore.PublicKey{}, keystore.Errorf(keystore.ErrUnsupportedAlgorithm, "the key is not an elliptic-curve key")
		}
		return keystore.PublicKey{}, err
	}
	return decodePublic(ulong(a[0].Value), a[1].Value, a[2].Value)
}

func ulong(b []byte) uint {
	switch len(b) {
	case 8:
		return uint(binary.NativeEndian.Uint64(b))
	case 4:
		return uint(binary.NativeEndian.Uint32(b))
	}
	return ^uint(0)
}

// decodePublic turns CKA_EC_PARAMS and CKA_EC_POINT into a public key. CKA_EC_POINT is a DER OCTET
// STRING (what SoftHSM and the standard return) or, from some modules, the raw point.
func decodePublic(keyType uint, params, point []byte) (keystore.PublicKey, error) {
	switch {
	case keyType == ckkECEdwards && (bytes.Equal(params, oidEd25519) || bytes.Equal(params, printableEdwards255)):
		raw := unwrapOctets(point, ed25519.PublicKeySize)
		if raw == nil {
			return keystore.PublicKey{}, keystore.Errorf(keystore.ErrCorrupt, "Ed25519 CKA_EC_POINT of %d bytes", len(point))
		}
		return keystore.NewPublicKey(ed25519.PublicKey(raw))
	case keyType == p11.CKK_EC && bytes.Equal(params, oidP256):
		raw := unwrapOctets(point, 65)
		if raw == nil {
			return keystore.PublicKey{}, keystore.Errorf(keystore.ErrCorrupt, "P-256 CKA_EC_POINT of %d bytes", len(point))
		}
		pk, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
		if err != nil {
			return keystore.PublicKey{}, keystore.Errorf(keystore.ErrCorrupt, "P-256 CKA_EC_POINT: %v", err)
		}
		return keystore.NewPublicKey(pk)
	}
	return keystore.PublicKey{}, keystore.Errorf(keystore.ErrUnsupportedAlgorithm,
		"key type %#x with CKA_EC_PARAMS %x (only Ed25519 and P-256 are supported)", keyType, params)
}

// unwrapOctets returns the n-byte value of a DER OCTET STRING of n bytes, or b itself when it is
// already n bytes long.
func unwrapOctets(b []byte, n int) []byte {
	switch {
	case len(b) == n+2 && b[0] == 0x04 && int(b[1]) == n && n < 128:
		return b[2:]
	case len(b) == n:
		return b
	}
	return nil
}
