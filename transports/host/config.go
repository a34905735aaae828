// Package host is the agent side of the transport plugins: it launches each plugin binary (absolute path,
// SHA-256 checked on the exact bytes executed, AutoMTLS, no inherited environment, no terminal), has the
// plugin prove possession of its transport key, obtains a binding for that key from a BindingAuthority,
// supervises the process (health checks, restarts with exponential backoff, restart events), and gives the
// agent core connections it can trust as far as the transport goes: every value a plugin returns is
// validated, and every peer binding is verified here, never taken on the plugin's word.
package host

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/custos-agent/custos/transports"
	"github.com/custos-agent/custos/transports/host/sandbox"
)

// Config describes one transport plugin.
type Config struct {
	// Name is the transport the plugin must implement ("tcp", "ws", "libp2p").
	Name string
	// Path is the absolute path of the plugin binary.
	Path string
	// SHA256 is the hex SHA-256 digest of the binary (see FileSHA256). Required.
	SHA256 string
	// Options are passed to the plugin's Configure (transport-specific).
	Options map[string]string
	// Env is the plugin's whole environment besides go-plugin's own variables ("KEY=VALUE"). Nothing of
	// the host's environment is inherited.
	Env []string
	// Authority binds the plugin's transport key and verifies peers' bindings. Required.
	Authority BindingAuthority
	// TransportKey, when set, is the plugin's transport key: the host hands its seed to every process it
	// starts, so the transport identity (the libp2p peer ID) is the same across plugin restarts (ADR 0070;
	// LoadTransportKey keeps it in the agent's state). Nil: each process generates a fresh key.
	TransportKey ed25519.PrivateKey
	// Judge, when set, answers the plugin's questions about DHT records (ADR 0070); without it a plugin
	// with a DHT refuses every record.
	Judge RecordJudge
	// AnswerLookups, when set, is asked at every start of a plugin process (the first and each restart or
	// update) whether the plugin's DHT answers other nodes' lookups (server mode) or only asks (client
	// mode): the agent judges the self operation self.lookup.answer (discover_peers) against its own roles
	// (ADR 0094, amendment). Nil: the plugin is not told (DHT_MODE_UNSPECIFIED: server, as before). Set it
	// only for a transport with a DHT: a plugin that does not confirm client mode is logged as a warning.
	AnswerLookups func(ctx context.Context) bool
	// Observer is told about restarts and refused peers (metrics, session re-establishment). Optional.
	Observer Observer
	// Logger defaults to slog.Default().
	Logger *slog.Logger

	// CallTimeout bounds every unary plugin call (default 10 s).
	CallTimeout time.Duration
	// DialTimeout bounds a Dial, transport handshake included (default 20 s).
	DialTimeout time.Duration
	// StartTimeout bounds a plugin start: process, go-plugin handshake, configure, bind (default 30 s).
	StartTimeout time.Duration
	// HealthInterval is the period of health checks (default 2 s).
	HealthInterval time.Duration
	// BackoffMin and BackoffMax bound the delay before a restart attempt (default 200 ms and 30 s); the
	// delay doubles with each consecutive failure, with jitter (internal/backoff).
	BackoffMin, BackoffMax time.Duration
	// Window is the flow-control credit, in bytes, granted to the plugin per connection (default 1 MiB).
	Window int64
	// AcceptQueue bounds verified inbound connections waiting in each Listener (default 64).
	AcceptQueue int

	// Sandbox confines every plugin process (ADR 0040): sandbox.Required (the default) refuses to start
	// a plugin when the kernel lacks a protection, sandbox.BestEffort starts it with what there is,
	// sandbox.Off runs it unconfined (tests; the daemon logs it loudly).
	Sandbox sandbox.Mode
	// User is the account plugins run as when the agent runs as root or with CAP_SETUID, CAP_SETGID and
	// CAP_CHOWN (default sandbox.DefaultUser when it exists, else uid/gid 65534). Must be empty otherwise.
	User string
	// BindPorts, when non-nil, are the only TCP ports the plugin may bind (Landlock; 0 = ephemeral).
	BindPorts []uint16
	// SandboxProbe replaces the kernel probe (sandbox.ProbeKernel): tests simulate a kernel that lacks
	// a protection with it.
	SandboxProbe func() sandbox.Kernel
}

func (c *Config) sandboxOptions() sandbox.Options {
	probe := c.SandboxProbe
	if probe == nil {
		probe = sandbox.ProbeKernel
	}
	o := sandbox.Options{Mode: c.Sandbox, User: c.User, BindPorts: c.BindPorts}
	if c.Sandbox != sandbox.Off {
		o.Kernel = probe()
	}
	return o
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Logger = c.Logger.With("transport", c.Name)
	if c.Observer == nil {
		c.Observer = NopObserver{}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.CallTimeout, 10*time.Second)
	def(&c.DialTimeout, 20*time.Second)
	def(&c.StartTimeout, 30*time.Second)
	def(&c.HealthInterval, 2*time.Second)
	def(&c.BackoffMin, 200*time.Millisecond)
	def(&c.BackoffMax, 30*time.Second)
	if c.Window <= 0 {
		c.Window = 1 << 20
	}
	if c.AcceptQueue <= 0 {
		c.AcceptQueue = 64
	}
	if c.Sandbox == "" {
		c.Sandbox = sandbox.Required
	}
}

// validate checks the configuration and returns the decoded digest.
func (c *Config) validate() ([]byte, error) {
	if !transports.ValidName(c.Name) {
		return nil, fmt.Errorf("transport name %q: want 1-32 of [a-z0-9-]", c.Name)
	}
	if err := checkPluginPath(c.Path); err != nil {
		return nil, err
	}
	want, err := hex.DecodeString(strings.TrimSpace(c.SHA256))
	if err != nil || len(want) != 32 {
		return nil, fmt.Errorf("plugin %s: SHA256 must be 64 hex digits (sha256sum %s), got %q", c.Path, c.Path, c.SHA256)
	}
	if c.Authority == nil {
		return nil, fmt.Errorf("plugin %s: a BindingAuthority is required", c.Path)
	}
	if c.TransportKey != nil && len(c.TransportKey) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("plugin %s: transport key of %d bytes, want %d", c.Path, len(c.TransportKey), ed25519.PrivateKeySize)
	}
	for _, kv := range c.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("plugin %s: environment entry %q is not KEY=VALUE", c.Path, kv)
		}
	}
	if _, err := sandbox.ParseMode(string(c.Sandbox)); err != nil {
		return nil, fmt.Errorf("plugin %s: %w", c.Path, err)
	}
	if c.BackoffMin > c.BackoffMax {
		return nil, fmt.Errorf("BackoffMin %v exceeds BackoffMax %v", c.BackoffMin, c.BackoffMax)
	}
	return want, nil
}

// RestartEvent describes a plugin restart.
type RestartEvent struct {
	Transport string
	// Restarts is the number of restarts of this transport so far, this one included.
	Restarts uint64
	// Cause is why the previous process was considered dead.
	Cause error
	// PID is the new process.
	PID int
	// Downtime is how long the transport was unavailable.
	Downtime time.Duration
	// Updated is true when the restart replaced the binary on request (Transport.Update): no crash, not
	// counted in Restarts. Path and SHA256 are the binary now running; PreviousSHA256 the one replaced
	// (set for an update, also when it failed and the previous binary runs again).
	Updated        bool
	Path, SHA256   string
	PreviousSHA256 string
}

// CrashEvent describes a plugin process found dead (it exited, or failed its health check), reported
// before the supervisor tries to replace it: a crash whose restart never succeeds is still reported.
type CrashEvent struct {
	Transport string
	// Cause is why the process is considered dead.
	Cause error
	// PID is the dead process.
	PID int
	// At is when the supervisor found it dead.
	At time.Time
}

// StartFailure describes a failed launch of a plugin process while the supervisor restarts it: the file
// refused for a checksum mismatch (errors.Is(Err, ErrChecksum)), or a process that did not come up.
type StartFailure struct {
	Transport, Path string
	// Attempt counts the failed launches of this restart, from 1.
	Attempt int
	Err     error
}

// Observer receives supervision events. Implementations must not block: a metrics counter, a channel
// send with default, a goroutine. Connections of the old process are already failed when PluginRestarted
// is called; listeners have been re-opened; the owner re-dials and re-runs its handshakes.
type Observer interface {
	// PluginCrashed is called when a plugin process is found dead, before it is restarted (not during the
	// drain, when it is not restarted).
	PluginCrashed(CrashEvent)
	// PluginStartFailed is called for each failed launch while a plugin is restarted (or updated).
	PluginStartFailed(StartFailure)
	// PluginRestarted is called after a dead plugin was replaced by a working one.
	PluginRestarted(RestartEvent)
	// PeerRefused is called when a connection is refused because its peer binding does not verify or names
	// an unexpected agent.
	PeerRefused(transport, remoteAddr string, err error)
}

// NopObserver ignores every event; embed it to implement only part of Observer.
type NopObserver struct{}

// PluginCrashed implements Observer.
func (NopObserver) PluginCrashed(CrashEvent) {}

// PluginStartFailed implements Observer.
func (NopObserver) PluginStartFailed(StartFailure) {}

// PluginRestarted implements Observer.
func (NopObserver) PluginRestarted(RestartEvent) {}

// PeerRefused implements Observer.
func (NopObserver) PeerRefused(string, string, error) {}
