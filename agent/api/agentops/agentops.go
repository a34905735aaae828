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
	if in.AuditWriting != nil {
		s.AuditWriting = in.AuditWriting()
	}
	return s, nil
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
