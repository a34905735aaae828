package rbac

import (
	"fmt"
	"slices"
)

// Operation is something a peer (by message type) or a local caller (by control-socket operation) asks
// the agent to do. docs/authorization.md prints Table.
type Operation string

// Peer operations: the message types of the agent protocol, the handshake, and relaying.
const (
	OpHandshake     Operation = "handshake"
	OpTaskRequest   Operation = "task_request"
	OpTaskResponse  Operation = "task_response"
	OpTaskProgress  Operation = "task_progress"
	OpTaskResult    Operation = "task_result"
	OpErrorResponse Operation = "error_response"
	OpHeartbeat     Operation = "heartbeat"
	OpFeedback      Operation = "feedback"
	// OpRelay is forwarding a store-and-forward envelope addressed to another agent (a gateway's job).
	OpRelay Operation = "relay"
)

// Control-socket operations ("control.<area>.<verb>"), one per agentctl subcommand that reaches the daemon.
const (
	CtlStatus          Operation = "control.status"
	CtlID              Operation = "control.id"
	CtlPeersList       Operation = "control.peers.list"
	CtlPeersShow       Operation = "control.peers.show"
	CtlPeersConnect    Operation = "control.peers.connect"
	CtlPeersDisconnect Operation = "control.peers.disconnect"
	CtlPeersBlock      Operation = "control.peers.block"
	CtlPeersUnblock    Operation = "control.peers.unblock"
	CtlTaskSubmit      Operation = "control.task.submit"
	CtlTaskStatus      Operation = "control.task.status"
	CtlTaskResult      Operation = "control.task.result"
	CtlTaskCancel      Operation = "control.task.cancel"
	CtlGrant           Operation = "control.grant"
	CtlRevoke          Operation = "control.revoke"
	CtlGrantsList      Operation = "control.grants.list"
	CtlStakeSet        Operation = "control.stake.set"
	CtlAuditQuery      Operation = "control.audit.query"
	CtlAuditVerify     Operation = "control.audit.verify"
	CtlRotate          Operation = "control.rotate"
	CtlSign            Operation = "control.sign"
	CtlConfigReload    Operation = "control.config.reload"
	CtlShutdown        Operation = "control.shutdown"
	CtlMetrics         Operation = "control.metrics"
	CtlPolicyShow      Operation = "control.policy.show"
	CtlPolicySet       Operation = "control.policy.set"
	CtlAPIForward      Operation = "control.api.forward"
)

// Requirement is what an operation needs.
type Requirement struct {
	Op Operation
	// Permission needed; "" only for the two operations that need no role (see Note).
	Permission Permission
	// Peer is true for messages from peers, false for control-socket operations.
	Peer bool
	// Note says why, for docs/authorization.md.
	Note string
}

// Table is the permission of every operation. Authorization is deny-by-default: an Operation missing from
// the table is refused (ErrUnknownOperation).
var Table = []Requirement{
	{OpHandshake, "", true, "authentication itself needs no role; the validator refuses Blocked peers, bad or revoked grants, and policy (geo, time window)"},
	{OpTaskRequest, SubmitTasks, true, "a peer asks this agent to run a task"},
	{OpTaskResponse, ProcessTasks, true, "a peer accepts or declines a task this agent sent it"},
	{OpTaskProgress, ProcessTasks, true, "a peer reports progress of a task it processes for this agent"},
	{OpTaskResult, ShareResults, true, "a peer delivers a signed result"},
	{OpErrorResponse, "", true, "accepted only as the answer to a message_id this agent sent (the dispatcher checks the correlation); never starts anything"},
	{OpHeartbeat, DiscoverPeers, true, "liveness between network peers"},
	{OpFeedback, ShareResults, true, "signed feedback about another peer's result"},
	{OpRelay, ProtocolTranslation, true, "store-and-forward through a gateway"},

	{CtlStatus, ViewStatus, false, "agentctl status"},
	{CtlID, ViewStatus, false, "agentctl id (through the daemon)"},
	{CtlPeersList, ViewStatus, false, "agentctl peers: trust level, score, factors"},
	{CtlPeersShow, ViewStatus, false, "agentctl peers show ID"},
	{CtlPeersConnect, ManageNetwork, false, "agentctl peers connect ADDR"},
	{CtlPeersDisconnect, ManageNetwork, false, "agentctl peers disconnect ID"},
	{CtlPeersBlock, ManageAgents, false, "agentctl peers block ID"},
	{CtlPeersUnblock, ManageAgents, false, "agentctl peers unblock ID"},
	{CtlTaskSubmit, SubmitTasks, false, "agentctl task submit"},
	{CtlTaskStatus, ViewResults, false, "agentctl task status"},
	{CtlTaskResult, ViewResults, false, "agentctl task result"},
	{CtlTaskCancel, SubmitTasks, false, "agentctl task cancel"},
	{CtlGrant, ManageSecurity, false, "agentctl grant (the daemon signs with its identity key)"},
	{CtlRevoke, ManageSecurity, false, "agentctl revoke"},
	{CtlGrantsList, ManageSecurity, false, "agentctl grants list"},
	{CtlStakeSet, ManageSecurity, false, "install an administrator-signed stake table"},
	{CtlAuditQuery, ManageSecurity, false, "agentctl audit query"},
	{CtlAuditVerify, ManageSecurity, false, "agentctl audit verify (through the daemon)"},
	{CtlRotate, ManageLocalAgent, false, "agentctl rotate"},
	{CtlSign, ManageLocalAgent, false, "agentctl sign (user-data signatures with the identity key)"},
	{CtlConfigReload, ManageLocalAgent, false, "reload configuration"},
	{CtlShutdown, ManageLocalAgent, false, "stop the daemon"},
	{CtlMetrics, ViewMetrics, false, "metrics snapshot over the socket"},
	{CtlPolicyShow, RateLimiting, false, "show rate limits, quotas and their counters"},
	{CtlPolicySet, RateLimiting, false, "change rate limits at run time"},
	{CtlAPIForward, APIAccess, false, "a local API gateway submits on behalf of its clients"},
}

// ErrUnknownOperation is returned for an operation missing from Table.
var ErrUnknownOperation = fmt.Errorf("operation not in the authorization table")

// Required returns the requirement of op. An unknown op gives ErrUnknownOperation.
func Required(op Operation) (Requirement, error) {
	i := slices.IndexFunc(Table, func(r Requirement) bool { return r.Op == op })
	if i < 0 {
		return Requirement{}, fmt.Errorf("%w: %q (refused: deny by default)", ErrUnknownOperation, op)
	}
	return Table[i], nil
}
