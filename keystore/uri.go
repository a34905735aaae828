package keystore

import (
	"net/url"
	"strings"
)

// URI is an RFC 7512-shaped key URI: scheme ":" path attributes separated by ";" and optional query
// attributes after "?" separated by "&". Values are percent-decoded. The pkcs11 and tpm backends use it:
//
//	pkcs11:token=custos;object=agent-gen0?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin
//	tpm:object=agent-gen0?device=unix:///run/swtpm.sock&dir=/home/op/.custos/tpm
type URI struct {
	Scheme string
	Path   []Attr
	Query  []Attr
}

// Attr is one name=value attribute of a URI.
type Attr struct{ Name, Value string }

// ParseURI parses s, which must start with scheme ":". Attribute names may not repeat within a part.
func ParseURI(s, scheme string) (*URI, error) {
	rest, ok := strings.CutPrefix(s, scheme+":")
	if !ok {
		return nil, errorf(ErrBadURI, "%q does not start with %q", redactURI(s), scheme+":")
	}
	u := &URI{Scheme: scheme}
	pathPart, queryPart, _ := strings.Cut(rest, "?")
	var err error
	if u.Path, err = parseAttrs(pathPart, ";"); err != nil {
		return nil, errorf(ErrBadURI, "%s path attributes: %v", scheme, err)
	}
	if u.Query, err = parseAttrs(queryPart, "&"); err != nil {
		return nil, errorf(ErrBadURI, "%s query attributes: %v", scheme, err)
	}
	return u, nil
}

func parseAttrs(s, sep string) ([]Attr, error) {
	if s == "" {
		return nil, nil
	}
	var out []Attr
	seen := map[string]bool{}
	for _, part := range strings.Split(s, sep) {
		if part == "" {
			continue
		}
		name, value, ok := strings.Cut(part, "=")
		if !ok || name == "" {
			return nil, &url.Error{Op: "parse", URL: part, Err: errMissingEquals}
		}
		v, err := url.PathUnescape(value)
		if err != nil {
			return nil, err
		}
		if seen[name] {
			return nil, &url.Error{Op: "parse", URL: part, Err: errRepeated}
		}
		seen[name] = true
		out = append(out, Attr{Name: name, Value: v})
	}
	return out, nil
}

type uriError string

func (e uriError) Error() string { return string(e) }

const (
	errMissingEquals = uriError("attribute without name=value")
	errRepeated      = uriError("attribute given twice")
)

// Get returns the value of a path attribute, or else of a query attribute.
func (u *URI) Get(name string) (string, bool) {
	for _, a := range u.Path {
		if a.Name == name {
			return a.Value, true
		}
	}
	for _, a := range u.Query {
		if a.Name == name {
			return a.Value, true
		}
	}
	return "", false
}

// SetPath sets (or replaces) a path attribute.
func (u *URI) SetPath(name, value string) { u.Path = setAttr(u.Path, name, value) }

// SetQuery sets (or replaces) a query attribute.
func (u *URI) SetQuery(name, value string) { u.Query = setAttr(u.Query, name, value) }

// Without returns a copy of u with the named attributes removed from both parts.
func (u *URI) Without(names ...string) *URI {
	drop := func(in []Attr) []Attr {
		var out []Attr
		for _, a := range in {
			keep := true
			for _, n := range names {
				if a.Name == n {
					keep = false
				}
			}
			if keep {
				out = append(out, a)
			}
		}
		return out
	}
	return &URI{Scheme: u.Scheme, Path: drop(u.Path), Query: drop(u.Query)}
}

func setAttr(attrs []Attr, name, value string) []Attr {
	for i := range attrs {
		if attrs[i].Name == name {
			attrs[i].Value = value
			return attrs
		}
	}
	return append(attrs, Attr{Name: name, Value: value})
}

// String encodes u. Path attribute values are escaped so that "/", ";", "?" and "&" cannot break the
// structure; query values keep "/" and ":" readable (module-path=/usr/lib/..., pin-source=file:/...).
func (u *URI) String() string {
	var b strings.Builder
	b.WriteString(u.Scheme)
	b.WriteByte(':')
	for i, a := range u.Path {
		if i > 0 {
			b.WriteByte(';')
		}
		b.WriteString(a.Name)
		b.WriteByte('=')
		b.WriteString(escape(a.Value, false))
	}
	if len(u.Query) > 0 {
		b.WriteByte('?')
		for i, a := range u.Query {
			if i > 0 {
				b.WriteByte('&')
			}
			b.WriteString(a.Name)
			b.WriteByte('=')
			b.WriteString(escape(a.Value, true))
		}
	}
	return b.String()
}

func escape(s string, query bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '.', c == '_', c == '~':
			b.WriteByte(c)
		case query && (c == '/' || c == ':' || c == '@' || c == ','):
			b.WriteByte(c)
		default:
			const hex = "0123456789ABCDEF"
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}

// redactURI drops everything after "?" so that a URI quoted in an error never shows more than needed.
func redactURI(s string) string {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		return s[:i] + "?…"
	}
	return s
}
