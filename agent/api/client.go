package api

import (
	"context"
	"path/filepath"

	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/audit"
)

// Client calls the control API of the daemon serving one control socket: one method per operation of
// Table, over agent/control's one-request-per-connection protocol. A failed request is a *control.Error
// (control.CodeOf gives its code); no daemon is control.ErrNoDaemon.
type Client struct{ path string }

// NewClient returns a client of the control socket at path.
func NewClient(path string) *Client { return &Client{path: path} }

// ForHome returns a client of the daemon of the agent home directory home (<home>/control.sock).
func ForHome(home string) *Client { return NewClient(filepath.Join(home, ControlFile)) }

// Path is the control socket's path.
func (c *Client) Path() string { return c.path }

// call sends op with args (nil: none, the request carries no arguments) and decodes its result.
func call[R any](ctx context.Context, c *Client, op string, args any) (R, error) {
	var r R
	err := control.Call(ctx, c.path, op, args, &r)
	return r, err
}

// Status is OpStatus.
func (c *Client) Status(ctx context.Context) (Status, error) {
	return call[Status](ctx, c, OpStatus, nil)
}

// PeersList is OpPeersList.
func (c *Client) PeersList(ctx context.Context) ([]PeerStatus, error) {
	return call[[]PeerStatus](ctx, c, OpPeersList, nil)
}

// PeersConnect is OpPeersConnect.
func (c *Client) PeersConnect(ctx context.Context, a ConnectArgs) (SessionStatus, error) {
	return call[SessionStatus](ctx, c, OpPeersConnect, a)
}

// PeersBlock is OpPeersBlock.
func (c *Client) PeersBlock(ctx context.Context, a PeerArgs) (reputation.Report, error) {
	return call[reputation.Report](ctx, c, OpPeersBlock, a)
}

// PeersUnblock is OpPeersUnblock.
func (c *Client) PeersUnblock(ctx context.Context, a PeerArgs) (reputation.Report, error) {
	return call[reputation.Report](ctx, c, OpPeersUnblock, a)
}

// PeersBlockNetwork is OpPeersBlockNetwork.
func (c *Client) PeersBlockNetwork(ctx context.Context, a BlockNoticeArgs) (BlockNoticeResult, error) {
	return call[BlockNoticeResult](ctx, c, OpPeersBlockNetwork, a)
}

// TaskSubmit is OpTaskSubmit.
func (c *Client) TaskSubmit(ctx context.Context, a SubmitArgs) (TaskView, error) {
	return call[TaskView](ctx, c, OpTaskSubmit, a)
}

// TaskReplicate is OpTaskReplicate.
func (c *Client) TaskReplicate(ctx context.Context, a ReplicateArgs) (ReplicatedView, error) {
	return call[ReplicatedView](ctx, c, OpTaskReplicate, a)
}

// TaskGet is OpTaskGet.
func (c *Client) TaskGet(ctx context.Context, a GetArgs) (TaskView, error) {
	return call[TaskView](ctx, c, OpTaskGet, a)
}

// TaskList is OpTaskList.
func (c *Client) TaskList(ctx context.Context) ([]TaskView, error) {
	return call[[]TaskView](ctx, c, OpTaskList, nil)
}

// ConfigReload is OpConfigReload.
func (c *Client) ConfigReload(ctx context.Context) (ReloadResult, error) {
	return call[ReloadResult](ctx, c, OpConfigReload, nil)
}

// IdentityReload is OpIdentityReload.
func (c *Client) IdentityReload(ctx context.Context) (IdentityReloadResult, error) {
	return call[IdentityReloadResult](ctx, c, OpIdentityReload, nil)
}

// AuditHead is OpAuditHead.
func (c *Client) AuditHead(ctx context.Context) (audit.Head, error) {
	return call[audit.Head](ctx, c, OpAuditHead, nil)
}

// GrantIssue is OpGrantIssue.
func (c *Client) GrantIssue(ctx context.Context, a GrantIssueArgs) (GrantIssueResult, error) {
	return call[GrantIssueResult](ctx, c, OpGrantIssue, a)
}

// GrantInstall is OpGrantInstall.
func (c *Client) GrantInstall(ctx context.Context, a GrantInstallArgs) (GrantInstallResult, error) {
	return call[GrantInstallResult](ctx, c, OpGrantInstall, a)
}

// GrantRemove is OpGrantRemove.
func (c *Client) GrantRemove(ctx context.Context, a GrantRemoveArgs) (None, error) {
	return call[None](ctx, c, OpGrantRemove, a)
}

// GrantsList is OpGrantsList.
func (c *Client) GrantsList(ctx context.Context) (GrantsList, error) {
	return call[GrantsList](ctx, c, OpGrantsList, nil)
}

// Revoke is OpRevoke.
func (c *Client) Revoke(ctx context.Context, a RevokeArgs) (RevokeResult, error) {
	return call[RevokeResult](ctx, c, OpRevoke, a)
}

// RevocationInstall is OpRevocationInstall.
func (c *Client) RevocationInstall(ctx context.Context, a RevocationInstallArgs) (RevocationInstallResult, error) {
	return call[RevocationInstallResult](ctx, c, OpRevocationInstall, a)
}

// StakeSign is OpStakeSign.
func (c *Client) StakeSign(ctx context.Context, a StakeSignArgs) (StakeView, error) {
	return call[StakeView](ctx, c, OpStakeSign, a)
}

// StakeSet is OpStakeSet.
func (c *Client) StakeSet(ctx context.Context, a StakeSetArgs) (StakeView, error) {
	return call[StakeView](ctx, c, OpStakeSet, a)
}

// PeersFind is OpPeersFind.
func (c *Client) PeersFind(ctx context.Context, a FindArgs) (PeerRecord, error) {
	return call[PeerRecord](ctx, c, OpPeersFind, a)
}

// TaskFeedback is OpTaskFeedback.
func (c *Client) TaskFeedback(ctx context.Context, a FeedbackArgs) (FeedbackResult, error) {
	return call[FeedbackResult](ctx, c, OpTaskFeedback, a)
}

// TaskCancel is OpTaskCancel.
func (c *Client) TaskCancel(ctx context.Context, a CancelArgs) (TaskView, error) {
	return call[TaskView](ctx, c, OpTaskCancel, a)
}

// DataExport is agentctl data export: what the agent holds about a subject.
func (c *Client) DataExport(ctx context.Context, a DataSubjectArgs) (DataExport, error) {
	return call[DataExport](ctx, c, OpDataExport, a)
}

// DataErase is agentctl data erase: erasure of a subject's data on request.
func (c *Client) DataErase(ctx context.Context, a DataSubjectArgs) (DataErased, error) {
	return call[DataErased](ctx, c, OpDataErase, a)
}
