// Package privacy holds the agent's data minimisation (ADR 0082): network addresses truncated before they
// reach an audit record or a log line, as text (Addresses.Text), as structured details (Addresses.Details)
// and as a log/slog handler (Addresses.LogHandler).
package privacy

import (
	"context"
	"log/slog"
	"net/netip"
	"regexp"
	"strconv"
)

// Prefix lengths addresses are truncated to: an IPv4 address keeps its /24, an IPv6 address its /48 (the
// usual size of one site's allocation): enough to tell networks apart, not hosts.
const (
	IPv4Bits = 24
	IPv6Bits = 48
)

// Addresses decides how network addresses are written. The zero value truncates.
type Addresses struct {
	// Full keeps whole addresses (configuration privacy.full_addresses: true).
	Full bool
}

// Truncate returns the prefix an address is reduced to (an IPv4-mapped IPv6 address counts as IPv4).
func Truncate(a netip.Addr) netip.Prefix {
	a = a.Unmap().WithZone("")
	bits := IPv6Bits
	if a.Is4() {
		bits = IPv4Bits
	}
	p, _ := a.Prefix(bits)
	return p
}

// candidate finds what may be an IP address in text, with an optional /length after it: dotted quads,
// and runs of hex digits, colons and dots holding at least two colons (IPv6, IPv4-mapped included).
var candidate = regexp.MustCompile(`(?:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f.]*|\b\d{1,3}(?:\.\d{1,3}){3}\b)(?:/\d{1,3})?`)

// Text returns s with every IP address in it replaced by its truncated prefix ("192.0.2.7:443" becomes
// "192.0.2.0/24:443", "/ip6/2001:db8:1:2::5/tcp/1" becomes "/ip6/2001:db8:1::/48/tcp/1"). A prefix
// already as short as the truncation (or shorter) is left alone, so Text is idempotent. With Full, s is
// returned as it is.
func (o Addresses) Text(s string) string {
	if o.Full {
		return s
	}
	return candidate.ReplaceAllStringFunc(s, func(m string) string {
		addr, plen := m, -1
		for i := len(m) - 1; i >= 0; i-- {
			if m[i] == '/' {
				n, err := strconv.Atoi(m[i+1:])
				if err != nil {
					return m
				}
				addr, plen = m[:i], n
				break
			}
		}
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return m
		}
		p := Truncate(a)
		if plen >= 0 && plen <= p.Bits() {
			return m // already a prefix no longer than the truncation
		}
		return p.String()
	})
}

// Details returns a copy of a record's details with every string (in nested maps and lists too) passed
// through Text. Other values are kept as they are.
func (o Addresses) Details(d map[string]any) map[string]any {
	if o.Full || d == nil {
		return d
	}
	out := make(map[string]any, len(d))
	for k, v := range d {
		out[k] = o.value(v)
	}
	return out
}

func (o Addresses) value(v any) any {
	switch x := v.(type) {
	case string:
		return o.Text(x)
	case error:
		return o.Text(x.Error())
	case []string:
		out := make([]string, len(x))
		for i, s := range x {
			out[i] = o.Text(s)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = o.value(e)
		}
		return out
	case map[string]any:
		return o.Details(x)
	}
	return v
}

// LogHandler wraps h so that the message and every string, error and Stringer attribute (in groups too)
// have their addresses truncated. With Full it returns h.
func (o Addresses) LogHandler(h slog.Handler) slog.Handler {
	if o.Full {
		return h
	}
	return &logHandler{h: h, o: o}
}

type logHandler struct {
	h slog.Handler
	o Addresses
}

func (l *logHandler) Enabled(ctx context.Context, lv slog.Level) bool { return l.h.Enabled(ctx, lv) }

func (l *logHandler) Handle(ctx context.Context, r slog.Record) error {
	nr := slog.NewRecord(r.Time, r.Level, l.o.Text(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		nr.AddAttrs(l.attr(a))
		return true
	})
	return l.h.Handle(ctx, nr)
}

func (l *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	out := make([]slog.Attr, len(as))
	for i, a := range as {
		out[i] = l.attr(a)
	}
	return &logHandler{h: l.h.WithAttrs(out), o: l.o}
}

func (l *logHandler) WithGroup(name string) slog.Handler {
	return &logHandler{h: l.h.WithGroup(name), o: l.o}
}

func (l *logHandler) attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, l.o.Text(v.String()))
	case slog.KindGroup:
		g := v.Group()
		out := make([]slog.Attr, len(g))
		for i, x := range g {
			out[i] = l.attr(x)
		}
		return slog.Attr{Key: a.Key, Value: slog.GroupValue(out...)}
	case slog.KindAny:
		switch x := v.Any().(type) {
		case error:
			return slog.String(a.Key, l.o.Text(x.Error()))
		case interface{ String() string }:
			return slog.String(a.Key, l.o.Text(x.String()))
		case []string:
			return slog.Any(a.Key, l.o.value(x))
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}
