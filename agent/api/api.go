// Package api is the agent daemon's control API: for every operation its name, the rbac operation (and so
// the permission) a caller needs, whether it changes anything, and its request and response types, in one
// table (Table); the Go types of every request and response; and a typed client (Client) over the
// control socket (agent/control), which agentctl uses.
//
// Handlers live with the room whose work they do, not in the daemon: each room offers a Service (its
// handlers, by operation name), and the daemon joins the services it builds (Join) and hands the result
// to Ops, which pairs every handler with its table entry. agent/control's server enforces the entry's
// permission on every request, in one place, before the handler runs.
//
// Adding an operation: a row in Table (and in agent/rbac's table if it needs a new permission), its
// request and response types in types.go, a Client method, and its handler in the Service of its room.
// A room that agent/api does not import (agent/authz) declares its Service itself; a room that
// agent/api imports for its types (agent/tasks, agent/consensus, agent/reputation) has its handlers in a
// subpackage here, named after the room: agent/api/taskops (task.*), agent/api/peerops (peers.*),
// agent/api/agentops (status, reloads, audit head). Each takes its dependencies as small interfaces in a
// Deps struct, never the daemon. A new room adds one Service and one line in the daemon's Start that
// passes it to Join; nothing else in the daemon changes. TestTableMatchesRBAC keeps Table
// and the control operations of agent/rbac's table the same set: an operation cannot be served without a
// permission, and rbac names no control operation that nothing serves.
package api

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/audit"
)

// Names inside the agent's home directory that the control API's users need.
const (
	// ControlFile is the control socket (agent/control), mode 0600.
	ControlFile = "control.sock"
	// AuditDir is the audit log (audit.Open).
	AuditDir = "audit"
)

// Control operations: the names on the wire ("op" of a request). Table gives each its permission and
// types.
const (
	OpStatus            = "status"              // {} -> Status
	OpPeersList         = "peers.list"          // {} -> []PeerStatus
	OpPeersConnect      = "peers.connect"       // ConnectArgs -> SessionStatus
	OpPeersBlock        = "peers.block"         // PeerArgs -> reputation.Report
	OpPeersUnblock      = "peers.unblock"       // PeerArgs -> reputation.Report
	OpPeersBlockNetwork = "peers.block_network" // BlockNoticeArgs -> BlockNoticeResult (this agent signs, as an administrator)
	OpTaskSubmit        = "task.submit"         // SubmitArgs -> TaskView
	OpTaskReplicate     = "task.replicate"      // ReplicateArgs -> ReplicatedView
	OpTaskGet           = "task.get"            // GetArgs -> TaskView (with the result and its evidence when final)
	OpTaskList          = "task.list"           // {} -> []TaskView (without results)
	OpConfigReload      = "config.reload"       // {} -> ReloadResult (what SIGHUP does)
	OpIdentityReload    = "identity.reload"     // {} -> IdentityReloadResult
	OpAuditHead         = "audit.head"          // {} -> audit.Head
	OpGrantIssue        = "grant.issue"         // GrantIssueArgs -> GrantIssueResult (this agent signs, as an administrator)
	OpGrantInstall      = "grant.install"       // GrantInstallArgs -> GrantInstallResult (a grant this agent holds)
	OpGrantRemove       = "grant.remove"        // GrantRemoveArgs -> {} (stop presenting a held grant)
	OpGrantsList        = "grants.list"         // {} -> GrantsList
	OpRevoke            = "grant.revoke"        // RevokeArgs -> RevokeResult (this agent signs, as an administrator)
	OpRevocationInstall = "revocation.install"  // RevocationInstallArgs -> RevocationInstallResult
	OpStakeSign         = "stake.sign"          // StakeSignArgs -> StakeView (this agent signs, as an administrator)
	OpStakeSet          = "stake.set"           // StakeSetArgs -> StakeView (install an administrator-signed table)
	OpGatewayKeyCreate  = "gateway.key.create"  // GatewayKeyCreateArgs -> GatewayKeyCreated (the token, shown once)
	OpGatewayKeyList    = "gateway.key.list"    // {} -> []GatewayKey
	OpGatewayKeyRevoke  = "gateway.key.revoke"  // GatewayKeyArgs -> GatewayKey
	OpPeersFind         = "peers.find"          // FindArgs -> PeerRecord (a verified agent record from the DHT)
	OpTaskFeedback      = "task.feedback"       // FeedbackArgs -> FeedbackResult (signed feedback about a submitted task's executor)
	OpTaskCancel        = "task.cancel"         // CancelArgs -> TaskView (a submitted task given up)
	OpDataExport        = "data.export"         // DataSubjectArgs -> DataExport (what the agent holds about a subject)
	OpDataErase         = "data.erase"          // DataSubjectArgs -> DataErased (erasure on request, ADR 0092)
)

// Bounds of arguments, checked by the daemon and, for a clear usage error, by agentctl.
const (
	// MaxWait bounds a task.get wait (and a task.replicate wait).
	MaxWait = 10 * time.Minute
	// DefaultGrantTTL is the lifetime of a grant (and a stake table) when none is given.
	DefaultGrantTTL = 30 * 24 * time.Hour
	// MaxGrantTTL bounds a grant's lifetime.
	MaxGrantTTL = 5 * 365 * 24 * time.Hour
	// MaxRedundancy bounds how many peers one replicated task runs on.
	MaxRedundancy = 32
)

// None is the arguments (or result) of an operation that takes (or answers) nothing: {}.
type None struct{}

// Spec is one control operation.
type Spec struct {
	// Name is the operation's name on the wire.
	Name string
	// Permission is the rbac operation whose permission the caller needs (rbac.Table).
	Permission rbac.Operation
	// Mutating operations are audited even when they succeed (control.Op.Mutating).
	Mutating bool
	// Args and Result are zero values of the request's arguments and of the result.
	Args, Result any
	// Use says what it is for (docs, errors).
	Use string
}

// Table is every control operation the daemon serves. A new operation is one entry here, its types in
// types.go, a handler in the daemon (Ops refuses a daemon that lacks one) and, for the CLI, a Client method.
func Table() []Spec {
	return []Spec{
		{OpStatus, rbac.CtlStatus, false, None{}, Status{}, "agentctl status"},
		{OpPeersList, rbac.CtlPeersList, false, None{}, []PeerStatus{}, "agentctl peers"},
		{OpPeersConnect, rbac.CtlPeersConnect, true, ConnectArgs{}, SessionStatus{}, "agentctl peers connect"},
		{OpPeersBlock, rbac.CtlPeersBlock, true, PeerArgs{}, reputation.Report{}, "agentctl peers block"},
		{OpPeersUnblock, rbac.CtlPeersUnblock, true, PeerArgs{}, reputation.Report{}, "agentctl peers unblock"},
		{OpPeersBlockNetwork, rbac.CtlPeersBlockNetwork, true, BlockNoticeArgs{}, BlockNoticeResult{}, "agentctl peers block --network, peers unblock --network"},
		{OpTaskSubmit, rbac.CtlTaskSubmit, true, SubmitArgs{}, TaskView{}, "agentctl task submit"},
		{OpTaskReplicate, rbac.CtlTaskSubmit, true, ReplicateArgs{}, ReplicatedView{}, "agentctl task submit --redundancy"},
		{OpTaskGet, rbac.CtlTaskResult, false, GetArgs{}, TaskView{}, "agentctl task result, task submit --wait"},
		{OpTaskList, rbac.CtlTaskStatus, false, None{}, []TaskView{}, "agentctl task list"},
		{OpConfigReload, rbac.CtlConfigReload, true, None{}, ReloadResult{}, "reload the configuration (as SIGHUP)"},
		{OpIdentityReload, rbac.CtlRotate, true, None{}, IdentityReloadResult{}, "agentctl rotate, recover: the daemon picks up the change"},
		{OpAuditHead, rbac.CtlAuditVerify, false, None{}, audit.Head{}, "agentctl audit verify while the daemon runs"},
		{OpGrantIssue, rbac.CtlGrant, true, GrantIssueArgs{}, GrantIssueResult{}, "agentctl grant"},
		{OpGrantInstall, rbac.CtlGrant, true, GrantInstallArgs{}, GrantInstallResult{}, "agentctl grant install"},
		{OpGrantRemove, rbac.CtlGrant, true, GrantRemoveArgs{}, None{}, "agentctl grant remove"},
		{OpGrantsList, rbac.CtlGrantsList, false, None{}, GrantsList{}, "agentctl grant list"},
		{OpRevoke, rbac.CtlRevoke, true, RevokeArgs{}, RevokeResult{}, "agentctl revoke"},
		{OpRevocationInstall, rbac.CtlRevoke, true, RevocationInstallArgs{}, RevocationInstallResult{}, "agentctl revoke install"},
		{OpStakeSign, rbac.CtlStakeSet, true, StakeSignArgs{}, StakeView{}, "agentctl grant stake"},
		{OpStakeSet, rbac.CtlStakeSet, true, StakeSetArgs{}, StakeView{}, "agentctl grant stake install"},
		{OpGatewayKeyCreate, rbac.CtlGatewayKeys, true, GatewayKeyCreateArgs{}, GatewayKeyCreated{}, "agentctl gateway key create"},
		{OpGatewayKeyList, rbac.CtlGatewayKeys, false, None{}, []GatewayKey{}, "agentctl gateway key list"},
		{OpGatewayKeyRevoke, rbac.CtlGatewayKeys, true, GatewayKeyArgs{}, GatewayKey{}, "agentctl gateway key revoke"},
		{OpPeersFind, rbac.CtlPeersFind, false, FindArgs{}, PeerRecord{}, "agentctl peers find, peers connect --id without an address"},
		{OpTaskFeedback, rbac.CtlTaskFeedback, true, FeedbackArgs{}, FeedbackResult{}, "agentctl feedback"},
		{OpTaskCancel, rbac.CtlTaskCancel, true, CancelArgs{}, TaskView{}, "agentctl task cancel"},
		{OpDataExport, rbac.CtlData, false, DataSubjectArgs{}, DataExport{}, "agentctl data export"},
		{OpDataErase, rbac.CtlData, true, DataSubjectArgs{}, DataErased{}, "agentctl data erase"},
	}
}

// Lookup returns the table entry of the operation name.
func Lookup(name string) (Spec, bool) {
	t := Table()
	i := slices.IndexFunc(t, func(s Spec) bool { return s.Name == name })
	if i < 0 {
		return Spec{}, false
	}
	return t[i], true
}

// Handler runs one operation for caller: it decodes args (control.DecodeArgs into the entry's Args type)
// and returns a value of the entry's Result type.
type Handler = func(ctx context.Context, caller rbac.Cred, args json.RawMessage) (any, error)

// Service is one room's part of the control API: its handlers, by operation name (each a Table entry).
type Service interface {
	Handlers() map[string]Handler
}

// Handlers is a Service of the handlers it lists.
type Handlers map[string]Handler

// Handlers implements Service.
func (h Handlers) Handlers() map[string]Handler { return h }

// Join collects the handlers of every service for Ops. An operation that two services both handle is
// an error naming it (one handler per operation).
func Join(services ...Service) (map[string]Handler, error) {
	out := map[string]Handler{}
	var twice []string
	for _, s := range services {
		for name, h := range s.Handlers() {
			if _, ok := out[name]; ok {
				twice = append(twice, name)
			}
			out[name] = h
		}
	}
	if len(twice) > 0 {
		sort.Strings(twice)
		return nil, fmt.Errorf("control API: operations handled by more than one service %v", twice)
	}
	return out, nil
}

// Ops joins the daemon's handlers to Table: the control server's operations, each with its permission
// and Mutating from the table. Every table entry needs a handler and every handler a table entry;
// otherwise Ops fails naming them (a daemon never serves an operation without a permission, nor lacks
// one the table promises).
func Ops(handlers map[string]Handler) (map[string]control.Op, error) {
	ops := make(map[string]control.Op, len(handlers))
	var missing, extra []string
	for _, s := range Table() {
		h, ok := handlers[s.Name]
		if !ok || h == nil {
			missing = append(missing, s.Name)
			continue
		}
		ops[s.Name] = control.Op{Fn: h, Permission: s.Permission, Mutating: s.Mutating}
	}
	for name := range handlers {
		if _, ok := Lookup(name); !ok {
			extra = append(extra, name)
		}
	}
	if len(missing) > 0 || len(extra) > 0 {
		sort.Strings(missing)
		sort.Strings(extra)
		return nil, fmt.Errorf("control API: operations without a handler %v; handlers without an entry in api.Table (and so without a permission) %v", missing, extra)
	}
	return ops, nil
}

// Scaled is n units (a count read from a request) as a Duration, saturating instead of wrapping when
// n*unit does not fit: the handlers' range checks then refuse it.
func Scaled(n int64, unit time.Duration) time.Duration {
	if unit <= 0 {
		return 0
	}
	if lim := int64(math.MaxInt64 / unit); n > lim {
		return math.MaxInt64
	} else if n < -lim {
		return math.MinInt64
	}
	return time.Duration(n) * unit
}
