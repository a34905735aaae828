// Package atrest keeps the data key that seals the agent's state at rest (ADR 0098): a random 32-byte
// key, wrapped by the identity's keystore (keystore.DataKeyWrapper: the TPM, the token, the software
// keystore's passphrase) and kept in the home as state.key. The first start makes it; every start
// unwraps it and hands a sealbox.Box to the stores of state.db (and the audit log); the plaintext key is
// wiped as soon as the Box holds it. A home copied to a machine without the keystore opens nothing.
//
// state.key is
//
//	custos-state-key v1
//	keystore: <the wrapping keystore's URI, without its query: no secret>
//	<empty line>
//	<the keystore's wrapped blob>
//
// 0600, written atomically once and never rewritten; a file the group or other users can read is refused.
package atrest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/custos-agent/custos/internal/atomicfile"
	"github.com/custos-agent/custos/internal/fileperm"
	"github.com/custos-agent/custos/internal/sealbox"
	"github.com/custos-agent/custos/keystore"
)

// File is the data key's file name in the home.
const File = "state.key"

const (
	magicLine = "custos-state-key v1"
	maxFile   = 64 << 10
)

// ErrSealedElsewhere: state.key does not unwrap with this keystore (another TPM, token or passphrase).
var ErrSealedElsewhere = errors.New("the agent's state is sealed to another keystore")

// ErrNoWrapper: the identity's keystore cannot wrap a data key.
var ErrNoWrapper = errors.New("the keystore cannot wrap a data key")

// Open returns the Box for the home's state: it unwraps path (the home's state.key) with w, or makes a
// fresh data key and writes its wrap there when the file does not exist. keystoreURI names w in the file
// and in errors (its query, which may name a PIN source, is left out).
func Open(ctx context.Context, path string, w keystore.DataKeyWrapper, keystoreURI string) (*sealbox.Box, error) {
	if w == nil {
		return nil, ErrNoWrapper
	}
	ksName := redact(keystoreURI)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return create(ctx, path, w, ksName)
	}
	if err != nil {
		return nil, fmt.Errorf("read the state data key: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("state data key: %w", err)
	}
	if fileperm.Open(fi.Mode()) {
		return nil, fmt.Errorf("the state data key %s has mode %04o: it must be readable by the agent only (%s)", path, fi.Mode().Perm(), fileperm.Fix(path, fi.Mode()))
	}
	sealedTo, blob, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s is not a Custos state data key (%v): restore it from the backup of this home", path, err)
	}
	dk, err := w.UnwrapDataKey(ctx, blob)
	if err != nil {
		return nil, fmt.Errorf("%w: %s was wrapped by %s and %s cannot unwrap it (%v). Start the agent with that keystore (its TPM, token or passphrase), or restore the home from a backup made with this one (docs/backup.md); without it the state (peer cache, tasks, grants) cannot be read",
			ErrSealedElsewhere, path, sealedTo, ksName, err)
	}
	defer keystore.Wipe(dk)
	return sealbox.New(dk)
}

func create(ctx context.Context, path string, w keystore.DataKeyWrapper, ksName string) (*sealbox.Box, error) {
	dk := sealbox.NewKey()
	defer keystore.Wipe(dk)
	blob, err := w.WrapDataKey(ctx, dk)
	if err != nil {
		return nil, fmt.Errorf("wrap the state data key with %s: %w", ksName, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("state data key directory: %w", err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\nkeystore: %s\n\n", magicLine, ksName)
	b.Write(blob)
	if err := atomicfile.Create(path, b.Bytes()); err != nil {
		if errors.Is(err, fs.ErrExist) { // another process made it first: use that one
			return Open(ctx, path, w, ksName)
		}
		return nil, fmt.Errorf("write the state data key: %w", err)
	}
	return sealbox.New(dk)
}

// parse splits state.key into the keystore it names and the blob.
func parse(data []byte) (sealedTo string, blob []byte, err error) {
	if len(data) > maxFile {
		return "", nil, errors.New("too large")
	}
	head, blob, ok := bytes.Cut(data, []byte("\n\n"))
	if !ok || len(blob) == 0 {
		return "", nil, errors.New("truncated")
	}
	lines := strings.Split(string(head), "\n")
	if len(lines) != 2 || lines[0] != magicLine {
		return "", nil, fmt.Errorf("it does not start with %q", magicLine)
	}
	sealedTo, ok = strings.CutPrefix(lines[1], "keystore: ")
	if !ok {
		return "", nil, errors.New("no keystore line")
	}
	return sealedTo, blob, nil
}

// redact drops a URI's query (pin-source, passphrase-source: names of secrets, kept out of files).
func redact(uri string) string {
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		return uri[:i]
	}
	return uri
}

// Source gives the keystore that wraps the data key: the identity's (custody.Custody).
type Source interface {
	DataKeyWrapper(ctx context.Context) (keystore.DataKeyWrapper, string, error)
}

// ForHome returns the Box for the state in home, with the data key wrapped by src's keystore. When that
// keystore cannot wrap a data key and the home has no state.key, it returns nil (the state stays in the
// clear) and logs a warning that says so; a home with a state.key and no wrapper is an error.
func ForHome(ctx context.Context, home string, src Source, log *slog.Logger) (*sealbox.Box, error) {
	w, uri, err := src.DataKeyWrapper(ctx)
	if err != nil {
		return nil, fmt.Errorf("the keystore for the state data key: %w", err)
	}
	path := filepath.Join(home, File)
	if w == nil {
		if _, err := os.Stat(path); err == nil {
			return nil, fmt.Errorf("%w: %s is sealed but the identity's keystore %s cannot unwrap a data key; start the agent with the keystore that wrapped it, or restore the home from a backup (docs/backup.md)", ErrSealedElsewhere, path, redact(uri))
		}
		log.Warn("the state is kept in the clear: the identity's keystore cannot wrap a data key (ADR 0098)", "keystore", redact(uri))
		return nil, nil
	}
	return Open(ctx, path, w, uri)
}
