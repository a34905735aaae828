// Package api is the agent daemon's control API: for every operation its name, the rbac operation (and so
// the permission) a caller needs, whether it changes anything, and its request and response types, in one
// table (Table); the Go types of every request and response; and a typed client (Client) over the
// control socket (agent/control), which agentctl uses.
//
// The daemon registers one handler per table entry (Ops); agent/control's server enforces the entry's
// permission on every request, in one place, before the handler runs. TestTableMatchesRBAC keeps Table
// and the control operations of agent/rbac's table the same set: an operation cannot be served without a
// permission, and rbac names no control operation that nothing serves.
package api

import (
	"context"
	"encoding/json"
	"fmt"
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
	OpStatus            = "status"             // {} -> Status
	OpPeersList         = "peers.list"         // {} -> []PeerStatus
	OpPeersConnect      = "peers.connect"      // ConnectArgs -> SessionStatus
	OpPeersBlock        = "peers.block"        // PeerArgs -> reputation.Report
	OpPeersUnblock      = "peers.unblock"      // PeerArgs -> reputation.Report
	OpTaskSubmit        = "task.submit"        // SubmitArgs -> TaskView
	OpTaskReplicate     = "task.replicate"     // ReplicateArgs -> ReplicatedView
	OpTaskGet           = "task.get"           // GetArgs -> TaskView (with the result and its evidence when final)
	OpTaskList          = "task.list"          // {} -> []TaskView (without results)
	OpConfigReload      = "config.reload"      // {} -> ReloadResult (what SIGHUP does)
	OpIdentityReload    = "identity.reload"    // {} -> IdentityReloadResult
	OpAuditHead         = "audit.head"         // {} -> audit.Head
	OpGrantIssue        = "grant.issue"        // GrantIssueArgs -> GrantIssueResult (this agent signs, as an administrator)
	OpGrantInstall      = "grant.install"      // GrantInstallArgs -> GrantInstallResult (a grant this agent holds)
	OpGrantRemove       = "grant.remove"       // GrantRemoveArgs -> {} (stop presenting a held grant)
	OpGrantsList        = "grants.list"        // {} -> GrantsList
	OpRevoke            = "grant.revoke"       // RevokeArgs -> RevokeResult (this agent signs, as an administrator)
	OpRevocationInstall = "revocation.install" // RevocationInstallArgs -> RevocationInstallResult
	OpStakeSign         = "stake.sign"         // StakeSignArgs -> StakeView (this agent signs, as an administrator)
	OpStakeSet          = "stake.set"          // StakeSetArgs -> StakeView (install an administrator-signed table)
	OpPeersFind         = "peers.find"         // FindArgs -> PeerRecord (a verified agent record from the DHT)
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
		{OpPeersFind, rbac.CtlPeersFind, false, FindArgs{}, PeerRecord{}, "agentctl peers find, peers connect --id without an address"},
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
