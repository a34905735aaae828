package keystore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/custos-agent/custos/internal/fileperm"
)

// MaxSecretSize bounds a secret file: a PIN or passphrase is far shorter, and a source that names the
// wrong file (a log, a device) must not be read without bound.
const MaxSecretSize = 4096

// ReadSecret resolves a secret source: "file:/absolute/path" reads the file and drops one trailing
// newline; "env:NAME" reads the environment variable NAME. A secret is never taken from a literal
// value, so PINs and passphrases never appear on a command line. The caller zeroes the returned slice
// with Wipe when done. A secret file other users may read is refused (fileperm.ErrExposed: the message
// names the chmod); one its group may read is a warning, to slog's default logger; use
// ReadSecretLog to name the logger.
func ReadSecret(source string) ([]byte, error) { return ReadSecretLog(source, nil) }

// ReadSecretLog is ReadSecret logging to log (nil: slog.Default()).
//
// A file source must be an absolute path (a relative one would depend on the directory the agent happens
// to run in), at most MaxSecretSize bytes. A regular file that its group or others may read is still
// read, with a warning naming it: refusing would stop an agent whose secrets a provisioning system
// mounts 0640 or 0644 (Kubernetes secret volumes default to 0644), and the warning is logged at every
// read until the mode is fixed.
func ReadSecretLog(source string, log *slog.Logger) ([]byte, error) {
	kind, ref, ok := strings.Cut(source, ":")
	if !ok || ref == "" {
		return nil, fmt.Errorf("secret source %q: use file:/path/to/file or env:VARIABLE", source)
	}
	switch kind {
	case "file":
		return readSecretFile(strings.TrimPrefix(ref, "//"), log)
	case "env":
		v, ok := os.LookupEnv(ref)
		if !ok || v == "" {
			return nil, fmt.Errorf("environment variable %s (named as a secret source) is not set", ref)
		}
		return []byte(v), nil
	}
	return nil, fmt.Errorf("secret source %q: unknown kind %q; use file:/path or env:NAME", source, kind)
}

func readSecretFile(path string, log *slog.Logger) ([]byte, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("secret file %q is a relative path: write file:/absolute/path (a relative path would depend on the directory the agent runs in)", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read secret file %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read secret file %s: %w", path, err)
	}
	// Other users' access refuses the secret; its group's is a warning (issue 18, defect 9).
	warning, err := fileperm.CheckSecret(path, fi)
	if err != nil {
		return nil, err
	}
	if warning != "" {
		if log == nil {
			log = slog.Default()
		}
		log.Warn("file permissions: " + warning)
	}
	buf := make([]byte, MaxSecretSize+1) // one buffer, so that Wipe reaches every copy
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		Wipe(buf)
		return nil, fmt.Errorf("read secret file %s: %w", path, err)
	}
	b := buf[:n]
	if n > MaxSecretSize {
		Wipe(buf)
		return nil, fmt.Errorf("secret file %s is larger than %d bytes: it is not a PIN or passphrase (check the path)", path, MaxSecretSize)
	}
	b = bytes.TrimSuffix(b, []byte("\n"))
	b = bytes.TrimSuffix(b, []byte("\r"))
	if len(b) == 0 {
		return nil, fmt.Errorf("secret file %s is empty", path)
	}
	return b, nil
}

// Wipe overwrites b with zeros.
func Wipe(b []byte) { clear(b) }

// SecretErrorKind is the kind (ErrWrongSecret, ErrUnavailable) of a failure to read a secret source: a
// secret file other users may read (fileperm.ErrExposed) is refused before it is tried, so it is no wrong
// secret (and no wrong-PIN attempt to audit).
func SecretErrorKind(err error) error {
	if errors.Is(err, fileperm.ErrExposed) {
		return ErrUnavailable
	}
	return ErrWrongSecret
}
