package daemon

import "github.com/custos-agent/custos/agent/api"

// The control API's names and types live in agent/api (its one table, its types, its client). These
// aliases keep the daemon's code and its callers that still say daemon.X compiling while the rooms move
// (issue 13); new code uses api.X.
const (
	OpStatus            = api.OpStatus
	OpPeersList         = api.OpPeersList
	OpPeersConnect      = api.OpPeersConnect
	OpPeersBlock        = api.OpPeersBlock
	OpPeersUnblock      = api.OpPeersUnblock
	OpTaskSubmit        = api.OpTaskSubmit
	OpTaskReplicate     = api.OpTaskReplicate
	OpTaskGet           = api.OpTaskGet
	OpTaskList          = api.OpTaskList
	OpConfigReload      = api.OpConfigReload
	OpIdentityReload    = api.OpIdentityReload
	OpAuditHead         = api.OpAuditHead
	OpGrantIssue        = api.OpGrantIssue
	OpGrantInstall      = api.OpGrantInstall
	OpGrantRemove       = api.OpGrantRemove
	OpGrantsList        = api.OpGrantsList
	OpRevoke            = api.OpRevoke
	OpRevocationInstall = api.OpRevocationInstall
	OpStakeSign         = api.OpStakeSign
	OpStakeSet          = api.OpStakeSet

	MaxWait         = api.MaxWait
	DefaultGrantTTL = api.DefaultGrantTTL
	MaxGrantTTL     = api.MaxGrantTTL
	MaxRedundancy   = api.MaxRedundancy
)

type (
	Address                 = api.Address
	Status                  = api.Status
	TransportStatus         = api.TransportStatus
	SessionStatus           = api.SessionStatus
	TargetStatus            = api.TargetStatus
	PeerStatus              = api.PeerStatus
	ConnectArgs             = api.ConnectArgs
	SubmitArgs              = api.SubmitArgs
	TaskView                = api.TaskView
	ResultView              = api.ResultView
	GetArgs                 = api.GetArgs
	ReloadResult            = api.ReloadResult
	IdentityReloadResult    = api.IdentityReloadResult
	GrantView               = api.GrantView
	GrantIssueArgs          = api.GrantIssueArgs
	GrantIssueResult        = api.GrantIssueResult
	GrantInstallArgs        = api.GrantInstallArgs
	Presentation            = api.Presentation
	GrantInstallResult      = api.GrantInstallResult
	GrantRemoveArgs         = api.GrantRemoveArgs
	GrantsList              = api.GrantsList
	RevokeArgs              = api.RevokeArgs
	RevokeResult            = api.RevokeResult
	RevocationInstallArgs   = api.RevocationInstallArgs
	RevocationInstallResult = api.RevocationInstallResult
	PeerArgs                = api.PeerArgs
	ReplicateArgs           = api.ReplicateArgs
	VoteView                = api.VoteView
	EvidenceView            = api.EvidenceView
	ReplicatedView          = api.ReplicatedView
	StakeSignArgs           = api.StakeSignArgs
	StakeSetArgs            = api.StakeSetArgs
	StakeView               = api.StakeView
)
