// Package agentops is the agent's own part of the control API: status, config.reload, identity.reload
// and audit.head (their permissions and types: agent/api.Table). The status is assembled here from
// small interfaces (the identity, the delegation manager, the session manager, the task engine) and the
// daemon's own facts (Info); the reloads call the daemon's lifecycle through functions. It never holds
// the daemon.
package agentops

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
)

// Identity is the opened identity (agent/custody.Custody).
type Identity interface {
	ID() identity.ID
	Current() custody.Generation
	KeystoreURI() string
	// Ping checks that the keystore holding the current key answers.
	Ping(ctx context.Context) error
}

// Delegations is the delegation manager (agent/delegation.Manager).
type Delegations interface {
	Mode() delegation.Mode
	Live() []*delegation.Keys
}

// Tasks is the task engine (agent/tasks.Engine).
type Tasks interface {
	Handlers() []string
	Stats() tasks.Stats
}

// AuditLog is the audit log (audit.Log).
type AuditLog interface {
	Head(ctx context.Context) (audit.Head, error)
}

// Info are the daemon's facts the status reports; the functions read values that change while it runs.
type Info struct {
	Version    string
	Started    time.Time
	ConfigPath string
	// Digest is the running configuration's digest; Control the socket's path; MetricsURL the metrics
	// endpoint ("" when disabled).
	Digest, Control, MetricsURL func() string
	// Sessions are the live sessions; Transports the configured transports with their plugins.
	Sessions   func() []api.SessionStatus
	Transports func() []api.TransportStatus
	// Config is the configuration in force: the file last loaded, with the parts that need a restart as
	// they were at the start (nil: the status does not compare it with the file).
	Config func() *config.Config
	// AuditWriting is the audit log's write state and the gate's decision (agent/authz, ADR 0089).
	AuditWriting func() api.AuditWriting
}

// Deps are what the agent operations need.
type Deps struct {
	Identity    Identity
	Delegations Delegations
	Tasks       Tasks
	Audit       AuditLog
	Info        Info
	// Reload re-reads the configuration file and the identity (daemon.Reload, what SIGHUP does).
	Reload func(ctx context.Context) (*api.ReloadResult, error)
	// ReloadIdentity picks up a rotation or recovery another process made and returns the key event
	// records it wrote (actor: who asked).
	ReloadIdentity func(ctx context.Context, actor string) ([]audit.Record, error)
}

// New is the agent's own Service.
func New(d Deps) api.Service {
	o := &ops{d}
	return api.Handlers{
		api.OpStatus:         o.status,
		api.OpConfigReload:   o.reload,
		api.OpIdentityReload: o.identityReload,
		api.OpAuditHead:      o.auditHead,
	}
}

type ops struct{ Deps }

// KeystoreBackend is the scheme of a keystore URI ("pkcs11", "tpm", "software").
func KeystoreBackend(uri string) string {
	s, _, _ := strings.Cut(uri, ":")
	return s
}

func (d *ops) status(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
		return nil, err
	}
	in := d.Info
	s := api.Status{AgentID: d.Identity.ID().String(), Generation: d.Identity.Current().Generation,
		Keystore: KeystoreBackend(d.Identity.KeystoreURI()), DelegationMode: string(d.Delegations.Mode()), Version: in.Version,
		PID: os.Getpid(), Started: in.Started, Config: in.ConfigPath, ConfigDigest: in.Digest(), Control: in.Control(),
		Metrics: in.MetricsURL(), Sessions: in.Sessions(), Transports: in.Transports(), Handlers: d.Tasks.Handlers(), Tasks: d.Tasks.Stats()}
	if live := d.Delegations.Live(); len(live) > 0 {
		s.DelegationExpires = live[0].NotAfter().UTC()
	}
	if s.Sessions == nil {
		s.Sessions = []api.SessionStatus{}
	}
	s.ConfigPendingRestart, s.ConfigFileDigest, s.ConfigFileError = pendingRestart(in.ConfigPath, s.ConfigDigest, in.Config)
	s.Health = d.health(ctx)
	if in.AuditWriting != nil {
		s.AuditWriting = in.AuditWriting()
	}
	return s, nil
}

// healthTimeout bounds the keystore's answer to the status's health check (a hung device is reported as
// not answering, not as a hung status).
const healthTimeout = 5 * time.Second

// health asks the keystore (custody.Ping) whether it answers now (the audit log's write state is
// Info.AuditWriting).
func (d *ops) health(ctx context.Context) api.StatusHealth {
	var h api.StatusHealth
	pctx, cancel := context.WithTimeout(ctx, healthTimeout)
	err := d.Identity.Ping(pctx)
	cancel()
	h.Keystore = api.PartHealth{OK: err == nil, Detail: KeystoreBackend(d.Identity.KeystoreURI())}
	if err != nil {
		h.Keystore.Error = err.Error()
	}
	return h
}

// pendingRestart compares the configuration in force with the file it was loaded from. When the file is
// the one last loaded (its digest is digest), what differs are the parts a reload does not apply: they
// wait for a restart. When the file has changed since, it returns the file's digest (a reload applies
// it), or why it would not load.
func pendingRestart(path, digest string, inForce func() *config.Config) (pending []string, fileDigest, fileErr string) {
	pending = []string{}
	if inForce == nil || path == "" {
		return pending, "", ""
	}
	cfg, d, err := config.LoadConfig(path)
	switch {
	case err != nil:
		return pending, "", err.Error()
	case d != digest:
		return pending, d, ""
	}
	if cur := inForce(); cur != nil {
		pending = append(pending, config.Diff(cur, cfg)...)
	}
	return pending, "", ""
}

func (d *ops) reload(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
		return nil, err
	}
	res, err := d.Reload(ctx)
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "%v", err)
	}
	return res, nil
}

func (d *ops) identityReload(ctx context.Context, c rbac.Cred, raw json.RawMessage) (any, error) {
	if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
		return nil, err
	}
	before := d.Identity.Current().Generation
	recs, err := d.ReloadIdentity(ctx, fmt.Sprintf("uid:%d", c.UID))
	if err != nil {
		return nil, control.Errorf(control.CodeFailed, "identity reload: %v", err)
	}
	res := &api.IdentityReloadResult{Generation: d.Identity.Current().Generation, PreviousGeneration: before, Changed: len(recs) > 0, Recorded: []string{}}
	for _, r := range recs {
		res.Recorded = append(res.Recorded, string(r.Type))
	}
	return res, nil
}

func (d *ops) auditHead(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	if err := control.DecodeArgs(raw, &struct{}{}); err != nil {
		return nil, err
	}
	return d.Audit.Head(ctx)
}
