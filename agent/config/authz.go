package config

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/custos-agent/custos/agent/policy"
	"github.com/custos-agent/custos/agent/puzzle"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/identity"
)

// AuthorizationConfig is the "authorization:" section: who may do what (docs/authorization.md).
type AuthorizationConfig struct {
	// Admins are the system administrators' agent IDs: only grants and revocations they sign count, and
	// each of them holds system_admin implicitly.
	Admins []string `yaml:"admins"`
	// RolesFile is a roles file in configs/roles.yaml's form; empty means the built-in seed roles (the
	// content of configs/roles.yaml).
	RolesFile string `yaml:"roles_file"`
	// DefaultPeerRoles are roles every authenticated peer holds besides its grants. Default: none (a peer
	// without a grant may only answer this agent's own requests; see docs/adr/0023).
	DefaultPeerRoles []string `yaml:"default_peer_roles"`
	// OwnRoles are roles this agent holds itself, besides the grants it holds (agentctl grant install)
	// that are valid here, when it acts for a peer: running its task needs process_tasks, sending a result
	// or feedback share_results (docs/adr/0094). Absent: [peer_node] (every agent may serve); [] makes
	// this agent serve only while it holds a peer_node grant of one of its administrators.
	OwnRoles *[]string `yaml:"own_roles"`
	// Local maps control-socket callers (by uid and primary gid, from SO_PEERCRED) to roles. Absent: the
	// daemon's own uid and root hold every role (the agent's owner operates it).
	Local *rbac.LocalConfig `yaml:"local"`
	// Enforce switches each limit family between enforcing (true, the default) and log-only (false: a
	// would-be denial is audited and counted, and the request goes through).
	Enforce EnforceConfig `yaml:"enforce"`
	// MaxGrantsPerSubject bounds the grants stored for one agent (default 32).
	MaxGrantsPerSubject int `yaml:"max_grants_per_subject"`
	// AdminLogs are files holding administrators' key event logs (copies of their <home>/kel.jsonl), read
	// at start and on reload into the peer cache (verified, fork-checked): grants, revocations and stake
	// tables are then judged against the administrators' rotations and recoveries before this agent meets
	// them or a holder presents their log (docs/adr/0050).
	AdminLogs []string `yaml:"admin_logs"`
	// RequireAdminLog refuses grants, revocations and stake tables of an administrator whose key event
	// log this agent does not hold, instead of judging them by the key the administrator's ID names
	// (generation 0), which a thief of a rotated-away inception key could use (docs/adr/0050).
	RequireAdminLog bool `yaml:"require_admin_log"`
}

// EnforceConfig says, per limit family, whether denials are enforced (true or absent) or only logged.
type EnforceConfig struct {
	Grants     *bool `yaml:"grants"`      // RBAC on peer messages and grants at the handshake
	Rate       *bool `yaml:"rate"`        // token buckets (per peer, role totals)
	Quota      *bool `yaml:"quota"`       // concurrent tasks, bytes per day
	TimeWindow *bool `yaml:"time_window"` // allowed days and hours
	Geo        *bool `yaml:"geo"`         // country allow/deny lists
}

// Enforced reads one authorization.enforce switch: absent means enforced.
func Enforced(b *bool) bool { return b == nil || *b }

// ReputationConfig is the "reputation:" section (docs/adr/0012). Zero or absent values are the defaults.
type ReputationConfig struct {
	// HalfLife of all evidence (default 168h).
	HalfLife time.Duration `yaml:"half_life"`
	// ErrorPenalty is how many good results one wrong result or protocol error cancels (default 5).
	ErrorPenalty float64 `yaml:"error_penalty"`
	// TargetResponse is the response time that scores 1 (default 2s).
	TargetResponse time.Duration `yaml:"target_response"`
	// Thresholds of the level transitions (score bounds, 0..1).
	Thresholds ThresholdsConfig `yaml:"thresholds"`
	// MinEvidence is how much decayed evidence each transition needs.
	MinEvidence MinEvidenceConfig `yaml:"min_evidence"`
	// SweepInterval is how often decay alone re-evaluates every level (default 1h).
	SweepInterval time.Duration `yaml:"sweep_interval"`
}

// ThresholdsConfig overrides reputation.DefaultThresholds field by field.
type ThresholdsConfig struct {
	TrustedEnter    *float64 `yaml:"trusted_enter"`
	TrustedLeave    *float64 `yaml:"trusted_leave"`
	SuperEnter      *float64 `yaml:"super_enter"`
	SuperLeave      *float64 `yaml:"super_leave"`
	RestrictedEnter *float64 `yaml:"restricted_enter"`
	RestrictedLeave *float64 `yaml:"restricted_leave"`
	BlockedEnter    *float64 `yaml:"blocked_enter"`
}

// MinEvidenceConfig overrides reputation.DefaultMinEvidence field by field.
type MinEvidenceConfig struct {
	Trusted    *float64 `yaml:"trusted"`
	Super      *float64 `yaml:"super"`
	Restricted *float64 `yaml:"restricted"`
	Blocked    *float64 `yaml:"blocked"`
}

// PuzzlesConfig is the "puzzles:" section: the proof of work asked at the handshake (docs/adr/0014).
type PuzzlesConfig struct {
	// Disabled turns admission puzzles off (this agent then asks none; it still solves those it is asked).
	Disabled bool `yaml:"disabled"`
	// NewBits and RestrictedBits are the base difficulty asked of New and Restricted peers (defaults 16
	// and 20; Trusted and Super peers are asked nothing unless the agent is under load).
	NewBits        *uint8 `yaml:"new_bits"`
	RestrictedBits *uint8 `yaml:"restricted_bits"`
	// LoadStart is the share of limits.max_inbound_handshakes in progress from which everyone pays
	// BitsPerDoubling extra bits, and as many more per doubling of the load (defaults 0.5 and 2).
	LoadStart       float64 `yaml:"load_start"`
	BitsPerDoubling uint8   `yaml:"bits_per_doubling"`
	// MaxBits caps the difficulty (default 24).
	MaxBits uint8 `yaml:"max_bits"`
	// TTL is how long a challenge may be solved (default 30s).
	TTL time.Duration `yaml:"ttl"`
}

// Defaults of the authorization sections.
const (
	DefaultSweepInterval = time.Hour
	DefaultPuzzleTTL     = 30 * time.Second
)

func (c *Config) applyAuthzDefaults() {
	if c.Reputation.SweepInterval == 0 {
		c.Reputation.SweepInterval = DefaultSweepInterval
	}
	if c.Puzzles.TTL == 0 {
		c.Puzzles.TTL = DefaultPuzzleTTL
	}
}

// validateAuthz checks the authorization, policy, reputation and puzzles sections and names the first
// bad value by its YAML path.
func (c *Config) validateAuthz() error {
	bad := func(path, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrConfig, path, fmt.Sprintf(format, args...))
	}
	a := c.Authorization
	seen := map[string]bool{}
	for i, s := range a.Admins {
		id, err := identity.ParseID(s)
		if err != nil {
			return bad(fmt.Sprintf("authorization.admins[%d]", i), "%v", err)
		}
		if seen[id.String()] {
			return bad(fmt.Sprintf("authorization.admins[%d]", i), "%s is listed twice", id)
		}
		seen[id.String()] = true
	}
	if _, err := c.rolesTable(); err != nil {
		return bad("authorization.roles_file", "%v", err)
	}
	if _, err := ParseRoles(a.DefaultPeerRoles); err != nil {
		return bad("authorization.default_peer_roles", "%v", err)
	}
	if _, err := ParseRoles(a.OwnRoleNames()); err != nil {
		return bad("authorization.own_roles", "%v", err)
	}
	if a.Local != nil {
		if _, err := a.Local.Compile(rbac.Lookups{}); err != nil {
			return bad("authorization.local", "%v", err)
		}
	}
	for i, p := range a.AdminLogs {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return bad(fmt.Sprintf("authorization.admin_logs[%d]", i), "%q must be a clean absolute path", p)
		}
	}
	if a.MaxGrantsPerSubject < 0 || a.MaxGrantsPerSubject > 1000 {
		return bad("authorization.max_grants_per_subject", "%d is outside 0..1000 (0: the default, 32)", a.MaxGrantsPerSubject)
	}

	if c.Policy.LogOnly != (policy.LogOnly{}) {
		return bad("policy.log_only", "set log-only mode with authorization.enforce (rate, quota, time_window, geo: false)")
	}
	if g := c.Policy.Geo; len(g.Allow) > 0 || len(g.Deny) > 0 || g.Unknown == "deny" {
		if g.Database == "" {
			return bad("policy.geo.database", "the geo rules need a MaxMind-format country database (.mmdb)")
		}
	}
	if g := c.Policy.Geo.Database; g != "" && (!filepath.IsAbs(g) || filepath.Clean(g) != g) {
		return bad("policy.geo.database", "%q must be a clean absolute path", g)
	}
	if _, err := c.PolicyConfig(); err != nil {
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}

	if _, err := c.ReputationSettings(); err != nil {
		return bad("reputation", "%v", err)
	}
	r := c.Reputation
	if r.HalfLife != 0 && r.HalfLife < time.Minute {
		return bad("reputation.half_life", "%v is below 1m", r.HalfLife)
	}
	if r.ErrorPenalty != 0 && r.ErrorPenalty < 1 {
		return bad("reputation.error_penalty", "%g: give at least 1", r.ErrorPenalty)
	}
	if r.TargetResponse < 0 || r.SweepInterval < time.Minute {
		return bad("reputation", "target_response must not be negative and sweep_interval must be at least 1m")
	}
	p := c.Puzzles
	for _, b := range []struct {
		path string
		v    *uint8
	}{{"puzzles.new_bits", p.NewBits}, {"puzzles.restricted_bits", p.RestrictedBits}} {
		if b.v != nil && *b.v > puzzle.MaxDifficulty {
			return bad(b.path, "%d exceeds %d bits", *b.v, puzzle.MaxDifficulty)
		}
	}
	if p.MaxBits > puzzle.MaxDifficulty {
		return bad("puzzles.max_bits", "%d exceeds %d bits", p.MaxBits, puzzle.MaxDifficulty)
	}
	if p.LoadStart < 0 || p.LoadStart > 1000 {
		return bad("puzzles.load_start", "%g is outside 0..1000", p.LoadStart)
	}
	if p.TTL < time.Second || p.TTL > 10*time.Minute {
		return bad("puzzles.ttl", "%v is outside 1s..10m", p.TTL)
	}
	return nil
}

// rolesTable returns the role table: the roles file's, or the built-in seed roles.
func (c *Config) rolesTable() (*rbac.Roles, error) {
	f := c.Authorization.RolesFile
	if f == "" {
		return rbac.SeedRoles(), nil
	}
	if !filepath.IsAbs(f) || filepath.Clean(f) != f {
		return nil, fmt.Errorf("%q must be a clean absolute path", f)
	}
	b, err := os.ReadFile(f)
	if err != nil {
		return nil, err
	}
	rs, err := rbac.ParseRoles(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f, err)
	}
	return rs, nil
}

// DefaultOwnRoles are the roles an agent holds itself when authorization.own_roles is absent.
var DefaultOwnRoles = []string{string(rbac.PeerNode)}

// OwnRoleNames returns authorization.own_roles, or DefaultOwnRoles when it is absent.
func (a AuthorizationConfig) OwnRoleNames() []string {
	if a.OwnRoles == nil {
		return DefaultOwnRoles
	}
	return *a.OwnRoles
}

// ParseRoles parses role names (authorization.default_peer_roles).
func ParseRoles(ss []string) ([]rbac.Role, error) {
	var out []rbac.Role
	for _, s := range ss {
		r, err := rbac.ParseRole(s)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// RBACConfig is the rbac.Config of the configuration. selfUID is the daemon's uid: without an
// authorization.local section, it and root hold every role.
func (c *Config) RBACConfig(selfUID uint32) (rbac.Config, error) {
	roles, err := c.rolesTable()
	if err != nil {
		return rbac.Config{}, err
	}
	out := rbac.Config{Roles: roles, MaxGrantsPerSubject: c.Authorization.MaxGrantsPerSubject}
	for _, s := range c.Authorization.Admins {
		id, err := identity.ParseID(s)
		if err != nil {
			return rbac.Config{}, err
		}
		out.Admins = append(out.Admins, id)
	}
	if c.Authorization.Local == nil {
		out.Local = rbac.NewLocalRoles(map[uint32][]rbac.Role{selfUID: rbac.AllRoles, 0: rbac.AllRoles}, nil)
	} else if out.Local, err = c.Authorization.Local.Compile(rbac.Lookups{}); err != nil {
		return rbac.Config{}, err
	}
	return out, nil
}

// PolicyConfig is the policy.Config in force: the policy section with the log-only switches of
// authorization.enforce. It is checked by building a policy (without the geo database, which is opened at
// start).
func (c *Config) PolicyConfig() (policy.Config, error) {
	pc := c.Policy
	e := c.Authorization.Enforce
	pc.LogOnly = policy.LogOnly{Rate: !Enforced(e.Rate), Quota: !Enforced(e.Quota), TimeWindow: !Enforced(e.TimeWindow), Geo: !Enforced(e.Geo)}
	check := pc
	check.Geo = policy.GeoConfig{} // the country codes are checked below; the database is opened at start
	if _, err := policy.New(check, policy.Options{}); err != nil {
		return policy.Config{}, err
	}
	for _, l := range []struct {
		name  string
		codes []string
	}{{"allow", pc.Geo.Allow}, {"deny", pc.Geo.Deny}} {
		for _, cc := range l.codes {
			if len(cc) != 2 || cc[0] < 'A' || cc[0] > 'Z' || cc[1] < 'A' || cc[1] > 'Z' {
				return policy.Config{}, fmt.Errorf("policy.geo.%s: %q is not an ISO 3166-1 alpha-2 code (two capital letters, e.g. FR)", l.name, cc)
			}
		}
	}
	if u := pc.Geo.Unknown; u != "" && u != "allow" && u != "deny" {
		return policy.Config{}, fmt.Errorf("policy.geo.unknown %q: use allow or deny", u)
	}
	return pc, nil
}

// ReputationSettings is the reputation.Config of the configuration, with the puzzle difficulties of the
// puzzles section in the level effects.
func (c *Config) ReputationSettings() (reputation.Config, error) {
	r := c.Reputation
	out := reputation.Config{HalfLife: r.HalfLife, ErrorPenalty: r.ErrorPenalty, TargetResponse: r.TargetResponse,
		Thresholds: reputation.DefaultThresholds(), MinEvidence: reputation.DefaultMinEvidence(), Effects: reputation.DefaultEffects()}
	set := func(dst *float64, v *float64) {
		if v != nil {
			*dst = *v
		}
	}
	t, m := &out.Thresholds, &out.MinEvidence
	set(&t.TrustedEnter, r.Thresholds.TrustedEnter)
	set(&t.TrustedLeave, r.Thresholds.TrustedLeave)
	set(&t.SuperEnter, r.Thresholds.SuperEnter)
	set(&t.SuperLeave, r.Thresholds.SuperLeave)
	set(&t.RestrictedEnter, r.Thresholds.RestrictedEnter)
	set(&t.RestrictedLeave, r.Thresholds.RestrictedLeave)
	set(&t.BlockedEnter, r.Thresholds.BlockedEnter)
	set(&m.Trusted, r.MinEvidence.Trusted)
	set(&m.Super, r.MinEvidence.Super)
	set(&m.Restricted, r.MinEvidence.Restricted)
	set(&m.Blocked, r.MinEvidence.Blocked)
	ok := 0 <= t.BlockedEnter && t.BlockedEnter < t.RestrictedEnter && t.RestrictedEnter < t.RestrictedLeave &&
		t.RestrictedLeave <= t.TrustedLeave && t.TrustedLeave < t.TrustedEnter && t.TrustedEnter <= t.SuperLeave &&
		t.SuperLeave < t.SuperEnter && t.SuperEnter <= 1
	if !ok {
		return out, fmt.Errorf("thresholds must satisfy 0 <= blocked_enter < restricted_enter < restricted_leave <= trusted_leave < trusted_enter <= super_leave < super_enter <= 1 (with the defaults for those not given), got %+v", *t)
	}
	if m.Trusted < 0 || m.Super < 0 || m.Restricted < 0 || m.Blocked < 0 {
		return out, fmt.Errorf("min_evidence values must not be negative")
	}
	for _, l := range []struct {
		level reputation.Level
		bits  *uint8
	}{{reputation.New, c.Puzzles.NewBits}, {reputation.Restricted, c.Puzzles.RestrictedBits}} {
		if l.bits != nil {
			e := out.Effects[l.level]
			e.PuzzleBits = *l.bits
			out.Effects[l.level] = e
		}
	}
	return out, nil
}
