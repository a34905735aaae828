package software

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"

	"filippo.io/age"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/scrypt"

	"github.com/custos-agent/custos/keystore"
)

// Key file format (docs/adr/0001): a small unencrypted header naming the algorithm and the public key,
// a blank line, then an age file (age-encryption.org/v1) with exactly one scrypt recipient whose plaintext
// is the PKCS#8 DER private key:
//
//	custos-software-key v1
//	algorithm: ed25519
//	public-key: <base64url of keystore.PublicKey.Bytes>
//	<empty line>
//	age-encryption.org/v1
//	-> scrypt <salt> <log2 N>
//	...
//
// The header lets List and PublicKey work without the passphrase. It is authenticated when the key is
// loaded: the decrypted private key's public half must equal it, or the file is refused as corrupt.

const (
	magicLine   = "custos-software-key v1"
	maxFileSize = 64 << 10
	maxPlain    = 4 << 10
	scryptLabel = "age-encryption.org/v1/scrypt" // age's own scrypt stanza label
	saltSize    = 16
)

var b64 = base64.RawURLEncoding.Strict()

// header is the unencrypted part of a key file.
type header struct {
	alg keystore.Algorithm
	pub keystore.PublicKey
}

func (h header) encode() []byte {
	return fmt.Appendf(nil, "%s\nalgorithm: %s\npublic-key: %s\n\n", magicLine, h.alg, b64.EncodeToString(h.pub.Bytes()))
}

// errFormat is a key file that does not parse; the caller names the file and wraps ErrCorrupt.
type errFormat string

func (e errFormat) Error() string { return string(e) }

// splitFile parses the header and returns it with the age ciphertext.
func splitFile(data []byte) (header, []byte, error) {
	lines := make([][]byte, 0, 4)
	rest := data
	for i := 0; i < 4; i++ {
		line, after, ok := bytes.Cut(rest, []byte("\n"))
		if !ok {
			return header{}, nil, errFormat("the header is truncated")
		}
		lines = append(lines, line)
		rest = after
	}
	if string(lines[0]) != magicLine {
		return header{}, nil, errFormat("it does not start with \"" + magicLine + "\"")
	}
	algText, ok := bytes.CutPrefix(lines[1], []byte("algorithm: "))
	if !ok {
		return header{}, nil, errFormat("the header has no algorithm line")
	}
	alg, err := keystore.ParseAlgorithm(string(algText))
	if err != nil {
		return header{}, nil, errFormat("the header names an unknown algorithm")
	}
	pubText, ok := bytes.CutPrefix(lines[2], []byte("public-key: "))
	if !ok {
		return header{}, nil, errFormat("the header has no public-key line")
	}
	raw, err := b64.DecodeString(string(pubText))
	if err != nil {
		return header{}, nil, errFormat("the header's public key is not base64url")
	}
	pub, err := keystore.ParsePublicKey(alg, raw)
	if err != nil {
		return header{}, nil, errFormat("the header's public key is invalid: " + err.Error())
	}
	if len(lines[3]) != 0 {
		return header{}, nil, errFormat("the header does not end with an empty line")
	}
	if len(rest) == 0 {
		return header{}, nil, errFormat("the encrypted key is missing (truncated file)")
	}
	return header{alg: alg, pub: pub}, rest, nil
}

// sealKey encrypts the PKCS#8 encoding of priv under pass and returns the whole key file.
func sealKey(priv crypto.Signer, pub keystore.PublicKey, pass []byte, workFactor int) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	defer keystore.Wipe(der)
	var out bytes.Buffer
	out.Write(header{alg: pub.Algorithm, pub: pub}.encode())
	w, err := age.Encrypt(&out, &scryptRecipient{pass: pass, workFactor: workFactor})
	if err != nil {
		return nil, fmt.Errorf("encrypt private key: %w", err)
	}
	if _, err := w.Write(der); err != nil {
		return nil, fmt.Errorf("encrypt private key: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("encrypt private key: %w", err)
	}
	return out.Bytes(), nil
}

// errPassphrase is returned by openKey when the passphrase does not unwrap the file key.
var errPassphrase = errors.New("wrong passphrase")

// openKey decrypts a key file's ciphertext and checks it against the header. It returns errPassphrase
// for a wrong passphrase and an errFormat for anything else wrong.
func openKey(h header, ciphertext, pass []byte) (crypto.Signer, error) {
	r, err := age.Decrypt(bytes.NewReader(ciphertext), &scryptIdentity{pass: pass})
	if err != nil {
		var noMatch *age.NoIdentityMatchError
		if errors.As(err, &noMatch) {
			return nil, errPassphrase
		}
		return nil, errFormat("the encrypted key does not parse: " + err.Error())
	}
	der, err := io.ReadAll(io.LimitReader(r, maxPlain+1))
	defer keystore.Wipe(der)
	if err != nil {
		return nil, errFormat("the encrypted key is damaged or truncated: " + err.Error())
	}
	if len(der) > maxPlain {
		return nil, errFormat("the decrypted key is too large")
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, errFormat("the decrypted key is not PKCS#8: " + err.Error())
	}
	var priv crypto.Signer
	switch k := k.(type) {
	case ed25519.PrivateKey:
		priv = k
	case *ecdsa.PrivateKey:
		priv = k
	default:
		return nil, errFormat(fmt.Sprintf("the decrypted key is a %T, not ed25519 or p256", k))
	}
	pub, err := keystore.NewPublicKey(priv.Public())
	if err != nil {
		return nil, errFormat("the decrypted key: " + err.Error())
	}
	if pub.Algorithm != h.alg || !pub.Equal(h.pub) {
		wipePrivate(priv)
		return nil, errFormat("the header's public key is not the public half of the encrypted private key (tampered header)")
	}
	return priv, nil
}

// wipePrivate zeroes what can be zeroed of a private key (the Ed25519 seed and key bytes; the
// big.Int of an ECDSA key cannot be wiped reliably and is left to the garbage collector).
func wipePrivate(k crypto.Signer) {
	if e, ok := k.(ed25519.PrivateKey); ok {
		keystore.Wipe(e)
	}
}

// scryptRecipient is age's scrypt recipient ("-> scrypt <salt> <log2 N>", the file key sealed with
// ChaCha20-Poly1305 under scrypt(passphrase, "age-encryption.org/v1/scrypt" || salt, N, 8, 1)), written
// here so that the passphrase and the derived key stay in buffers this package zeroes. Files it makes
// are ordinary age files: the tests decrypt them with age.ScryptIdentity and vice versa.
type scryptRecipient struct {
	pass       []byte
	workFactor int
}

// Wrap implements age.Recipient.
func (r *scryptRecipient) Wrap(fileKey []byte) ([]*age.Stanza, error) {
	salt := make([]byte, saltSize)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	key, err := scrypt.Key(r.pass, append([]byte(scryptLabel), salt...), 1<<r.workFactor, 8, 1, chacha20poly1305.KeySize)
	if err != nil {
		return nil, fmt.Errorf("scrypt: %w", err)
	}
	defer keystore.Wipe(key)
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		return nil, err
	}
	body := aead.Seal(nil, make([]byte, chacha20poly1305.NonceSize), fileKey, nil)
	return []*age.Stanza{{
		Type: "scrypt",
		Args: []string{base64.RawStdEncoding.EncodeToString(salt), strconv.Itoa(r.workFactor)},
		Body: body,
	}}, nil
}

// WrapWithLabels implements age.RecipientWithLabels with a random label, as age's own scrypt recipient
// does, so that it cannot be mixed with other recipients.
func (r *scryptRecipient) WrapWithLabels(fileKey []byte) ([]*age.Stanza, []string, error) {
	s, err := r.Wrap(fileKey)
	if err != nil {
		return nil, nil, err
	}
	l := make([]byte, 16)
	if _, err := rand.Read(l); err != nil {
		return nil, nil, err
	}
	return s, []string{fmt.Sprintf("%x", l)}, nil
}

// scryptIdentity unwraps what scryptRecipient (or age's ScryptRecipient) wrapped.
type scryptIdentity struct{ pass []byte }

var workFactorRE = regexp.MustCompile(`^[1-9][0-9]?$`)

// Unwrap implements age.Identity.
func (i *scryptIdentity) Unwrap(stanzas []*age.Stanza) ([]byte, error) {
	if len(stanzas) != 1 || stanzas[0].Type != "scrypt" {
		return nil, errors.New("a software key file must have exactly one scrypt (passphrase) recipient")
	}
	s := stanzas[0]
	if len(s.Args) != 2 {
		return nil, errors.New("invalid scrypt recipient block")
	}
	salt, err := base64.RawStdEncoding.Strict().DecodeString(s.Args[0])
	if err != nil || len(salt) != saltSize {
		return nil, errors.New("invalid scrypt salt")
	}
	if !workFactorRE.MatchString(s.Args[1]) {
		return nil, fmt.Errorf("invalid scrypt work factor %q", s.Args[1])
	}
	logN, _ := strconv.Atoi(s.Args[1])
	if logN < MinWorkFactor {
		// Creation never goes below the floor; a file below it was rewrapped by someone else, and its
		// passphrase would be cheap to guess offline.
		return nil, fmt.Errorf("scrypt work factor %d is below the minimum of %d that keys are made with: this file was not written by Custos with a safe setting; rewrap it with work factor %d or more, or make a new key", logN, MinWorkFactor, MinWorkFactor)
	}
	if logN > MaxWorkFactor {
		return nil, fmt.Errorf("scrypt work factor %d exceeds the limit of %d", logN, MaxWorkFactor)
	}
	key, err := scrypt.Key(i.pass, append([]byte(scryptLabel), salt...), 1<<logN, 8, 1, chacha20poly1305.KeySize)
	if err != nil {
		return nil, fmt.Errorf("scrypt: %w", err)
	}
	defer keystore.Wipe(key)
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		return nil, err
	}
	const fileKeySize = 16
	if len(s.Body) != fileKeySize+aead.Overhead() {
		return nil, errors.New("invalid scrypt recipient block: wrong file key size")
	}
	fileKey, err := aead.Open(nil, make([]byte, chacha20poly1305.NonceSize), s.Body, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: incorrect passphrase", age.ErrIncorrectIdentity)
	}
	return fileKey, nil
}
