package pkcs11

import (
	"path/filepath"
	"strings"

	"github.com/custos-agent/custos/keystore"
)

// ref is a parsed pkcs11: URI (RFC 7512): which token, and optionally which key on it.
type ref struct {
	label, serial string // token selector: at least one is set
	modulePath    string // query attribute module-path
	pinSource     string // query attribute pin-source ("file:..." or "env:..."), may be empty
	object        string // key label (CKA_LABEL), may be empty
	id            []byte // key id (CKA_ID), may be nil
}

func (r ref) namesKey() bool { return r.object != "" || r.id != nil }

var (
	pathAttrs  = []string{"token", "serial", "object", "id", "type"}
	queryAttrs = []string{"module-path", "pin-source"}
)

// parseRef parses a keystore or key URI. It refuses, with a sentence that says what to do instead, a
// PIN in the URI, slot numbers, and attributes it does not know.
func parseRef(s string) (ref, error) {
	u, err := keystore.ParseURI(s, "pkcs11")
	if err != nil {
		return ref{}, err
	}
	var r ref
	for _, a := range u.Path {
		switch a.Name {
		case "token":
			r.label = a.Value
		case "serial":
			r.serial = a.Value
		case "object":
			r.object = a.Value
		case "id":
			if a.Value == "" {
				return ref{}, keystore.Errorf(keystore.ErrBadURI, "pkcs11 URI: id is empty: give the key's CKA_ID percent-encoded (id=%%01%%02...) or leave id out")
			}
			r.id = []byte(a.Value)
		case "type":
			if a.Value != "private" && a.Value != "public" {
				return ref{}, keystore.Errorf(keystore.ErrBadURI, "pkcs11 URI: type=%q: only private or public name a key pair half", a.Value)
			}
		case "pin-value":
			return ref{}, errPINValue
		case "slot-id", "slot-description", "slot-manufacturer":
			return ref{}, keystore.Errorf(keystore.ErrBadURI,
				"pkcs11 URI: %s is not accepted: tokens are found by token=<label> (or serial=), never by slot, because slot numbers change when tokens are added or the module restarts", a.Name)
		default:
			return ref{}, keystore.Errorf(keystore.ErrBadURI, "pkcs11 URI: unknown path attribute %q (accepted: %s)", a.Name, strings.Join(pathAttrs, ", "))
		}
	}
	for _, a := range u.Query {
		switch a.Name {
		case "module-path":
			r.modulePath = a.Value
		case "pin-source":
			r.pinSource = a.Value
		case "pin-value":
			return ref{}, errPINValue
		case "module-name":
			return ref{}, keystore.Errorf(keystore.ErrBadURI, "pkcs11 URI: module-name is not supported: give module-path=/absolute/path/to/library.so")
		default:
			return ref{}, keystore.Errorf(keystore.ErrBadURI, "pkcs11 URI: unknown query attribute %q (accepted: %s)", a.Name, strings.Join(queryAttrs, ", "))
		}
	}
	if r.label == "" && r.serial == "" {
		return ref{}, keystore.Errorf(keystore.ErrBadURI, "pkcs11 URI names no token: add token=<label> (e.g. pkcs11:token=custos?module-path=...)")
	}
	if r.modulePath == "" {
		return ref{}, keystore.Errorf(keystore.ErrBadURI,
			"pkcs11 URI has no module-path: add ?module-path=/absolute/path/to/library.so (SoftHSM: /usr/lib/softhsm/libsofthsm2.so)")
	}
	if !filepath.IsAbs(r.modulePath) {
		return ref{}, keystore.Errorf(keystore.ErrBadURI, "module-path %q is not an absolute path: give the full path of the PKCS#11 library", r.modulePath)
	}
	if r.pinSource != "" && !strings.HasPrefix(r.pinSource, "file:") && !strings.HasPrefix(r.pinSource, "env:") {
		// Do not echo the value: someone may have put the PIN itself there.
		kind, _, _ := strings.Cut(r.pinSource, ":")
		if len(kind) > 16 || kind == r.pinSource {
			kind = "?"
		}
		return ref{}, keystore.Errorf(keystore.ErrBadURI, "pin-source of unknown kind %q: use pin-source=file:/path/to/pin-file or pin-source=env:VARIABLE", kind)
	}
	return r, nil
}

var errPINValue = keystore.Errorf(keystore.ErrBadURI,
	"pkcs11 URI carries pin-value, which is refused: a PIN in a URI ends up in shell history, logs and config files; put the PIN in a 0600 file or an environment variable and use pin-source=file:/path or pin-source=env:NAME")

// keystoreURI encodes the token part of r with its query attributes.
func (r ref) keystoreURI() string {
	u := &keystore.URI{Scheme: "pkcs11"}
	if r.label != "" {
		u.SetPath("token", r.label)
	}
	if r.serial != "" {
		u.SetPath("serial", r.serial)
	}
	return u.String() + r.query()
}

// keyURI encodes the URI of key (object, id) on r's token. The id is percent-encoded byte by byte, as
// p11tool and p11-kit print it.
func (r ref) keyURI(object string, id []byte) string {
	u := &keystore.URI{Scheme: "pkcs11"}
	if r.label != "" {
		u.SetPath("token", r.label)
	}
	if r.serial != "" {
		u.SetPath("serial", r.serial)
	}
	if object != "" {
		u.SetPath("object", object)
	}
	s := u.String()
	if len(id) > 0 {
		var b strings.Builder
		b.WriteString(";id=")
		const hex = "0123456789ABCDEF"
		for _, c := range id {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
		s += b.String()
	}
	return s + r.query()
}

func (r ref) query() string {
	q := &keystore.URI{Scheme: "q"}
	q.SetQuery("module-path", r.modulePath)
	if r.pinSource != "" {
		q.SetQuery("pin-source", r.pinSource)
	}
	return strings.TrimPrefix(q.String(), "q:")
}

// describePINSource names where a PIN came from, for messages (never the PIN itself).
func describePINSource(src string) string {
	if src == "" {
		return "the prompt"
	}
	return src
}
