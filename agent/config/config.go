// Package config holds the agent daemon's configuration: the YAML schema (configs/agent.example.yaml
// documents every field), its strict decoding, defaults and validation, and the translation of the
// authorization sections into the rbac, policy and reputation configurations.
package config

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/metrics"
	"github.com/custos-agent/custos/agent/policy"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/host/sandbox"
)

// MaxConfigSize bounds the configuration file.
const MaxConfigSize = 1 << 20

// ErrConfig: the configuration file is missing, does not decode strictly, or a value is invalid.
var ErrConfig = errors.New("invalid configuration")

// Config is the agent daemon's configuration (configs/agent.example.yaml documents every field). The
// YAML is decoded strictly: an unknown key, a wrong type, a second document or a duration without a unit
// is refused with the key's line.
type Config struct {
	// Transports are the transport plugins to start and where each listens.
	Transports []TransportConfig `yaml:"transports"`
	// Bootstrap peers are dialled at start and re-dialled whenever their session ends.
	Bootstrap []PeerConfig `yaml:"bootstrap"`
	// Handlers are the local task handlers by name.
	Handlers   map[string]HandlerConfig `yaml:"handlers"`
	Session    SessionConfig            `yaml:"session"`
	Delegation DelegationConfig         `yaml:"delegation"`
	Limits     LimitsConfig             `yaml:"limits"`
	Tasks      TasksConfig              `yaml:"tasks"`
	Redial     RedialConfig             `yaml:"redial"`
	Metrics    MetricsConfig            `yaml:"metrics"`
	Audit      AuditConfig              `yaml:"audit"`
	Log        LogConfig                `yaml:"log"`
	// Authorization, Policy, Reputation and Puzzles: who may do what, resource limits, trust, admission
	// puzzles (authz.go; docs/authorization.md).
	Authorization AuthorizationConfig `yaml:"authorization"`
	Policy        policy.Config       `yaml:"policy"`
	Reputation    ReputationConfig    `yaml:"reputation"`
	Puzzles       PuzzlesConfig       `yaml:"puzzles"`
	// Gateway is the HTTP API for programs that are not agents (agent/gateway; gateway.go).
	Gateway GatewayConfig `yaml:"gateway"`
	// Privacy: data minimisation (docs/privacy.md, ADR 0082).
	Privacy PrivacyConfig `yaml:"privacy"`
	// Rotation: the identity key's scheduled rotation and the destruction of retired keys (rotation.go).
	Rotation RotationConfig `yaml:"rotation"`
	// Discovery: this agent's record in the libp2p DHT (ADR 0070).
	Discovery DiscoveryConfig `yaml:"discovery"`
}

// DiscoveryConfig tunes this agent's record in the libp2p DHT (ADR 0070).
type DiscoveryConfig struct {
	// RepublishInterval: the record is published again this often, and at once when a listener's
	// addresses change (a plugin restart); it is valid for twice as long. Default 30m; 1s to 12h.
	RepublishInterval time.Duration `yaml:"republish_interval"`
}

// RecordLifetime is the lifetime of this agent's DHT records: twice the republish interval.
func (d DiscoveryConfig) RecordLifetime() time.Duration { return 2 * d.RepublishInterval }

// PrivacyConfig is data minimisation (docs/privacy.md).
type PrivacyConfig struct {
	// FullAddresses keeps whole IP addresses in audit records and logs; by default an IPv4 address is
	// truncated to its /24 and an IPv6 address to its /48.
	FullAddresses bool `yaml:"full_addresses"`
	// SealAuditFields seals the personal fields of audit records (another agent's ID as actor or
	// subject, addresses) under a key per subject, destroyed when the subject is erased (ADR 0099).
	// Off by default: the keys live in state.db, which the running agent holds, so while it runs its
	// audit log can be read (agentctl audit query, tests, SIEM shippers) only with those fields sealed.
	SealAuditFields bool `yaml:"seal_audit_fields"`
	// Retention: how long each store keeps what it holds about others (privacy.go, ADR 0092).
	Retention RetentionConfig `yaml:"retention"`
}

// TransportConfig is one transport plugin.
type TransportConfig struct {
	// Name is the transport ("tcp", "ws", "libp2p").
	Name string `yaml:"name"`
	// Plugin is the absolute path of the plugin binary.
	Plugin string `yaml:"plugin"`
	// SHA256 is the hex SHA-256 digest of the binary (sha256sum); the plugin is refused otherwise.
	SHA256 string `yaml:"sha256"`
	// Listen addresses ("0.0.0.0:7400" for tcp and ws, a multiaddr for libp2p). Empty: dial only.
	Listen []string `yaml:"listen"`
	// Options are passed to the plugin (transport-specific, e.g. handshake_timeout).
	Options map[string]string `yaml:"options"`
	// Sandbox is "required" (the default: a protection the kernel lacks stops the plugin), "best-effort"
	// (start with what the kernel offers, reported in status, metrics and the audit log) or "off"
	// (unconfined; for debugging only, logged as an error). ADR 0040.
	Sandbox string `yaml:"sandbox"`
	// User is the account the plugin runs as when the agent runs as root or with CAP_SETUID, CAP_SETGID
	// and CAP_CHOWN, as configs/custos.service runs it (default custos-transport if it exists, else
	// uid/gid 65534). Leave empty otherwise.
	User string `yaml:"user"`
}

// PeerConfig is a peer to dial: its agent ID (pinned) and one address.
type PeerConfig struct {
	ID string `yaml:"id"`
	// Transport names the transport; empty means inferred from the address (wss:// is ws, a multiaddr
	// starting with / is libp2p, host:port is tcp).
	Transport string `yaml:"transport"`
	// Address may be empty in a bootstrap entry: the agent is then found by ID through the libp2p DHT
	// (ADR 0070) and its addresses come from its verified agent record.
	Address string `yaml:"address"`
}

// HandlerConfig is one task handler: a built-in (echo, sha256) or a command.
type HandlerConfig struct {
	Builtin string      `yaml:"builtin"`
	Exec    *ExecConfig `yaml:"exec"`
}

// ExecConfig is a command handler: run without a shell, input on stdin, result from stdout.
type ExecConfig struct {
	// Command is the absolute path of the program.
	Command string   `yaml:"command"`
	Args    []string `yaml:"args"`
	// Env is the command's whole environment ("KEY=VALUE"); nothing else is passed.
	Env []string `yaml:"env"`
	// Timeout of one run (default 60s).
	Timeout time.Duration `yaml:"timeout"`
	// Sandbox confines the command like a transport plugin (ADR 0082): "required" (the default),
	// "best-effort" or "off" (unconfined, as the agent's user).
	Sandbox string `yaml:"sandbox"`
	// Network lets the confined command use the network (default: none).
	Network bool `yaml:"network"`
	// ReadPaths are host paths the confined command may read and execute besides the system's programs
	// and libraries (its own scripts or data).
	ReadPaths []string `yaml:"read_paths"`
	// Limits of the confined command (zero: the defaults).
	Limits ExecLimitsConfig `yaml:"limits"`
}

// ExecLimitsConfig are a confined exec handler's resource limits.
type ExecLimitsConfig struct {
	CPUTime   time.Duration `yaml:"cpu_time"`  // CPU time of each process (default: the timeout)
	Memory    int64         `yaml:"memory"`    // bytes of data memory per process (default 512 MiB)
	Processes int           `yaml:"processes"` // processes and threads (default 64)
	FileSize  int64         `yaml:"file_size"` // bytes of the largest file written (default 64 MiB)
}

// handler builds the tasks.Exec of an exec handler's configuration.
func (e *ExecConfig) handler(workRoot string) *tasks.Exec {
	return &tasks.Exec{Path: e.Command, Args: e.Args, Env: e.Env, Timeout: e.Timeout, WorkRoot: workRoot,
		Sandbox: sandbox.Mode(e.Sandbox), Network: e.Network, ReadPaths: e.ReadPaths,
		Limits: tasks.ExecLimits{CPUTime: e.Limits.CPUTime, Memory: e.Limits.Memory, Processes: e.Limits.Processes, FileSize: e.Limits.FileSize}}
}

// SessionConfig tunes the agent sessions.
type SessionConfig struct {
	ReauthInterval   time.Duration `yaml:"reauth_interval"`   // default 15m
	HandshakeTimeout time.Duration `yaml:"handshake_timeout"` // default 10s
	ReplayWindow     time.Duration `yaml:"replay_window"`     // default 30s
	Hybrid           bool          `yaml:"hybrid"`            // offer X25519+ML-KEM-768
	SignEnvelopes    bool          `yaml:"sign_envelopes"`    // sign every session envelope too (ADR 0032)
}

// DelegationConfig tunes the operational key delegations.
type DelegationConfig struct {
	Mode     string        `yaml:"mode"`     // delegated (default) or strict
	Lifetime time.Duration `yaml:"lifetime"` // default 1h
}

// LimitsConfig bounds the daemon's work.
type LimitsConfig struct {
	MaxConcurrentTasks int `yaml:"max_concurrent_tasks"` // default 4
	MaxQueuedTasks     int `yaml:"max_queued_tasks"`     // default 256
	// MaxUnacknowledgedTasks bounds one requester's stored tasks, unfinished or with a result it has not
	// acknowledged (default 64).
	MaxUnacknowledgedTasks int           `yaml:"max_unacknowledged_tasks"`
	MaxInboundHandshakes   int           `yaml:"max_inbound_handshakes"` // default 64
	DrainTimeout           time.Duration `yaml:"drain_timeout"`          // default 30s
}

// TasksConfig tunes task delivery.
type TasksConfig struct {
	RetryInterval   time.Duration `yaml:"retry_interval"`   // default 5s
	ResultRetention time.Duration `yaml:"result_retention"` // default 24h
	// UnacknowledgedRetention is how long a result a requester never acknowledges is kept (default 1h).
	UnacknowledgedRetention time.Duration `yaml:"unacknowledged_retention"`
	// Timeout: a submitted task without a result this long after it was submitted fails (code timeout)
	// and counts as a failure of the peer it was sent to (default 10m).
	Timeout time.Duration `yaml:"timeout"`
}

// RedialConfig bounds the backoff between dial attempts to a peer whose session is down.
type RedialConfig struct {
	Min time.Duration `yaml:"min"` // default 200ms
	Max time.Duration `yaml:"max"` // default 30s
}

// MetricsConfig is the Prometheus endpoint.
type MetricsConfig struct {
	// Address is host:port on loopback (default 127.0.0.1:9464; port 0 picks one).
	Address  string `yaml:"address"`
	Disabled bool   `yaml:"disabled"`
	// KeystoreCheckInterval is how often the identity's keystore is checked (custos_keystore_up; a
	// failure counts in custos_keystore_errors_total). Default 30s.
	KeystoreCheckInterval time.Duration `yaml:"keystore_check_interval"`
}

// AuditConfig tunes the audit log in <home>/audit.
type AuditConfig struct {
	CheckpointEvery    int           `yaml:"checkpoint_every"`    // default 1000 records
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"` // default 1m
	SegmentMaxBytes    int64         `yaml:"segment_max_bytes"`   // default 8 MiB
	SegmentMaxAge      time.Duration `yaml:"segment_max_age"`     // default 24h
	RetentionMaxAge    time.Duration `yaml:"retention_max_age"`   // default: keep everything
	RetentionMaxBytes  int64         `yaml:"retention_max_bytes"` // default: keep everything
	// OnFailure is what the agent does while audit records cannot be written (disk full, I/O error):
	// AuditRefuse (default) refuses new tasks, mutating control operations and inbound sessions until
	// writing works again; AuditContinue carries on unaudited (status and metrics still show it).
	OnFailure string `yaml:"on_failure"`
}

// The values of audit.on_failure (ADR 0089).
const (
	AuditRefuse   = "refuse"
	AuditContinue = "continue"
)

// LogConfig sets the log level (debug, info, warn, error; default info). agentctl --log-level wins.
type LogConfig struct {
	Level string `yaml:"level"`
}

// Defaults.
const (
	DefaultDrainTimeout          = 30 * time.Second
	DefaultKeystoreCheckInterval = 30 * time.Second
	DefaultMaxInboundHandshakes  = 64
	DefaultRedialMin             = 200 * time.Millisecond
	DefaultRedialMax             = 30 * time.Second
	// DefaultRepublishInterval and MaxRepublishInterval bound discovery.republish_interval (half of
	// agent/discovery's DefaultLifetime and MaxLifetime).
	DefaultRepublishInterval = 30 * time.Minute
	MaxRepublishInterval     = 12 * time.Hour
)

// LoadConfig reads and strictly decodes the configuration file at path, applies defaults and validates
// it. It returns the configuration and the SHA-256 (hex) of the file's bytes.
func LoadConfig(path string) (*Config, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrConfig, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigSize+1))
	if err != nil {
		return nil, "", fmt.Errorf("%w: %s: %v", ErrConfig, path, err)
	}
	if len(data) > MaxConfigSize {
		return nil, "", fmt.Errorf("%w: %s is larger than %d bytes", ErrConfig, path, MaxConfigSize)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", path, err)
	}
	sum := sha256.Sum256(data)
	return c, hex.EncodeToString(sum[:]), nil
}

// ParseConfig strictly decodes and validates a configuration.
func ParseConfig(data []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil && !errors.Is(err, io.EOF) {
		return nil, explainYAML(err, nil)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: more than one YAML document", ErrConfig)
	}
	if root.Kind != 0 {
		// Strictly: the same decoder options as a direct decode, from the parsed document, so that an
		// error can be explained with the key's path (explainYAML).
		sdec := yaml.NewDecoder(bytes.NewReader(data))
		sdec.KnownFields(true)
		if err := sdec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
			return nil, explainYAML(err, &root)
		}
	}
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) applyDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.Handlers == nil {
		c.Handlers = map[string]HandlerConfig{"echo": {Builtin: "echo"}, "sha256": {Builtin: "sha256"}}
	}
	def(&c.Session.ReauthInterval, 15*time.Minute)
	def(&c.Session.HandshakeTimeout, 10*time.Second)
	def(&c.Session.ReplayWindow, 30*time.Second)
	if c.Delegation.Mode == "" {
		c.Delegation.Mode = string(delegation.Delegated)
	}
	def(&c.Delegation.Lifetime, delegation.DefaultLifetime)
	if c.Limits.MaxConcurrentTasks == 0 {
		c.Limits.MaxConcurrentTasks = tasks.DefaultMaxConcurrent
	}
	if c.Limits.MaxQueuedTasks == 0 {
		c.Limits.MaxQueuedTasks = tasks.DefaultMaxQueued
	}
	if c.Limits.MaxUnacknowledgedTasks == 0 {
		c.Limits.MaxUnacknowledgedTasks = tasks.DefaultMaxUnacknowledged
	}
	if c.Limits.MaxInboundHandshakes == 0 {
		c.Limits.MaxInboundHandshakes = DefaultMaxInboundHandshakes
	}
	def(&c.Limits.DrainTimeout, DefaultDrainTimeout)
	def(&c.Tasks.RetryInterval, tasks.DefaultRetryInterval)
	def(&c.Tasks.ResultRetention, tasks.DefaultRetention)
	def(&c.Tasks.UnacknowledgedRetention, tasks.DefaultInboundRetention)
	def(&c.Tasks.Timeout, tasks.DefaultTimeout)
	def(&c.Redial.Min, DefaultRedialMin)
	def(&c.Redial.Max, DefaultRedialMax)
	def(&c.Discovery.RepublishInterval, DefaultRepublishInterval)
	if c.Metrics.Address == "" {
		c.Metrics.Address = metrics.DefaultAddr
	}
	if c.Metrics.KeystoreCheckInterval == 0 {
		c.Metrics.KeystoreCheckInterval = DefaultKeystoreCheckInterval
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	c.applyAuthzDefaults()    // authz.go
	c.Gateway.applyDefaults() // gateway.go
	if c.Audit.OnFailure == "" {
		c.Audit.OnFailure = AuditRefuse
	}
}

var hexDigest = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Validate checks every value and names the first bad one by its YAML path.
func (c *Config) Validate() error {
	bad := func(path, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrConfig, path, fmt.Sprintf(format, args...))
	}
	names := map[string]bool{}
	for i, t := range c.Transports {
		p := fmt.Sprintf("transports[%d]", i)
		if !transports.ValidName(t.Name) {
			return bad(p+".name", "%q is not a transport name (tcp, ws, libp2p)", t.Name)
		}
		if t.Name == "gateway" { // the binding name of the HTTP gateway's certificate (agent/gateway BindingName)
			return bad(p+".name", "%q is reserved: the HTTP gateway's certificate is bound under that name", t.Name)
		}
		if names[t.Name] {
			return bad(p+".name", "transport %s is configured twice", t.Name)
		}
		names[t.Name] = true
		if !filepath.IsAbs(t.Plugin) || filepath.Clean(t.Plugin) != t.Plugin {
			return bad(p+".plugin", "%q must be a clean absolute path", t.Plugin)
		}
		if !hexDigest.MatchString(t.SHA256) {
			return bad(p+".sha256", "want the 64-character lowercase hex SHA-256 of the plugin binary (sha256sum %s)", t.Plugin)
		}
		if _, err := sandbox.ParseMode(t.Sandbox); err != nil {
			return bad(p+".sandbox", "%v", err)
		}
		for j, a := range t.Listen {
			if err := transports.CheckText("address", a, transports.MaxAddrLen); err != nil {
				return bad(fmt.Sprintf("%s.listen[%d]", p, j), "%v", err)
			}
		}
	}
	for i, pc := range c.Bootstrap {
		p := fmt.Sprintf("bootstrap[%d]", i)
		if _, err := identity.ParseID(pc.ID); err != nil {
			return bad(p+".id", "%v", err)
		}
		if pc.Address == "" { // by agent ID only: resolved through the DHT (ADR 0070)
			if !names["libp2p"] {
				return bad(p, "a bootstrap entry without an address is found through the libp2p DHT: configure a libp2p transport, or give the address")
			}
			if pc.Transport != "" && !names[pc.Transport] {
				return bad(p, "transport %s is not configured under transports", pc.Transport)
			}
			continue
		}
		if err := transports.CheckText("address", pc.Address, transports.MaxAddrLen); err != nil {
			return bad(p+".address", "%v", err)
		}
		tn := pc.Transport
		if tn == "" {
			tn = InferTransport(pc.Address)
		}
		if !names[tn] {
			return bad(p, "transport %s (for %s) is not configured under transports", tn, pc.Address)
		}
	}
	for n, h := range c.Handlers {
		p := "handlers." + n
		if !tasks.ValidHandlerName(n) {
			return bad(p, "handler names are 1-32 of a-z 0-9 _ -, starting with a letter")
		}
		switch {
		case h.Builtin != "" && h.Exec != nil:
			return bad(p, "give builtin or exec, not both")
		case h.Builtin != "":
			if h.Builtin != "echo" && h.Builtin != "sha256" {
				return bad(p+".builtin", "%q: the built-in handlers are echo and sha256", h.Builtin)
			}
		case h.Exec != nil:
			e := h.Exec.handler("")
			if err := e.Check(); err != nil {
				return bad(p+".exec", "%v", err)
			}
		default:
			return bad(p, "give builtin (echo, sha256) or exec")
		}
	}
	if c.Session.ReauthInterval < time.Second {
		return bad("session.reauth_interval", "%v is below 1s", c.Session.ReauthInterval)
	}
	if c.Session.HandshakeTimeout < 100*time.Millisecond || c.Session.HandshakeTimeout > 5*time.Minute {
		return bad("session.handshake_timeout", "%v is outside 100ms..5m", c.Session.HandshakeTimeout)
	}
	if c.Session.ReplayWindow < time.Second || c.Session.ReplayWindow > 10*time.Minute {
		return bad("session.replay_window", "%v is outside 1s..10m", c.Session.ReplayWindow)
	}
	if c.Delegation.Mode != string(delegation.Delegated) && c.Delegation.Mode != string(delegation.Strict) {
		return bad("delegation.mode", "%q: want delegated or strict", c.Delegation.Mode)
	}
	if c.Delegation.Lifetime < time.Minute || c.Delegation.Lifetime > delegation.MaxLifetime {
		return bad("delegation.lifetime", "%v is outside 1m..%v", c.Delegation.Lifetime, delegation.MaxLifetime)
	}
	for _, l := range []struct {
		path string
		v    int
	}{{"limits.max_concurrent_tasks", c.Limits.MaxConcurrentTasks}, {"limits.max_queued_tasks", c.Limits.MaxQueuedTasks},
		{"limits.max_inbound_handshakes", c.Limits.MaxInboundHandshakes}, {"limits.max_unacknowledged_tasks", c.Limits.MaxUnacknowledgedTasks}} {
		if l.v < 1 || l.v > 100000 {
			return bad(l.path, "%d is outside 1..100000", l.v)
		}
	}
	for _, d := range []struct {
		path string
		v    time.Duration
	}{{"limits.drain_timeout", c.Limits.DrainTimeout}, {"tasks.retry_interval", c.Tasks.RetryInterval},
		{"tasks.result_retention", c.Tasks.ResultRetention}, {"tasks.unacknowledged_retention", c.Tasks.UnacknowledgedRetention}, {"tasks.timeout", c.Tasks.Timeout}, {"redial.min", c.Redial.Min}, {"redial.max", c.Redial.Max}} {
		if d.v <= 0 {
			return bad(d.path, "%v must be positive", d.v)
		}
	}
	if d := c.Discovery.RepublishInterval; d < time.Second || d > MaxRepublishInterval {
		return bad("discovery.republish_interval", "%v is outside 1s..%v", d, MaxRepublishInterval)
	}
	if c.Redial.Max < c.Redial.Min {
		return bad("redial.max", "%v is below redial.min %v", c.Redial.Max, c.Redial.Min)
	}
	if !c.Metrics.Disabled {
		if err := metrics.CheckAddr(c.Metrics.Address, false); err != nil {
			return bad("metrics.address", "%v", err)
		}
	}
	if c.Metrics.KeystoreCheckInterval < 0 {
		return bad("metrics.keystore_check_interval", "must not be negative (default 30s)")
	}
	if c.Audit.CheckpointEvery < 0 || c.Audit.SegmentMaxBytes < 0 || c.Audit.RetentionMaxBytes < 0 ||
		c.Audit.CheckpointInterval < 0 || c.Audit.SegmentMaxAge < 0 || c.Audit.RetentionMaxAge < 0 {
		return bad("audit", "values must not be negative")
	}
	if c.Audit.OnFailure != AuditRefuse && c.Audit.OnFailure != AuditContinue {
		return bad("audit.on_failure", "%q: want refuse (stop new work while the audit log cannot write) or continue", c.Audit.OnFailure)
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(c.Log.Level)); err != nil {
		return bad("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	if err := c.Privacy.Retention.validate(); err != nil { // privacy.go
		return err
	}
	if err := c.Rotation.validate(); err != nil { // rotation.go
		return err
	}
	if err := c.Gateway.validate(); err != nil { // gateway.go
		return fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return c.validateAuthz() // authz.go
}

// InferTransport names the transport an address belongs to: wss:// URLs are ws, multiaddrs (starting
// with /) are libp2p, anything else (host:port) is tcp.
func InferTransport(addr string) string {
	switch {
	case strings.HasPrefix(addr, "wss://") || strings.HasPrefix(addr, "ws://"):
		return "ws"
	case strings.HasPrefix(addr, "/"):
		return "libp2p"
	}
	return "tcp"
}

// Diff names the settings that differ between two configurations: top-level sections, and handlers and
// transports by name.
func Diff(old, cur *Config) []string {
	var out []string
	ov, nv := reflect.ValueOf(*old), reflect.ValueOf(*cur)
	t := ov.Type()
	for i := 0; i < t.NumField(); i++ {
		name := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
		switch name {
		case "handlers":
			out = append(out, diffMap("handlers.", old.Handlers, cur.Handlers)...)
		case "transports":
			om, nm := map[string]TransportConfig{}, map[string]TransportConfig{}
			for _, x := range old.Transports {
				om[x.Name] = x
			}
			for _, x := range cur.Transports {
				nm[x.Name] = x
			}
			for _, c := range diffMap("transports.", om, nm) {
				name := strings.TrimPrefix(c, "transports.")
				if o, ok := om[name]; ok && PluginOnlyChange(o, nm[name]) {
					c += ".plugin" // reloadable: the plugin binary is replaced (PluginUpdates)
				}
				out = append(out, c)
			}
		default:
			if !reflect.DeepEqual(ov.Field(i).Interface(), nv.Field(i).Interface()) {
				out = append(out, name)
			}
		}
	}
	sort.Strings(out)
	return out
}

// PluginOnlyChange reports whether two entries of one transport differ, and only in plugin and sha256
// (a new build of the plugin, pinned by its new checksum): a reload applies that without a restart.
func PluginOnlyChange(a, b TransportConfig) bool {
	if a.Plugin == b.Plugin && a.SHA256 == b.SHA256 {
		return false
	}
	b.Plugin, b.SHA256 = a.Plugin, a.SHA256
	return reflect.DeepEqual(a, b)
}

// PluginUpdates are the transports of cur whose entry in old differs only in plugin and sha256.
func PluginUpdates(old, cur *Config) []TransportConfig {
	var out []TransportConfig
	for _, n := range cur.Transports {
		for _, o := range old.Transports {
			if o.Name == n.Name && PluginOnlyChange(o, n) {
				out = append(out, n)
			}
		}
	}
	return out
}

func diffMap[V any](prefix string, a, b map[string]V) []string {
	var out []string
	for k, v := range a {
		if w, ok := b[k]; !ok || !reflect.DeepEqual(v, w) {
			out = append(out, prefix+k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, prefix+k)
		}
	}
	return out
}

// Registry builds the task handlers of the configuration.
func (c *Config) Registry(workRoot string) tasks.Registry {
	r := tasks.Registry{}
	for n, h := range c.Handlers {
		switch {
		case h.Builtin == "echo":
			r[n] = tasks.Echo()
		case h.Builtin == "sha256":
			r[n] = tasks.SHA256()
		case h.Exec != nil:
			r[n] = h.Exec.handler(workRoot)
		}
	}
	return r
}
