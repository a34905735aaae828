package keystore

import (
	"bytes"
	"fmt"
	"os"
	"strings"
)

// ReadSecret resolves a secret source: "file:/absolute/path" (or "file:relative") reads the file and
// drops one trailing newline; "env:NAME" reads the environment variable NAME. A secret is never taken
// from a literal value, so PINs and passphrases never appear on a command line. The caller zeroes the
// returned slice with Wipe when done.
func ReadSecret(source string) ([]byte, error) {
	kind, ref, ok := strings.Cut(source, ":")
	if !ok || ref == "" {
		return nil, fmt.Errorf("secret source %q: use file:/path/to/file or env:VARIABLE", source)
	}
	switch kind {
	case "file":
		path := strings.TrimPrefix(ref, "//")
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read secret file %s: %w", path, err)
		}
		b = bytes.TrimSuffix(b, []byte("\n"))
		b = bytes.TrimSuffix(b, []byte("\r"))
		if len(b) == 0 {
			return nil, fmt.Errorf("secret file %s is empty", path)
		}
		return b, nil
	case "env":
		v, ok := os.LookupEnv(ref)
		if !ok || v == "" {
			return nil, fmt.Errorf("environment variable %s (named as a secret source) is not set", ref)
		}
		return []byte(v), nil
	}
	return nil, fmt.Errorf("secret source %q: unknown kind %q; use file:/path or env:NAME", source, kind)
}

// Wipe overwrites b with zeros.
func Wipe(b []byte) { clear(b) }
