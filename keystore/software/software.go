// Package software is the development keystore: Ed25519 and P-256 private keys kept in passphrase-encrypted
// files (PKCS#8 inside an age file with an scrypt recipient). It exists for development and for hosts
// without hardware; Info().HardwareBacked is false and the CLI says so on every use.
//
// URIs:
//
//	keystore: file:/abs/dir?passphrase-source=file:/path|env:NAME[&work-factor=N]
//	key:      file:/abs/dir/<label>.key?passphrase-source=...
//
// The passphrase comes from the URI's passphrase-source, else from OpenOptions.Prompt, else the operation
// that needs it fails with a message naming what to configure. Key files are 0600 in a 0700 directory,
// written atomically (temporary file, fsync, link into place, fsync of the directory).
package software

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/custos-agent/custos/internal/atomicfile"
	"github.com/custos-agent/custos/keystore"
)

// Backend is the name in Info().Backend.
const Backend = "software"

// Keystore is a directory of encrypted key files. It is safe for concurrent use.
type Keystore struct {
	loc    location
	prompt func(string) ([]byte, error)
	log    *slog.Logger

	mu      sync.Mutex
	closed  bool
	pass    []byte             // the passphrase, once read; wiped on Close or when found wrong
	signers map[string]*signer // decrypted keys by label, so scrypt runs once per key per process
}

var _ keystore.Keystore = (*Keystore)(nil)

// Open opens the software keystore named by uri (a keystore URI or a key URI; a key URI opens the
// keystore of its directory). Opening changes nothing on disk: a missing directory is created (0700) by
// the first Generate. No passphrase is read until an operation needs one (Generate, Signer).
func Open(ctx context.Context, uri string, opts keystore.OpenOptions) (keystore.Keystore, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	loc, err := parseURI(uri)
	if err != nil {
		return nil, err
	}
	loc.label = ""
	if loc.workFactor == 0 {
		loc.workFactor = DefaultWorkFactor
	}
	fi, err := os.Stat(loc.dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Made by the first Generate: opening changes nothing on disk.
	case err != nil:
		return nil, keystore.Errorf(keystore.ErrUnavailable, "software keystore directory %s: %v", loc.dir, err)
	case !fi.IsDir():
		return nil, keystore.Errorf(keystore.ErrBadURI, "software keystore %s is not a directory", loc.dir)
	case fi.Mode().Perm()&0o077 != 0:
		opts.Log().Warn("software keystore directory is accessible to other users; chmod 700 it", "dir", loc.dir, "mode", fi.Mode().Perm().String())
	}
	return &Keystore{loc: loc, prompt: opts.Prompt, log: opts.Log(), signers: map[string]*signer{}}, nil
}

// Info implements keystore.Keystore.
func (k *Keystore) Info() keystore.Info {
	return keystore.Info{
		Backend:        Backend,
		HardwareBacked: false,
		URI:            k.publicLoc().keystoreURI(),
		Algorithms:     []keystore.Algorithm{keystore.Ed25519, keystore.P256},
	}
}

// publicLoc is the keystore location as shown to users: the default work factor is left out.
func (k *Keystore) publicLoc() location {
	l := k.loc
	if l.workFactor == DefaultWorkFactor {
		l.workFactor = 0
	}
	return l
}

// Dir is the directory holding the key files.
func (k *Keystore) Dir() string { return k.loc.dir }

func (k *Keystore) path(label string) string { return filepath.Join(k.loc.dir, label+KeyFileSuffix) }

// label resolves a key URI to a label of this keystore.
func (k *Keystore) label(keyURI string) (string, error) {
	loc, err := parseURI(keyURI)
	if err != nil {
		return "", err
	}
	if loc.label == "" {
		return "", keystore.Errorf(keystore.ErrBadURI, "%s names a keystore directory, not a key (want file:%s/<label>.key)", redact(keyURI), loc.dir)
	}
	if loc.dir != k.loc.dir {
		return "", keystore.Errorf(keystore.ErrNotFound, "key %s is not in the software keystore %s", redact(keyURI), k.loc.dir)
	}
	return loc.label, nil
}

func (k *Keystore) checkOpen() error {
	if k.closed {
		return keystore.Errorf(keystore.ErrClosed, "software keystore %s", k.loc.dir)
	}
	return nil
}

// passphrase returns the passphrase (read once; the keystore keeps it until Close). Called with k.mu held.
func (k *Keystore) passphrase() ([]byte, error) {
	if k.pass != nil {
		return k.pass, nil
	}
	var (
		p   []byte
		err error
	)
	switch {
	case k.loc.passSource != "":
		p, err = keystore.ReadSecretLog(k.loc.passSource, k.log)
		if err != nil {
			return nil, keystore.Errorf(keystore.SecretErrorKind(err), "passphrase of software keystore %s: %v", k.loc.dir, err)
		}
	case k.prompt != nil:
		p, err = k.prompt(PromptText(k.loc.dir))
		if err != nil {
			return nil, fmt.Errorf("read passphrase: %w", err)
		}
	default:
		return nil, keystore.Errorf(keystore.ErrWrongSecret, "software keystore %s needs a passphrase and none was given: set passphrase-source=file:/path or env:NAME in its URI (agentctl: --passphrase-file FILE or CUSTOS_PASSPHRASE), or run on a terminal to be asked", k.loc.dir)
	}
	if len(p) == 0 {
		return nil, keystore.Errorf(keystore.ErrWrongSecret, "the passphrase for software keystore %s is empty", k.loc.dir)
	}
	k.pass = p
	return p, nil
}

func (k *Keystore) forgetPassphrase() {
	keystore.Wipe(k.pass)
	k.pass = nil
}

// Generate implements keystore.Keystore.
func (k *Keystore) Generate(ctx context.Context, req keystore.GenerateRequest) (keystore.Key, error) {
	if err := ctx.Err(); err != nil {
		return keystore.Key{}, err
	}
	if !labelRE.MatchString(req.Label) {
		return keystore.Key{}, keystore.Errorf(keystore.ErrBadURI, "label %q: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit", req.Label)
	}
	var priv crypto.Signer
	switch req.Algorithm {
	case keystore.Ed25519:
		_, p, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return keystore.Key{}, err
		}
		priv = p
	case keystore.P256:
		p, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return keystore.Key{}, err
		}
		priv = p
	default:
		return keystore.Key{}, keystore.Errorf(keystore.ErrUnsupportedAlgorithm, "the software keystore makes ed25519 and p256 keys, not %q", req.Algorithm)
	}
	pub, err := keystore.NewPublicKey(priv.Public())
	if err != nil {
		return keystore.Key{}, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.checkOpen(); err != nil {
		wipePrivate(priv)
		return keystore.Key{}, err
	}
	path := k.path(req.Label)
	if _, err := os.Lstat(path); err == nil {
		wipePrivate(priv)
		return keystore.Key{}, keystore.Errorf(keystore.ErrExists, "a key labelled %q already exists (%s)", req.Label, path)
	}
	pass, err := k.passphrase()
	if err != nil {
		wipePrivate(priv)
		return keystore.Key{}, err
	}
	data, err := sealKey(priv, pub, pass, k.loc.workFactor)
	if err != nil {
		wipePrivate(priv)
		return keystore.Key{}, err
	}
	if err := os.MkdirAll(k.loc.dir, 0o700); err != nil {
		wipePrivate(priv)
		return keystore.Key{}, keystore.Errorf(keystore.ErrUnavailable, "create software keystore directory %s: %v", k.loc.dir, err)
	}
	if err := atomicfile.Create(path, data); err != nil {
		wipePrivate(priv)
		if errors.Is(err, fs.ErrExist) {
			return keystore.Key{}, keystore.Errorf(keystore.ErrExists, "a key labelled %q already exists (%s)", req.Label, path)
		}
		return keystore.Key{}, keystore.Errorf(keystore.ErrUnavailable, "write key file %s: %v", path, err)
	}
	// Keep the fresh key as a ready signer: no need to run scrypt again to use it in this process.
	s, err := k.newSigner(req.Label, priv, pub)
	if err != nil {
		return keystore.Key{}, err
	}
	k.signers[req.Label] = s
	k.log.Debug("software key generated", "label", req.Label, "alg", req.Algorithm)
	return keystore.Key{URI: k.loc.keyURI(req.Label), Label: req.Label, Public: pub}, nil
}

// readHeader reads a key file and parses its header.
func (k *Keystore) readFile(label string) (header, []byte, error) {
	path := k.path(label)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return header{}, nil, keystore.Errorf(keystore.ErrNotFound, "no key labelled %q in the software keystore %s", label, k.loc.dir)
	}
	if err != nil {
		return header{}, nil, keystore.Errorf(keystore.ErrUnavailable, "open key file %s: %v", path, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
		k.log.Warn("software key file is accessible to other users; chmod 600 it", "file", path, "mode", fi.Mode().Perm().String())
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return header{}, nil, keystore.Errorf(keystore.ErrUnavailable, "read key file %s: %v", path, err)
	}
	if len(data) > maxFileSize {
		return header{}, nil, keystore.Errorf(keystore.ErrCorrupt, "key file %s is larger than %d bytes: not a software key file", path, maxFileSize)
	}
	h, ct, err := splitFile(data)
	if err != nil {
		return header{}, nil, keystore.Errorf(keystore.ErrCorrupt, "key file %s is damaged: %v; restore it from a backup or recover the identity", path, err)
	}
	return h, ct, nil
}

// PublicKey implements keystore.Keystore. It reads the file's header (no passphrase needed); Signer
// authenticates that header against the decrypted private key.
func (k *Keystore) PublicKey(ctx context.Context, keyURI string) (keystore.PublicKey, error) {
	if err := ctx.Err(); err != nil {
		return keystore.PublicKey{}, err
	}
	label, err := k.label(keyURI)
	if err != nil {
		return keystore.PublicKey{}, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.checkOpen(); err != nil {
		return keystore.PublicKey{}, err
	}
	if s, ok := k.signers[label]; ok {
		return s.pub, nil
	}
	h, _, err := k.readFile(label)
	if err != nil {
		return keystore.PublicKey{}, err
	}
	return h.pub, nil
}

// Signer implements keystore.Keystore: it decrypts the key file (the passphrase is needed) and checks
// that the header's public key is the private key's public half.
func (k *Keystore) Signer(ctx context.Context, keyURI string) (keystore.Signer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	label, err := k.label(keyURI)
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.checkOpen(); err != nil {
		return nil, err
	}
	if s, ok := k.signers[label]; ok {
		return s, nil
	}
	h, ct, err := k.readFile(label)
	if err != nil {
		return nil, err
	}
	pass, err := k.passphrase()
	if err != nil {
		return nil, err
	}
	priv, err := openKey(h, ct, pass)
	if errors.Is(err, errPassphrase) {
		k.forgetPassphrase()
		return nil, keystore.Errorf(keystore.ErrWrongSecret, "the passphrase does not decrypt key file %s: check --passphrase-file / CUSTOS_PASSPHRASE / passphrase-source", k.path(label))
	}
	if err != nil {
		return nil, keystore.Errorf(keystore.ErrCorrupt, "key file %s is damaged: %v; restore it from a backup or recover the identity", k.path(label), err)
	}
	s, err := k.newSigner(label, priv, h.pub)
	if err != nil {
		return nil, err
	}
	k.signers[label] = s
	return s, nil
}

func (k *Keystore) newSigner(label string, priv crypto.Signer, pub keystore.PublicKey) (*signer, error) {
	inner, err := keystore.NewMemorySigner(priv)
	if err != nil {
		wipePrivate(priv)
		return nil, err
	}
	return &signer{ks: k, label: label, priv: priv, pub: pub, inner: inner}, nil
}

// Destroy implements keystore.Keystore: the key file is removed (and the directory fsynced). The bytes
// may survive on the disk; they are encrypted under the passphrase.
func (k *Keystore) Destroy(ctx context.Context, keyURI string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	label, err := k.label(keyURI)
	if err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.checkOpen(); err != nil {
		return err
	}
	if s, ok := k.signers[label]; ok {
		s.wipe()
		delete(k.signers, label)
	}
	path := k.path(label)
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return keystore.Errorf(keystore.ErrNotFound, "no key labelled %q in the software keystore %s", label, k.loc.dir)
		}
		return keystore.Errorf(keystore.ErrUnavailable, "remove key file %s: %v", path, err)
	}
	if err := atomicfile.SyncDir(k.loc.dir); err != nil {
		return keystore.Errorf(keystore.ErrUnavailable, "fsync %s after removing %s: %v", k.loc.dir, path, err)
	}
	return nil
}

// List implements keystore.Keystore. Files that are not valid key files are logged and left out.
func (k *Keystore) List(ctx context.Context) ([]keystore.Key, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.checkOpen(); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(k.loc.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // no key made yet
	}
	if err != nil {
		return nil, keystore.Errorf(keystore.ErrUnavailable, "list software keystore %s: %v", k.loc.dir, err)
	}
	var out []keystore.Key
	for _, e := range entries {
		name := e.Name()
		label, ok := strings.CutSuffix(name, KeyFileSuffix)
		if !ok || !e.Type().IsRegular() || !labelRE.MatchString(label) {
			continue
		}
		h, _, err := k.readFile(label)
		if err != nil {
			k.log.Warn("skipping unreadable key file", "file", filepath.Join(k.loc.dir, name), "err", err)
			continue
		}
		out = append(out, keystore.Key{URI: k.loc.keyURI(label), Label: label, Public: h.pub})
	}
	slices.SortFunc(out, func(a, b keystore.Key) int { return strings.Compare(a.Label, b.Label) })
	return out, nil
}

// Close wipes the passphrase and the decrypted keys; signers stop working.
func (k *Keystore) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil
	}
	k.closed = true
	k.forgetPassphrase()
	for label, s := range k.signers {
		s.wipe()
		delete(k.signers, label)
	}
	return nil
}

// signer is a decrypted key. It stops working when its keystore is closed or the key destroyed.
type signer struct {
	ks    *Keystore
	label string
	pub   keystore.PublicKey

	mu    sync.RWMutex
	priv  crypto.Signer
	inner keystore.Signer
}

func (s *signer) Public() keystore.PublicKey { return s.pub }

func (s *signer) Sign(ctx context.Context, message []byte) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.inner == nil {
		return nil, keystore.Errorf(keystore.ErrClosed, "software key %q was destroyed or its keystore closed", s.label)
	}
	return s.inner.Sign(ctx, message)
}

func (s *signer) wipe() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.priv != nil {
		wipePrivate(s.priv)
	}
	s.priv, s.inner = nil, nil
}

// PromptText is what the keystore in dir passes to OpenOptions.Prompt when it needs the passphrase.
func PromptText(dir string) string { return "passphrase for the software keystore " + dir }
