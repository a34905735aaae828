package software

import (
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/custos-agent/custos/keystore"
)

// Scheme is the URI scheme of the software backend.
const Scheme = "file"

// KeyFileSuffix ends the name of every key file: <dir>/<label>.key.
const KeyFileSuffix = ".key"

// Work factors of the scrypt passphrase KDF, as log2(N). DefaultWorkFactor is age's own default
// (about one second and 256 MiB per key operation); MinWorkFactor exists for tests and is also the floor a
// key file must meet when it is read, MaxWorkFactor caps what a key file may demand when it is read.
const (
	DefaultWorkFactor = 18
	MinWorkFactor     = 10
	MaxWorkFactor     = 22
)

// labelRE is what a label may look like: it becomes a file name.
var labelRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// location is a parsed software URI: a keystore directory, and a key label when the URI names a key.
type location struct {
	dir        string
	label      string // "" for a keystore URI
	passSource string // "file:/p" or "env:NAME"; "" when the URI names none
	workFactor int    // 0 when the URI names none
}

// parseURI parses a keystore URI "file:/abs/dir?..." or a key URI "file:/abs/dir/<label>.key?...".
// Query attributes: passphrase-source (file:/path or env:NAME) and work-factor (scrypt log2 N for new keys).
func parseURI(s string) (location, error) {
	rest, ok := strings.CutPrefix(s, Scheme+":")
	if !ok {
		return location{}, keystore.Errorf(keystore.ErrBadURI, "%q is not a software keystore URI: want file:/absolute/dir or file:/absolute/dir/<label>.key", redact(s))
	}
	pathPart, query, _ := strings.Cut(rest, "?")
	pathPart = strings.TrimPrefix(pathPart, "//") // file:///abs is file:/abs with an empty authority
	p, err := url.PathUnescape(pathPart)
	if err != nil {
		return location{}, keystore.Errorf(keystore.ErrBadURI, "software URI %q: bad escape in the path: %v", redact(s), err)
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.ContainsRune(p, 0) {
		return location{}, keystore.Errorf(keystore.ErrBadURI, "software URI %q: the path must be absolute and clean (like file:/home/op/.custos/keys)", redact(s))
	}
	loc := location{dir: p}
	if base := filepath.Base(p); strings.HasSuffix(base, KeyFileSuffix) {
		label := strings.TrimSuffix(base, KeyFileSuffix)
		if !labelRE.MatchString(label) {
			return location{}, keystore.Errorf(keystore.ErrBadURI, "software key URI %q: %q is not a valid label (letters, digits, '.', '_', '-')", redact(s), label)
		}
		loc.dir, loc.label = filepath.Dir(p), label
	}
	seen := map[string]bool{}
	for _, part := range strings.Split(query, "&") {
		if part == "" {
			continue
		}
		name, value, ok := strings.Cut(part, "=")
		if !ok {
			return location{}, keystore.Errorf(keystore.ErrBadURI, "software URI %q: query attribute %q is not name=value", redact(s), part)
		}
		if seen[name] {
			return location{}, keystore.Errorf(keystore.ErrBadURI, "software URI %q: attribute %s given twice", redact(s), name)
		}
		seen[name] = true
		v, err := url.PathUnescape(value)
		if err != nil {
			return location{}, keystore.Errorf(keystore.ErrBadURI, "software URI %q: bad escape in %s: %v", redact(s), name, err)
		}
		switch name {
		case "passphrase-source":
			if !strings.HasPrefix(v, "file:") && !strings.HasPrefix(v, "env:") {
				return location{}, keystore.Errorf(keystore.ErrBadURI, "software URI: passphrase-source must be file:/path or env:NAME (a passphrase is never written into a URI)")
			}
			loc.passSource = v
		case "work-factor":
			n, err := strconv.Atoi(v)
			if err != nil || n < MinWorkFactor || n > MaxWorkFactor {
				return location{}, keystore.Errorf(keystore.ErrBadURI, "software URI %q: work-factor %q must be an integer from %d to %d (scrypt log2 N; default %d)", redact(s), v, MinWorkFactor, MaxWorkFactor, DefaultWorkFactor)
			}
			loc.workFactor = n
		default:
			return location{}, keystore.Errorf(keystore.ErrBadURI, "software URI %q: unknown attribute %q (known: passphrase-source, work-factor)", redact(s), name)
		}
	}
	return loc, nil
}

// keystoreURI encodes the keystore part of loc (directory, passphrase source, work factor).
func (l location) keystoreURI() string {
	return encodeURI(l.dir, l.passSource, l.workFactor)
}

// keyURI encodes the URI of the key with label in loc's directory (with the passphrase source, so that the
// key URI alone reopens it).
func (l location) keyURI(label string) string {
	return encodeURI(filepath.Join(l.dir, label+KeyFileSuffix), l.passSource, 0)
}

func encodeURI(path, passSource string, workFactor int) string {
	var b strings.Builder
	b.WriteString(Scheme + ":")
	b.WriteString(escapePath(path))
	sep := "?"
	if passSource != "" {
		b.WriteString(sep + "passphrase-source=" + escapeQuery(passSource))
		sep = "&"
	}
	if workFactor != 0 {
		b.WriteString(sep + "work-factor=" + strconv.Itoa(workFactor))
	}
	return b.String()
}

func escapePath(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		if isUnreserved(c) || c == '/' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func escapeQuery(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if isUnreserved(c) || c == '/' || c == ':' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// redact drops the query of a URI quoted in an error.
func redact(s string) string {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		return s[:i] + "?…"
	}
	return s
}

// KeystoreURI makes the URI of a software keystore in dir (absolute). passSource ("file:/path" or
// "env:NAME") and workFactor (scrypt log2 N of new keys) may be empty / zero.
func KeystoreURI(dir, passSource string, workFactor int) string {
	return encodeURI(filepath.Clean(dir), passSource, workFactor)
}

// WithPassphraseSource returns uri (a software keystore or key URI) with its passphrase-source replaced
// by source (or set, when it had none).
func WithPassphraseSource(uri, source string) (string, error) {
	loc, err := parseURI(uri)
	if err != nil {
		return "", err
	}
	loc.passSource = source
	if loc.label != "" {
		return loc.keyURI(loc.label), nil
	}
	return loc.keystoreURI(), nil
}

// PassphraseSource returns the passphrase-source of a software URI ("" when it names none).
func PassphraseSource(uri string) (string, error) {
	loc, err := parseURI(uri)
	if err != nil {
		return "", err
	}
	return loc.passSource, nil
}
