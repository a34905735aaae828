package rbac

import (
	"fmt"
	"slices"
)

// Operation is something a peer (by message type) or a local caller (by control-socket operation) asks
// the agent to do. docs/authorization.md prints Table.
type Operation string

// Peer operations: the message types of the agent protocol and the handshake.
const (
	OpHandshake     Operation = "handshake"
	OpTaskRequest   Operation = "task_request"
	OpTaskResponse  Operation = "task_response"
	OpTaskProgress  Operation = "task_progress"
	OpTaskResult    Operation = "task_result"
	OpErrorResponse Operation = "error_response"
	OpHeartbeat     Operation = "heartbeat"
	OpFeedback      Operation = "feedback"
	OpMailbox       Operation = "mailbox"
	OpMailboxAck    Operation = "mailbox_ack"
	// OpRevocationSync: the catch-up of revocations when a session comes up (ADR 0096).
	OpRevocationSync Operation = "revocation_sync"
)

// Control-socket operations ("control.<area>.<verb>"): the permissions of agent/api's table, each named by
// at least one operation the daemon serves (agent/api.TestTableMatchesRBAC). An operation enters this
// table with the code that serves it.
const (
	CtlStatus       Operation = "control.status"
	CtlPeersList    Operation = "control.peers.list"
	CtlPeersConnect Operation = "control.peers.connect"
	CtlPeersBlock   Operation = "control.peers.block"
	CtlPeersUnblock Operation = "control.peers.unblock"
	CtlTaskSubmit   Operation = "control.task.submit"
	CtlTaskStatus   Operation = "control.task.status"
	CtlTaskResult   Operation = "control.task.result"
	CtlGrant        Operation = "control.grant"
	CtlRevoke       Operation = "control.revoke"
	CtlGrantsList   Operation = "control.grants.list"
	CtlStakeSet     Operation = "control.stake.set"
	CtlAuditVerify  Operation = "control.audit.verify"
	CtlRotate       Operation = "control.rotate"
	CtlConfigReload Operation = "control.config.reload"
	CtlGatewayKeys  Operation = "control.gateway.keys"
	CtlData         Operation = "control.data" // subject access and erasure (ADR 0092)
	// CtlPeersFind: look an agent's record up in the DHT (agent/discovery, ADR 0070).
	CtlPeersFind Operation = "control.peers.find"
	// CtlTaskFeedback: sign and send feedback about the executor of a task this agent submitted;
	// CtlTaskCancel: give a submitted task up (ADR 0090).
	CtlTaskFeedback Operation = "control.task.feedback"
	CtlTaskCancel   Operation = "control.task.cancel"
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
	{OpMailbox, ProtocolTranslation, true, "a gateway delivers a message a program left for this agent while it was offline (store-and-forward, ADR 0093)"},
	{OpMailboxAck, ShareResults, true, "the recipient of a mailbox delivery reports its outcome (accepted, or refused with a reason); it deletes only that peer's own stored message"},
	{OpRevocationSync, "", true, "catch-up of revocations when a session comes up (ADR 0096): needs no role, as on gossip: each revocation carries its administrator's signature and is verified as a gossiped one, and refusing it would only keep a revoked grant usable; bounded per session and by the rate limits"},

	{CtlStatus, ViewStatus, false, "agentctl status"},
	{CtlPeersList, ViewStatus, false, "agentctl peers: trust level, score, factors"},
	{CtlPeersConnect, ManageNetwork, false, "agentctl peers connect ADDR"},
	{CtlPeersBlock, ManageAgents, false, "agentctl peers block ID"},
	{CtlPeersUnblock, ManageAgents, false, "agentctl peers unblock ID"},
	{CtlTaskSubmit, SubmitTasks, false, "agentctl task submit"},
	{CtlTaskStatus, ViewResults, false, "agentctl task status"},
	{CtlTaskResult, ViewResults, false, "agentctl task result"},
	{CtlGrant, ManageSecurity, false, "agentctl grant (the daemon signs with its identity key)"},
	{CtlRevoke, ManageSecurity, false, "agentctl revoke"},
	{CtlGrantsList, ManageSecurity, false, "agentctl grants list"},
	{CtlStakeSet, ManageSecurity, false, "install an administrator-signed stake table"},
	{CtlAuditVerify, ManageSecurity, false, "agentctl audit verify (through the daemon)"},
	{CtlRotate, ManageLocalAgent, false, "agentctl rotate"},
	{CtlConfigReload, ManageLocalAgent, false, "reload configuration"},
	{CtlGatewayKeys, ManageSecurity, false, "agentctl gateway key create, list, revoke (the HTTP gateway's API keys)"},
	{CtlPeersFind, DiscoverPeers, false, "agentctl peers find ID (and peers connect --id ID without an address): a DHT lookup"},
	{CtlTaskFeedback, SubmitTasks, false, "agentctl feedback --task ID --score S: rate the executor of a task this agent submitted (signed with the identity key, sent to the connected peers)"},
	{CtlTaskCancel, SubmitTasks, false, "agentctl task cancel ID: give up a task this agent submitted"},
	{CtlData, ManageSecurity, false, "agentctl data export, data erase --subject ID: what the agent holds about an agent, and its erasure (ADR 0092)"},
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
