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
	// CtlPeersBlockNetwork: sign a network-wide block (or unblock) notice as an administrator (ADR 0101).
	CtlPeersBlockNetwork Operation = "control.peers.block_network"
)

// Side is who asks for an operation, and whose roles are judged.
type Side string

// The sides.
const (
	// FromPeer: a peer's message (or handshake); the peer's grants and the default peer roles count.
	FromPeer Side = "peer"
	// FromLocal: a control-socket caller; its uid and gid map to roles (authorization.local).
	FromLocal Side = "local"
	// FromSelf: something this agent does for a peer (running its task, sending it a result or
	// feedback); the grants this agent holds (agentctl grant install) that are valid here and
	// authorization.own_roles count (docs/adr/0094).
	FromSelf Side = "self"
)

// Self operations ("self.<area>.<verb>"): what this agent does for a peer, checked against its own roles
// (agent/authz.AuthorizeSelf). The message dispatcher checks SelfTaskExecute and SelfResultSend before a
// new task_request reaches the task engine; every outbound message whose type OutboundOp names is checked
// when it is sent; SelfLookupAnswer is judged at every start of a transport plugin process, which runs its
// DHT in server mode (answering lookups) only when it is allowed (agent/authz.AnswersLookups).
const (
	SelfTaskExecute  Operation = "self.task.execute"
	SelfResultSend   Operation = "self.result.send"
	SelfFeedbackSend Operation = "self.feedback.send"
	SelfLookupAnswer Operation = "self.lookup.answer"
)

// OutboundOp returns the self operation that guards sending a message of type messageType to a peer, and
// whether there is one (other message types need nothing of the sender: answers, errors, heartbeats).
func OutboundOp(messageType string) (Operation, bool) {
	switch messageType {
	case string(OpTaskResult):
		return SelfResultSend, true
	case string(OpFeedback):
		return SelfFeedbackSend, true
	}
	return "", false
}

// Requirement is what an operation needs.
type Requirement struct {
	Op Operation
	// Permission needed; "" only for the two operations that need no role (see Note).
	Permission Permission
	// From is who asks: a peer (a message type, the handshake), a local caller (the control socket), or
	// this agent itself (an act it does for a peer, judged against the grants it holds; ADR 0094).
	From Side
	// Note says why, for docs/authorization.md.
	Note string
}

// Table is the permission of every operation. Authorization is deny-by-default: an Operation missing from
// the table is refused (ErrUnknownOperation).
var Table = []Requirement{
	{OpHandshake, "", FromPeer, "authentication itself needs no role; the validator refuses Blocked peers, bad or revoked grants, and policy (geo, time window)"},
	{OpTaskRequest, SubmitTasks, FromPeer, "a peer asks this agent to run a task"},
	{OpTaskResponse, ProcessTasks, FromPeer, "a peer accepts or declines a task this agent sent it"},
	{OpTaskProgress, ProcessTasks, FromPeer, "a peer reports progress of a task it processes for this agent"},
	{OpTaskResult, ShareResults, FromPeer, "a peer delivers a signed result"},
	{OpErrorResponse, "", FromPeer, "accepted only as the answer to a message_id this agent sent (the dispatcher checks the correlation); never starts anything"},
	{OpHeartbeat, DiscoverPeers, FromPeer, "liveness between network peers"},
	{OpFeedback, ShareResults, FromPeer, "signed feedback about another peer's result"},
	{OpMailbox, ProtocolTranslation, FromPeer, "a gateway delivers a message a program left for this agent while it was offline (store-and-forward, ADR 0093)"},
	{OpMailboxAck, ShareResults, FromPeer, "the recipient of a mailbox delivery reports its outcome (accepted, or refused with a reason); it deletes only that peer's own stored message"},
	{OpRevocationSync, "", FromPeer, "catch-up of revocations when a session comes up (ADR 0096): needs no role, as on gossip: each revocation carries its administrator's signature and is verified as a gossiped one, and refusing it would only keep a revoked grant usable; bounded per session and by the rate limits"},

	{SelfTaskExecute, ProcessTasks, FromSelf, "this agent runs a task a peer asked of it: checked (with self.result.send) before a new task_request reaches the task engine; refused with executor_not_permitted"},
	{SelfResultSend, ShareResults, FromSelf, "this agent sends the signed result of a task it ran to the peer that asked; checked at every send (a refused result stays stored and is sent again later)"},
	{SelfFeedbackSend, ShareResults, FromSelf, "this agent sends signed feedback (agentctl feedback, a vote's own) to its connected peers"},
	{SelfLookupAnswer, DiscoverPeers, FromSelf, "this agent's DHT answers other agents' lookups (server mode); refused, the plugin runs its DHT in client mode (it only asks); judged at every start of a plugin process"},

	{CtlStatus, ViewStatus, FromLocal, "agentctl status"},
	{CtlPeersList, ViewStatus, FromLocal, "agentctl peers: trust level, score, factors"},
	{CtlPeersConnect, ManageNetwork, FromLocal, "agentctl peers connect ADDR"},
	{CtlPeersBlock, ManageAgents, FromLocal, "agentctl peers block ID"},
	{CtlPeersUnblock, ManageAgents, FromLocal, "agentctl peers unblock ID"},
	{CtlTaskSubmit, SubmitTasks, FromLocal, "agentctl task submit"},
	{CtlTaskStatus, ViewResults, FromLocal, "agentctl task status"},
	{CtlTaskResult, ViewResults, FromLocal, "agentctl task result"},
	{CtlGrant, ManageSecurity, FromLocal, "agentctl grant (the daemon signs with its identity key)"},
	{CtlRevoke, ManageSecurity, FromLocal, "agentctl revoke"},
	{CtlGrantsList, ManageSecurity, FromLocal, "agentctl grants list"},
	{CtlStakeSet, ManageSecurity, FromLocal, "install an administrator-signed stake table"},
	{CtlAuditVerify, ManageSecurity, FromLocal, "agentctl audit verify (through the daemon)"},
	{CtlRotate, ManageLocalAgent, FromLocal, "agentctl rotate"},
	{CtlConfigReload, ManageLocalAgent, FromLocal, "reload configuration"},
	{CtlGatewayKeys, ManageSecurity, FromLocal, "agentctl gateway key create, list, revoke (the HTTP gateway's API keys)"},
	{CtlPeersFind, DiscoverPeers, FromLocal, "agentctl peers find ID (and peers connect --id ID without an address): a DHT lookup"},
	{CtlTaskFeedback, SubmitTasks, FromLocal, "agentctl feedback --task ID --score S: rate the executor of a task this agent submitted (signed with the identity key, sent to the connected peers)"},
	{CtlTaskCancel, SubmitTasks, FromLocal, "agentctl task cancel ID: give up a task this agent submitted"},
	{CtlPeersBlockNetwork, ManageSecurity, FromLocal, "agentctl peers block ID --network --until T, peers unblock ID --network: sign an administrator's block notice, apply it here and publish it on gossip (ADR 0101)"},
	{CtlData, ManageSecurity, FromLocal, "agentctl data export, data erase --subject ID: what the agent holds about an agent, and its erasure (ADR 0092)"},
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
