package policy

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/identity"
)

// Defaults of the built-in limits.
const (
	DefaultRate               = 100.0 // messages per second
	DefaultBurstFactor        = 2     // burst = 2 × rate
	DefaultMaxConcurrentTasks = 16
	DefaultMaxBytesPerDay     = 1 << 30 // 1 GiB
	DefaultMaxTrackedPeers    = 100000
	// DefaultOnBehalfOfShare is the share of a peer's rate and burst one of its clients gets (ADR 0100).
	DefaultOnBehalfOfShare = 0.5
)

// OnBehalfOf limits the tasks a peer submits on behalf of one client (task requests with an
// on_behalf_of, ADR 0100): each (peer, client) pair has its own bucket with Share of the peer's rate and
// burst, taken by each new task request besides the peer's own bucket. One client of a gateway cannot
// use up the whole gateway's allowance here; clients together stay within the peer's.
type OnBehalfOf struct {
	// Share is in (0, 1]; 0 means DefaultOnBehalfOfShare.
	Share float64 `yaml:"share" json:"share,omitempty"`
}

// Limits are the resource limits of a role or a peer. A zero field inherits (from the defaults, or for a
// peer from its roles); -1 means unlimited for the quotas.
type Limits struct {
	// Rate is the token-bucket refill in messages per second.
	Rate float64 `yaml:"rate" json:"rate,omitempty"`
	// Burst is the bucket size; 0 means DefaultBurstFactor × Rate.
	Burst int `yaml:"burst" json:"burst,omitempty"`
	// MaxConcurrentTasks is how many tasks the peer may have running here at once (-1: unlimited).
	MaxConcurrentTasks int `yaml:"max_concurrent_tasks" json:"max_concurrent_tasks,omitempty"`
	// MaxBytesPerDay is how many message bytes the peer may send per calendar day in the policy's time
	// zone (-1: unlimited).
	MaxBytesPerDay int64 `yaml:"max_bytes_per_day" json:"max_bytes_per_day,omitempty"`
	// Window restricts when the peer may connect and send; nil means always.
	Window *TimeWindow `yaml:"time_window" json:"time_window,omitempty"`
}

// TimeWindow allows traffic on some days and hours, in the policy's time zone. A moment is inside when its
// local weekday is in Days (empty: every day) and its local time of day is in one of Hours (empty: all
// day). A range may wrap midnight ("22:00-06:00"); the end is exclusive; "00:00-24:00" is the whole day.
type TimeWindow struct {
	Days  []string `yaml:"days" json:"days,omitempty"`   // mon tue wed thu fri sat sun
	Hours []string `yaml:"hours" json:"hours,omitempty"` // "HH:MM-HH:MM"
}

// GeoConfig is the geographic rule. Deny wins over Allow; a non-empty Allow admits only its countries.
type GeoConfig struct {
	// Database is the .mmdb file (opened by the caller with OpenGeo and passed in Options.Geo).
	Database string `yaml:"database" json:"database,omitempty"`
	// Allow and Deny are ISO 3166-1 alpha-2 country codes.
	Allow []string `yaml:"allow" json:"allow,omitempty"`
	Deny  []string `yaml:"deny" json:"deny,omitempty"`
	// Unknown is what happens to an address the database does not place (private, loopback, unlisted):
	// "allow" (the default) or "deny".
	Unknown string `yaml:"unknown" json:"unknown,omitempty"`
}

// LogOnly switches individual rules to log-only: a would-be denial is reported (Decision.WouldDeny) but
// the request is allowed.
type LogOnly struct {
	Rate       bool `yaml:"rate" json:"rate,omitempty"`
	Quota      bool `yaml:"quota" json:"quota,omitempty"`
	TimeWindow bool `yaml:"time_window" json:"time_window,omitempty"`
	Geo        bool `yaml:"geo" json:"geo,omitempty"`
}

// Aggregate is a token bucket shared by every peer holding a role.
type Aggregate struct {
	Rate  float64 `yaml:"rate" json:"rate"`
	Burst int     `yaml:"burst" json:"burst,omitempty"`
}

// Config is the resource access policy (DESIGN 6). In the agent's config file it sits under "policy:".
type Config struct {
	// TimeZone of time windows and daily quotas (IANA name); default UTC.
	TimeZone string `yaml:"time_zone" json:"time_zone,omitempty"`
	// Default limits for every peer (zero fields: the built-in defaults).
	Default Limits `yaml:"default" json:"default"`
	// Roles: limits by role name (rbac roles); a peer with several roles gets the most generous.
	Roles map[string]Limits `yaml:"roles" json:"roles,omitempty"`
	// RoleTotals: optional buckets shared by all peers of a role (e.g. every gateway together).
	RoleTotals map[string]Aggregate `yaml:"role_totals" json:"role_totals,omitempty"`
	// Peers: limits by agent ID, overriding its roles field by field.
	Peers   map[string]Limits `yaml:"peers" json:"peers,omitempty"`
	Geo     GeoConfig         `yaml:"geo" json:"geo"`
	LogOnly LogOnly           `yaml:"log_only" json:"log_only"`
	// OnBehalfOf is the per-client share of a peer's task requests (ADR 0100).
	OnBehalfOf OnBehalfOf `yaml:"on_behalf_of" json:"on_behalf_of"`
	// MaxTrackedPeers bounds the per-peer state kept in memory (and, separately, the (peer, client)
	// buckets of OnBehalfOf); default DefaultMaxTrackedPeers.
	MaxTrackedPeers int `yaml:"max_tracked_peers" json:"max_tracked_peers,omitempty"`
}

// compiled is a validated Config.
type compiled struct {
	cfg      Config
	loc      *time.Location
	def      limits
	roles    map[rbac.Role]limits
	totals   map[rbac.Role]Aggregate
	peers    map[string]Limits
	allow    map[string]bool
	deny     map[string]bool
	denyUnkn bool
}

// limits is Limits with every field resolved.
type limits struct {
	rate    float64
	burst   float64
	tasks   int   // -1 unlimited
	bytes   int64 // -1 unlimited
	windows []window
	always  bool // no window at all
}

type window struct {
	days  uint8 // bit per weekday (time.Sunday = bit 0); 0 means every day
	spans [][2]int
}

var dayNames = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday, "thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

func compileConfig(cfg Config) (*compiled, error) {
	c := &compiled{cfg: cfg, roles: map[rbac.Role]limits{}, totals: map[rbac.Role]Aggregate{}, peers: map[string]Limits{}, allow: map[string]bool{}, deny: map[string]bool{}}
	zone := cfg.TimeZone
	if zone == "" {
		zone = "UTC"
	}
	loc, err := time.LoadLocation(zone)
	if err != nil {
		return nil, fmt.Errorf("policy.time_zone %q: %v (use an IANA name such as Europe/Paris; install tzdata)", zone, err)
	}
	c.loc = loc
	builtin := limits{rate: DefaultRate, burst: DefaultRate * DefaultBurstFactor, tasks: DefaultMaxConcurrentTasks, bytes: DefaultMaxBytesPerDay, always: true}
	if c.def, err = overlay(builtin, cfg.Default, "policy.default"); err != nil {
		return nil, err
	}
	for name, l := range cfg.Roles {
		r, err := rbac.ParseRole(name)
		if err != nil {
			return nil, fmt.Errorf("policy.roles: %v", err)
		}
		if c.roles[r], err = overlay(c.def, l, "policy.roles."+name); err != nil {
			return nil, err
		}
	}
	for name, a := range cfg.RoleTotals {
		r, err := rbac.ParseRole(name)
		if err != nil {
			return nil, fmt.Errorf("policy.role_totals: %v", err)
		}
		if a.Rate <= 0 || a.Burst < 0 {
			return nil, fmt.Errorf("policy.role_totals.%s: rate must be positive and burst non-negative", name)
		}
		c.totals[r] = a
	}
	for id, l := range cfg.Peers {
		if _, err := identity.ParseID(id); err != nil {
			return nil, fmt.Errorf("policy.peers: %v", err)
		}
		if _, err := overlay(c.def, l, "policy.peers."+id); err != nil {
			return nil, err
		}
		c.peers[id] = l
	}
	for _, list := range []struct {
		name  string
		codes []string
		set   map[string]bool
	}{{"allow", cfg.Geo.Allow, c.allow}, {"deny", cfg.Geo.Deny, c.deny}} {
		for _, cc := range list.codes {
			if len(cc) != 2 || strings.ToUpper(cc) != cc || cc[0] < 'A' || cc[0] > 'Z' || cc[1] < 'A' || cc[1] > 'Z' {
				return nil, fmt.Errorf("policy.geo.%s: %q is not an ISO 3166-1 alpha-2 code (two capital letters, e.g. FR)", list.name, cc)
			}
			list.set[cc] = true
		}
	}
	switch cfg.Geo.Unknown {
	case "", "allow":
	case "deny":
		c.denyUnkn = true
	default:
		return nil, fmt.Errorf("policy.geo.unknown %q: use allow or deny", cfg.Geo.Unknown)
	}
	if cfg.MaxTrackedPeers == 0 {
		c.cfg.MaxTrackedPeers = DefaultMaxTrackedPeers
	}
	switch sh := cfg.OnBehalfOf.Share; {
	case sh == 0:
		c.cfg.OnBehalfOf.Share = DefaultOnBehalfOfShare
	case !(sh > 0 && sh <= 1):
		return nil, fmt.Errorf("policy.on_behalf_of.share %g: give a share in (0, 1]", sh)
	}
	if c.cfg.MaxTrackedPeers < 1 {
		return nil, fmt.Errorf("policy.max_tracked_peers %d: give a positive number", cfg.MaxTrackedPeers)
	}
	return c, nil
}

// overlay applies the set fields of l over base.
func overlay(base limits, l Limits, where string) (limits, error) {
	out := base
	switch {
	case l.Rate < 0:
		return out, fmt.Errorf("%s.rate %g: give a positive number of messages per second", where, l.Rate)
	case l.Burst < 0:
		return out, fmt.Errorf("%s.burst %d: give a positive number", where, l.Burst)
	case l.MaxConcurrentTasks < -1 || l.MaxBytesPerDay < -1:
		return out, fmt.Errorf("%s: quotas are positive numbers, or -1 for unlimited", where)
	}
	if l.Rate > 0 {
		out.rate = l.Rate
		out.burst = l.Rate * DefaultBurstFactor
	}
	if l.Burst > 0 {
		out.burst = float64(l.Burst)
	}
	if out.burst < 1 {
		out.burst = 1
	}
	if l.MaxConcurrentTasks != 0 {
		out.tasks = l.MaxConcurrentTasks
	}
	if l.MaxBytesPerDay != 0 {
		out.bytes = l.MaxBytesPerDay
	}
	if l.Window != nil {
		w, err := compileWindow(*l.Window, where+".time_window")
		if err != nil {
			return out, err
		}
		out.windows, out.always = []window{w}, false
	}
	return out, nil
}

func compileWindow(tw TimeWindow, where string) (window, error) {
	var w window
	for _, d := range tw.Days {
		wd, ok := dayNames[strings.ToLower(d)]
		if !ok {
			return w, fmt.Errorf("%s.days: %q is not a day (mon, tue, wed, thu, fri, sat, sun)", where, d)
		}
		w.days |= 1 << wd
	}
	for _, h := range tw.Hours {
		from, to, ok := strings.Cut(h, "-")
		a, errA := parseClock(from)
		b, errB := parseClock(to)
		if !ok || errA != nil || errB != nil || a == b || a == 24*60 {
			return w, fmt.Errorf("%s.hours: %q is not a range HH:MM-HH:MM (e.g. 09:00-17:30, or 22:00-06:00 across midnight)", where, h)
		}
		w.spans = append(w.spans, [2]int{a, b})
	}
	return w, nil
}

func parseClock(s string) (int, error) {
	var h, m int
	if len(s) != 5 || s[2] != ':' {
		return 0, fmt.Errorf("bad clock")
	}
	if _, err := fmt.Sscanf(s, "%02d:%02d", &h, &m); err != nil || h > 24 || m > 59 || (h == 24 && m != 0) {
		return 0, fmt.Errorf("bad clock")
	}
	return h*60 + m, nil
}

func (w window) contains(t time.Time) bool {
	if w.days != 0 && w.days&(1<<t.Weekday()) == 0 {
		return false
	}
	if len(w.spans) == 0 {
		return true
	}
	m := t.Hour()*60 + t.Minute()
	for _, s := range w.spans {
		if s[0] < s[1] {
			if m >= s[0] && m < s[1] {
				return true
			}
		} else if m >= s[0] || m < s[1] { // wraps midnight
			return true
		}
	}
	return false
}

// resolve computes the limits of a peer with the given roles: the most generous of its roles (or the
// defaults without roles), then the peer's own overrides.
func (c *compiled) resolve(peer string, roles []rbac.Role) limits {
	out := c.def
	first := true
	for _, r := range roles {
		l, ok := c.roles[r]
		if !ok {
			l = c.def
		}
		if first {
			out, first = l, false
			continue
		}
		out.rate = max(out.rate, l.rate)
		out.burst = max(out.burst, l.burst)
		out.tasks = maxQuota(out.tasks, l.tasks)
		out.bytes = maxQuota(out.bytes, l.bytes)
		if out.always || l.always {
			out.always, out.windows = true, nil
		} else {
			out.windows = append(slices.Clone(out.windows), l.windows...)
		}
	}
	if p, ok := c.peers[peer]; ok {
		out, _ = overlay(out, p, "") // validated in compileConfig
	}
	return out
}

func maxQuota[T int | int64](a, b T) T {
	if a == -1 || b == -1 {
		return -1
	}
	return max(a, b)
}
