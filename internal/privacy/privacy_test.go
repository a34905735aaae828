package privacy

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"192.0.2.77", "192.0.2.0/24"},
		{"192.0.2.77:7400", "192.0.2.0/24:7400"},
		{"dial tcp 198.51.100.9:443: connection refused", "dial tcp 198.51.100.0/24:443: connection refused"},
		{"[2001:db8:1:2::5]:443", "[2001:db8:1::/48]:443"},
		{"/ip4/203.0.113.200/tcp/4001", "/ip4/203.0.113.0/24/tcp/4001"},
		{"/ip6/2001:db8:aaaa:bbbb::1/tcp/4001", "/ip6/2001:db8:aaaa::/48/tcp/4001"},
		{"::ffff:192.0.2.9", "192.0.2.0/24"},
		{"fe80::1%eth0", "fe80::/48%eth0"},
		{"10.0.0.0/8", "10.0.0.0/8"},           // a short prefix stays
		{"192.0.2.0/24", "192.0.2.0/24"},       // idempotent
		{"192.0.2.5/32", "192.0.2.0/24"},       // a host route is an address
		{"2001:db8:1::/48", "2001:db8:1::/48"}, // idempotent
		{"ed25519:AbC-d_e", "ed25519:AbC-d_e"}, // agent IDs are not addresses
		{"at 03:13:41 UTC", "at 03:13:41 UTC"}, // clock times are not addresses
		{"version 1.2.3", "version 1.2.3"},     // three parts is not an address
		{"999.1.1.1", "999.1.1.1"},             // not an address
		{"127.0.0.1 and ::1", "127.0.0.0/24 and ::/48"},
	} {
		if got := (Addresses{}).Text(tc.in); got != tc.want {
			t.Errorf("Text(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if got := (Addresses{Full: true}).Text(tc.in); got != tc.in {
			t.Errorf("Full Text(%q) = %q, want it unchanged", tc.in, got)
		}
	}
}

func TestDetails(t *testing.T) {
	in := map[string]any{"remote": "192.0.2.77:1", "n": 3, "list": []any{"2001:db8:1:2::1"}, "m": map[string]any{"e": "x 198.51.100.1"},
		"err": errors.New("dial 203.0.113.5:9 failed")}
	got := (Addresses{}).Details(in)
	if got["remote"] != "192.0.2.0/24:1" || got["n"] != 3 || got["list"].([]any)[0] != "2001:db8:1::/48" ||
		got["m"].(map[string]any)["e"] != "x 198.51.100.0/24" || got["err"] != "dial 203.0.113.0/24:9 failed" {
		t.Errorf("Details = %v", got)
	}
	if in["remote"] != "192.0.2.77:1" {
		t.Error("Details changed its input")
	}
}

func TestLogHandler(t *testing.T) {
	for _, full := range []bool{false, true} {
		var buf bytes.Buffer
		log := slog.New(Addresses{Full: full}.LogHandler(slog.NewTextHandler(&buf, nil)))
		log.With("peer", "192.0.2.1").WithGroup("g").Info("from 192.0.2.2", "remote", "192.0.2.3:5", "err", errors.New("to 192.0.2.4"),
			slog.Group("in", "addr", "192.0.2.5"))
		out := buf.String()
		for i := 1; i <= 5; i++ {
			whole := "192.0.2." + string(rune('0'+i))
			if strings.Contains(out, whole) == !full {
				t.Errorf("full=%v: %q in %s", full, whole, out)
			}
		}
		if !full && strings.Count(out, "192.0.2.0/24") != 5 {
			t.Errorf("want five truncated addresses in %s", out)
		}
	}
}
