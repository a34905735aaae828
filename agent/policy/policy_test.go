package policy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }

// Sunday 1 March 2026, 12:00 UTC.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newID(t testing.TB) string {
	t.Helper()
	s, err := keystore.GenerateMemorySigner(keystore.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	return identity.NewID(s.Public()).String()
}

func newPolicy(t *testing.T, cfg Config, clk *clock, geo *GeoDB) *Policy {
	t.Helper()
	p, err := New(cfg, Options{Now: clk.now, Geo: geo})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func wantDenied(t *testing.T, d Decision, r Reason, detail string) {
	t.Helper()
	if d.Allowed || d.Reason != r || !errors.Is(d.Err(), r) || !strings.Contains(d.Detail, detail) {
		t.Fatalf("want denial %s mentioning %q, got %+v", r, detail, d)
	}
}

// TestFloodFromOnePeer: a flood beyond the limit from one peer is refused with rate_limited while the
// other peers are served normally.
func TestFloodFromOnePeer(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	p := newPolicy(t, Config{}, clk, nil) // defaults: 100 msg/s, burst 200
	flooder := Request{Peer: newID(t), Roles: []rbac.Role{rbac.PeerNode}}
	others := []Request{{Peer: newID(t), Roles: []rbac.Role{rbac.PeerNode}}, {Peer: newID(t), Roles: []rbac.Role{rbac.TaskSubmitter}}}

	allowed, refused := 0, 0
	// One simulated second in 1 ms steps: the flooder sends 10 messages per millisecond (10,000/s), the
	// others one every 20 ms (50/s, within their limit).
	for ms := 0; ms < 1000; ms++ {
		for i := 0; i < 10; i++ {
			d := p.Admit(ctx, flooder)
			if d.Allowed {
				allowed++
				continue
			}
			refused++
			if d.Reason != RateLimited || !errors.Is(d.Err(), RateLimited) || d.RetryAfter <= 0 || d.RetryAfter > 10*time.Millisecond {
				t.Fatalf("flood refusal: %+v", d)
			}
		}
		if ms%20 == 0 {
			for _, o := range others {
				if d := p.Admit(ctx, o); !d.Allowed || d.WouldDeny {
					t.Fatalf("at %d ms another peer was refused: %+v", ms, d)
				}
			}
		}
		clk.add(time.Millisecond)
	}
	// The bucket starts full (200) and refills 100/s: about 300 of the 10,000 get through.
	if allowed < 295 || allowed > 302 || refused != 10000-allowed {
		t.Fatalf("flooder: %d allowed, %d refused; want about 200 burst + 100 refill", allowed, refused)
	}
	u := p.Usage(flooder)
	if u.Rate != 100 || u.Burst != 200 || u.Tokens > 1 {
		t.Fatalf("usage %+v", u)
	}
	// After a quiet second the flooder is served again.
	clk.add(time.Second)
	if d := p.Admit(ctx, flooder); !d.Allowed {
		t.Fatalf("after a pause: %+v", d)
	}
}

func TestLimitsByRolePeerAndTrust(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	special := newID(t)
	cfg := Config{
		Default: Limits{Rate: 10},
		Roles: map[string]Limits{
			"gateway_service": {Rate: 1000, Burst: 50},
			"task_submitter":  {Rate: 5, MaxConcurrentTasks: 2},
		},
		Peers: map[string]Limits{special: {Burst: 3}},
	}
	p := newPolicy(t, cfg, clk, nil)
	burst := func(req Request) int {
		n := 0
		for p.Admit(ctx, req).Allowed {
			n++
			if n > 10000 {
				t.Fatal("no limit")
			}
		}
		return n
	}
	cases := []struct {
		name string
		req  Request
		want int
	}{
		{"default role-less peer: 2 x 10", Request{Peer: newID(t)}, 20},
		{"peer_node (no role limits): default", Request{Peer: newID(t), Roles: []rbac.Role{rbac.PeerNode}}, 20},
		{"gateway: its own burst", Request{Peer: newID(t), Roles: []rbac.Role{rbac.GatewayService}}, 50},
		{"submitter: 2 x 5", Request{Peer: newID(t), Roles: []rbac.Role{rbac.TaskSubmitter}}, 10},
		{"two roles: the more generous", Request{Peer: newID(t), Roles: []rbac.Role{rbac.TaskSubmitter, rbac.GatewayService}}, 50},
		{"peer override", Request{Peer: special, Roles: []rbac.Role{rbac.GatewayService}}, 3},
		// Trust: reputation's multipliers (Restricted 0.1, New 0.5, Super 2).
		{"restricted peer", Request{Peer: newID(t), Multiplier: reputation.DefaultEffects()[reputation.Restricted].RateMultiplier}, 2},
		{"new peer", Request{Peer: newID(t), Multiplier: reputation.DefaultEffects()[reputation.New].RateMultiplier}, 10},
		{"super peer", Request{Peer: newID(t), Multiplier: reputation.DefaultEffects()[reputation.Super].RateMultiplier}, 40},
	}
	for _, c := range cases {
		if got := burst(c.req); got != c.want {
			t.Errorf("%s: burst of %d, want %d", c.name, got, c.want)
		}
	}
	// A Restricted peer also refills at a tenth of the rate: 1 message/s instead of 10.
	r := Request{Peer: newID(t), Multiplier: 0.1}
	burst(r)
	clk.add(500 * time.Millisecond)
	wantDenied(t, p.Admit(ctx, r), RateLimited, "exceeds 1 messages/s")
	clk.add(500 * time.Millisecond)
	if d := p.Admit(ctx, r); !d.Allowed {
		t.Fatalf("restricted peer after 1 s: %+v", d)
	}

	// Concurrent tasks: the submitter may run 2; a Restricted one only 1 (2 x 0.1, at least 1).
	sub := Request{Peer: newID(t), Roles: []rbac.Role{rbac.TaskSubmitter}}
	d1, rel1 := p.StartTask(ctx, sub)
	d2, rel2 := p.StartTask(ctx, sub)
	d3, _ := p.StartTask(ctx, sub)
	if !d1.Allowed || !d2.Allowed {
		t.Fatal("tasks within the quota refused")
	}
	wantDenied(t, d3, QuotaExceeded, "already runs 2 tasks")
	rel1()
	rel1() // idempotent
	if d, _ := p.StartTask(ctx, sub); !d.Allowed {
		t.Fatalf("after a release: %+v", d)
	}
	rel2()
	low := Request{Peer: newID(t), Roles: []rbac.Role{rbac.TaskSubmitter}, Multiplier: 0.1}
	if d, _ := p.StartTask(ctx, low); !d.Allowed {
		t.Fatal(d)
	}
	if d, _ := p.StartTask(ctx, low); d.Allowed {
		t.Fatal("a restricted submitter ran a second concurrent task")
	}
}

func TestBytesPerDayInTheConfiguredZone(t *testing.T) {
	ctx := context.Background()
	// 22:30 UTC on Sunday is 07:30 on Monday in Tokyo.
	clk := &clock{t: time.Date(2026, 3, 1, 22, 30, 0, 0, time.UTC)}
	p := newPolicy(t, Config{TimeZone: "Asia/Tokyo", Default: Limits{MaxBytesPerDay: 1000}}, clk, nil)
	req := Request{Peer: newID(t), Bytes: 400}
	for i := 0; i < 2; i++ {
		if d := p.Admit(ctx, req); !d.Allowed {
			t.Fatal(d)
		}
	}
	wantDenied(t, p.Admit(ctx, req), QuotaExceeded, "800 bytes today (2026-03-02 Asia/Tokyo)")
	// A refused message does not count: 200 more bytes still fit.
	if d := p.Admit(ctx, Request{Peer: req.Peer, Bytes: 200}); !d.Allowed {
		t.Fatal(d)
	}
	// Midnight in Tokyo (15:00 UTC next day) starts a new day.
	clk.t = time.Date(2026, 3, 2, 15, 0, 0, 0, time.UTC)
	if d := p.Admit(ctx, req); !d.Allowed {
		t.Fatalf("new day in Tokyo: %+v", d)
	}
	if u := p.Usage(req); u.BytesToday != 400 {
		t.Fatalf("bytes today %d", u.BytesToday)
	}
}

func TestTimeWindows(t *testing.T) {
	ctx := context.Background()
	clk := &clock{}
	cfg := Config{
		TimeZone: "Europe/Paris",
		Roles: map[string]Limits{
			"task_submitter":  {Window: &TimeWindow{Days: []string{"mon", "tue", "wed", "thu", "fri"}, Hours: []string{"09:00-17:30"}}},
			"gateway_service": {Window: &TimeWindow{Hours: []string{"22:00-06:00"}}},
		},
	}
	p := newPolicy(t, cfg, clk, nil)
	sub := Request{Peer: newID(t), Roles: []rbac.Role{rbac.TaskSubmitter}}
	gw := Request{Peer: newID(t), Roles: []rbac.Role{rbac.GatewayService}}
	both := Request{Peer: newID(t), Roles: []rbac.Role{rbac.TaskSubmitter, rbac.GatewayService}}
	node := Request{Peer: newID(t), Roles: []rbac.Role{rbac.PeerNode}}
	paris := func(s string) time.Time {
		loc, _ := time.LoadLocation("Europe/Paris")
		tm, err := time.ParseInLocation("2006-01-02 15:04", s, loc)
		if err != nil {
			t.Fatal(err)
		}
		return tm.UTC() // the clock runs in UTC; the policy converts
	}
	cases := []struct {
		at   string
		req  Request
		want bool
	}{
		{"2026-03-02 09:00", sub, true},  // Monday, opening minute
		{"2026-03-02 08:59", sub, false}, // before
		{"2026-03-02 17:29", sub, true},
		{"2026-03-02 17:30", sub, false}, // end is exclusive
		{"2026-03-01 12:00", sub, false}, // Sunday
		{"2026-03-02 23:15", gw, true},   // across midnight
		{"2026-03-03 05:59", gw, true},
		{"2026-03-03 06:00", gw, false},
		{"2026-03-03 12:00", gw, false},
		{"2026-03-03 12:00", both, true}, // either role's window admits
		{"2026-03-01 03:00", both, true},
		{"2026-03-01 12:00", both, false},
		{"2026-03-01 12:00", node, true}, // no window: always
		// Daylight saving: 29 March 2026 Paris moves to UTC+2; 09:00 local is 07:00 UTC.
		{"2026-03-30 09:00", sub, true},
		{"2026-03-30 08:30", sub, false},
	}
	for _, c := range cases {
		clk.t = paris(c.at)
		d := p.Admit(ctx, c.req)
		if d.Allowed != c.want {
			t.Errorf("%s (%s): allowed=%v, want %v (%s)", c.at, c.req.Roles, d.Allowed, c.want, d.Detail)
		}
		if !c.want {
			wantDenied(t, d, OutsideTimeWindow, "outside the allowed time window")
		}
		if cd := p.Connect(ctx, c.req); cd.Allowed != c.want {
			t.Errorf("Connect at %s: %+v", c.at, cd)
		}
	}
	bad := []struct {
		w    TimeWindow
		want string
	}{
		{TimeWindow{Days: []string{"monday"}}, "not a day"},
		{TimeWindow{Hours: []string{"9-17"}}, "not a range"},
		{TimeWindow{Hours: []string{"09:00-09:00"}}, "not a range"},
		{TimeWindow{Hours: []string{"25:00-26:00"}}, "not a range"},
	}
	for _, b := range bad {
		if _, err := New(Config{Default: Limits{Window: &b.w}}, Options{}); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("window %+v: %v", b.w, err)
		}
	}
	if _, err := New(Config{TimeZone: "Mars/Olympus"}, Options{}); err == nil || !strings.Contains(err.Error(), "IANA") {
		t.Errorf("bad zone: %v", err)
	}
}

// buildGeoDB writes a small MaxMind-format country database into dir.
func buildGeoDB(t *testing.T, dir string) string {
	t.Helper()
	w, err := mmdbwriter.New(mmdbwriter.Options{DatabaseType: "Custos-Test-Country", RecordSize: 24})
	if err != nil {
		t.Fatal(err)
	}
	for cidr, cc := range map[string]string{
		"81.56.0.0/16":   "FR",
		"3.16.0.0/16":    "US",
		"5.255.0.0/16":   "RU",
		"2a01:e00::/26":  "FR",
		"41.128.0.0/16":  "EG",
		"203.0.112.0/24": "", // a record with only the registered country
	} {
		_, n, err := net.ParseCIDR(cidr)
		if err != nil {
			t.Fatal(err)
		}
		rec := mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.String(cc)}}
		if cc == "" {
			rec = mmdbtype.Map{"registered_country": mmdbtype.Map{"iso_code": mmdbtype.String("AU")}}
		}
		if err := w.Insert(n, rec); err != nil {
			t.Fatalf("insert %s: %v", cidr, err)
		}
	}
	path := filepath.Join(dir, "test-country.mmdb")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteTo(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestGeographicRules(t *testing.T) {
	ctx := context.Background()
	path := buildGeoDB(t, t.TempDir())
	geo, err := OpenGeo(path)
	if err != nil {
		t.Fatal(err)
	}
	defer geo.Close()
	for addr, want := range map[string]string{"81.56.1.2": "FR", "3.16.9.9": "US", "2a01:e00::1": "FR", "::ffff:81.56.1.2": "FR", "127.0.0.1": "", "10.1.2.3": "", "203.0.112.7": "AU"} {
		if got, err := geo.Country(netip.MustParseAddr(addr)); err != nil || got != want {
			t.Errorf("Country(%s) = %q, %v; want %q", addr, got, err, want)
		}
	}
	clk := &clock{t: t0}
	peer := newID(t)
	at := func(a string) Request { return Request{Peer: peer, Addr: netip.MustParseAddr(a)} }

	deny := newPolicy(t, Config{Geo: GeoConfig{Database: path, Deny: []string{"RU"}}}, clk, geo)
	if d := deny.Admit(ctx, at("81.56.1.2")); !d.Allowed || d.Country != "FR" {
		t.Fatalf("FR under a deny list of RU: %+v", d)
	}
	wantDenied(t, deny.Admit(ctx, at("5.255.3.4")), GeoDenied, "is in RU, which policy.geo.deny lists")
	wantDenied(t, deny.Connect(ctx, at("5.255.3.4")), GeoDenied, "RU")
	if d := deny.Admit(ctx, at("127.0.0.1")); !d.Allowed {
		t.Fatalf("loopback with unknown=allow: %+v", d)
	}
	if d := deny.Admit(ctx, Request{Peer: peer}); !d.Allowed {
		t.Fatalf("no address (local caller): %+v", d)
	}

	allow := newPolicy(t, Config{Geo: GeoConfig{Allow: []string{"FR", "US"}, Deny: []string{"US"}, Unknown: "deny"}}, clk, geo)
	if d := allow.Admit(ctx, at("2a01:e00::5")); !d.Allowed {
		t.Fatalf("FR (IPv6) on the allow list: %+v", d)
	}
	wantDenied(t, allow.Admit(ctx, at("41.128.0.1")), GeoDenied, "EG, which is not in policy.geo.allow ([FR US])")
	wantDenied(t, allow.Admit(ctx, at("3.16.0.1")), GeoDenied, "US, which policy.geo.deny lists") // deny wins
	wantDenied(t, allow.Admit(ctx, at("192.168.1.1")), GeoDenied, "in no country")

	// Configuration errors.
	for _, c := range []struct {
		cfg  Config
		geo  *GeoDB
		want string
	}{
		{Config{Geo: GeoConfig{Deny: []string{"fr"}}}, geo, "not an ISO 3166-1 alpha-2 code"},
		{Config{Geo: GeoConfig{Deny: []string{"FRA"}}}, geo, "not an ISO 3166-1 alpha-2 code"},
		{Config{Geo: GeoConfig{Deny: []string{"RU"}}}, nil, "no database is open"},
		{Config{Geo: GeoConfig{Unknown: "maybe"}}, geo, "use allow or deny"},
	} {
		if _, err := New(c.cfg, Options{Geo: c.geo}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.cfg.Geo, err, c.want)
		}
	}
	if _, err := OpenGeo(filepath.Join(t.TempDir(), "missing.mmdb")); err == nil || !strings.Contains(err.Error(), ".mmdb") {
		t.Errorf("missing database: %v", err)
	}
}

// TestLogOnly: in log-only mode every rule reports what it would deny and lets the request through.
func TestLogOnly(t *testing.T) {
	ctx := context.Background()
	path := buildGeoDB(t, t.TempDir())
	geo, err := OpenGeo(path)
	if err != nil {
		t.Fatal(err)
	}
	defer geo.Close()
	clk := &clock{t: t0} // a Sunday
	enforce := Config{
		Default: Limits{Rate: 1, Burst: 1, MaxConcurrentTasks: 1, MaxBytesPerDay: 10, Window: &TimeWindow{Days: []string{"mon"}}},
		Geo:     GeoConfig{Deny: []string{"RU"}},
	}
	logOnly := enforce
	logOnly.LogOnly = LogOnly{Rate: true, Quota: true, TimeWindow: true, Geo: true}
	peer := newID(t)
	cases := []struct {
		name   string
		setup  func(p *Policy)
		req    Request
		reason Reason
	}{
		{"geo", nil, Request{Peer: peer, Addr: netip.MustParseAddr("5.255.0.1")}, GeoDenied},
		{"time window", nil, Request{Peer: peer}, OutsideTimeWindow},
	}
	for _, c := range cases {
		pe := newPolicy(t, enforce, clk, geo)
		pl := newPolicy(t, logOnly, clk, geo)
		wantDenied(t, pe.Admit(ctx, c.req), c.reason, "")
		d := pl.Admit(ctx, c.req)
		if !d.Allowed || !d.WouldDeny || d.Reason != c.reason || d.Err() != nil || !strings.HasPrefix(d.Detail, "log-only: would deny") {
			t.Errorf("%s in log-only mode: %+v", c.name, d)
		}
	}
	// Rate and bytes: on a Monday (inside the window) from France.
	clk.t = time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)
	req := Request{Peer: peer, Addr: netip.MustParseAddr("81.56.0.1"), Bytes: 6}
	pe := newPolicy(t, enforce, clk, geo)
	pl := newPolicy(t, logOnly, clk, geo)
	if d := pe.Admit(ctx, req); !d.Allowed || d.WouldDeny {
		t.Fatal(d)
	}
	if d := pl.Admit(ctx, req); !d.Allowed || d.WouldDeny {
		t.Fatal(d)
	}
	// Second message: over 10 bytes and over 1 message/s.
	wantDenied(t, pe.Admit(ctx, req), QuotaExceeded, "daily quota")
	d := pl.Admit(ctx, req)
	if !d.Allowed || !d.WouldDeny || d.Reason != QuotaExceeded {
		t.Fatalf("log-only bytes+rate: %+v", d)
	}
	// Rate alone: another peer sending empty messages.
	other := Request{Peer: newID(t), Addr: req.Addr}
	for i, want := range []bool{true, false} {
		if d := pe.Admit(ctx, other); d.Allowed != want {
			t.Fatalf("enforcing, message %d: %+v", i, d)
		} else if !want {
			wantDenied(t, d, RateLimited, "exceeds 1 messages/s")
		}
		if d := pl.Admit(ctx, other); !d.Allowed || d.WouldDeny == want || (!want && d.Reason != RateLimited) {
			t.Fatalf("log-only, message %d: %+v", i, d)
		}
	}
	// Concurrent tasks.
	pe.StartTask(ctx, req)
	if d, _ := pe.StartTask(ctx, req); d.Allowed {
		t.Fatal("second task allowed while enforcing")
	}
	pl.StartTask(ctx, req)
	if d, _ := pl.StartTask(ctx, req); !d.Allowed || !d.WouldDeny || d.Reason != QuotaExceeded {
		t.Fatalf("log-only task quota: %+v", d)
	}
	// Only some rules log-only: geo enforced while the rate is log-only.
	mixed := enforce
	mixed.Default.Window = nil
	mixed.LogOnly = LogOnly{Rate: true}
	pm := newPolicy(t, mixed, clk, geo)
	wantDenied(t, pm.Admit(ctx, Request{Peer: peer, Addr: netip.MustParseAddr("5.255.0.1")}), GeoDenied, "RU")
}

func TestRoleTotals(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	p := newPolicy(t, Config{RoleTotals: map[string]Aggregate{"gateway_service": {Rate: 10, Burst: 10}}}, clk, nil)
	g1 := Request{Peer: newID(t), Roles: []rbac.Role{rbac.GatewayService}}
	g2 := Request{Peer: newID(t), Roles: []rbac.Role{rbac.GatewayService}}
	node := Request{Peer: newID(t), Roles: []rbac.Role{rbac.PeerNode}}
	n := 0
	for i := 0; i < 20; i++ {
		for _, g := range []Request{g1, g2} {
			if p.Admit(ctx, g).Allowed {
				n++
			}
		}
	}
	if n != 10 {
		t.Fatalf("two gateways together got %d messages through a shared bucket of 10", n)
	}
	wantDenied(t, p.Admit(ctx, g1), RateLimited, "all gateway_service peers together exceed 10 messages/s")
	if d := p.Admit(ctx, node); !d.Allowed {
		t.Fatalf("a peer_node is not in the gateways' bucket: %+v", d)
	}
	if _, err := New(Config{RoleTotals: map[string]Aggregate{"root": {Rate: 1}}}, Options{}); err == nil || !strings.Contains(err.Error(), `unknown role "root"`) {
		t.Fatalf("unknown role: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Default: Limits{Rate: -1}}, "positive number of messages per second"},
		{Config{Roles: map[string]Limits{"admin": {}}}, `unknown role "admin"`},
		{Config{Peers: map[string]Limits{"bob": {}}}, "agent ID"},
		{Config{Default: Limits{MaxConcurrentTasks: -2}}, "-1 for unlimited"},
		{Config{MaxTrackedPeers: -1}, "max_tracked_peers"},
	} {
		if _, err := New(c.cfg, Options{}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
}

func TestTrackedPeersBound(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	p := newPolicy(t, Config{MaxTrackedPeers: 2}, clk, nil)
	a, b, c := Request{Peer: "a"}, Request{Peer: "b"}, Request{Peer: "c"}
	p.Admit(ctx, a)
	p.Admit(ctx, b)
	wantDenied(t, p.Admit(ctx, c), RateLimited, "too many peers are tracked")
	clk.add(11 * time.Minute)
	if d := p.Admit(ctx, c); !d.Allowed {
		t.Fatalf("after idle peers aged out: %+v", d)
	}
}

func BenchmarkAdmit(b *testing.B) {
	ctx := context.Background()
	p, _ := New(Config{}, Options{})
	req := Request{Peer: newID(b), Roles: []rbac.Role{rbac.PeerNode}}
	for b.Loop() {
		p.Admit(ctx, req)
	}
}

// TestAdmitOnBehalfOf: each (peer, client) pair has its own bucket with a share of the peer's rate and
// burst: one client of a gateway running out leaves the others their allowance (ADR 0100).
func TestAdmitOnBehalfOf(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p, err := New(Config{Default: Limits{Rate: 1, Burst: 4}, OnBehalfOf: OnBehalfOf{Share: 0.5}}, Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	gw := Request{Peer: "ed25519:gateway"}
	for _, c := range []struct {
		client string
		want   bool
	}{
		{"alice", true}, {"alice", true}, {"alice", false}, // burst 4 × 0.5 = 2
		{"bob", true}, {"bob", true}, {"bob", false},
		{"", true}, {"", true}, {"", true}, // no attribution: the peer's own bucket only
	} {
		d := p.AdmitOnBehalfOf(ctx, gw, c.client)
		if d.Allowed != c.want {
			t.Fatalf("%q: allowed %v (%s), want %v", c.client, d.Allowed, d.Detail, c.want)
		}
		if !d.Allowed && (d.Reason != RateLimited || d.RetryAfter <= 0) {
			t.Fatalf("%q: refused with %s after %v", c.client, d.Reason, d.RetryAfter)
		}
	}
	if d := p.AdmitOnBehalfOf(ctx, Request{Peer: "ed25519:other"}, "alice"); !d.Allowed {
		t.Fatalf("another peer's alice shares the gateway's bucket: %s", d.Detail)
	}
	now = now.Add(2 * time.Second) // rate 0.5/s: one token back
	if d := p.AdmitOnBehalfOf(ctx, gw, "alice"); !d.Allowed {
		t.Fatalf("after the refill: %s", d.Detail)
	}
	for _, share := range []float64{-1, 1.5} {
		if _, err := New(Config{OnBehalfOf: OnBehalfOf{Share: share}}, Options{}); err == nil {
			t.Errorf("share %g accepted", share)
		}
	}
}
