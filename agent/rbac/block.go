package rbac

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/signature"
)

// Block notices (ADR 0101, docs/protocol.md "Block notices on gossip"): an administrator's signed word
// "block agent X until T" (or "lift the blocks of X issued before now"), judged like a revocation by
// every agent that lists the issuer as an administrator. Unlike a revocation a block is never for good:
// it carries its end, at most MaxBlockDuration after it was issued.

// BlockNoticeVersion is the version of block notices.
const BlockNoticeVersion = 1

// The actions of a block notice.
const (
	BlockActionBlock   = "block"
	BlockActionUnblock = "unblock"
)

// Bounds of a block notice.
const (
	// MaxBlockDuration bounds Until - Issued: a block is not for good (the operator's local block is).
	MaxBlockDuration = 90 * 24 * time.Hour
	// MaxBlockReason bounds the reason's length in bytes (printable ASCII).
	MaxBlockReason = 200
	// MaxBlockNoticeSize bounds an encoded notice.
	MaxBlockNoticeSize = 1024
)

// BlockNotice is an administrator-signed block (or unblock) of an agent. Its JSON form (Encode) is what
// travels; what is signed is SigningInput under signature.BlockNotice ("custos/v1/block").
type BlockNotice struct {
	Version int    `json:"v"`
	Action  string `json:"action"`           // "block" or "unblock"
	Agent   string `json:"agent"`            // the blocked agent's ID
	Issuer  string `json:"issuer"`           // the administrator who signed
	Issued  int64  `json:"issued"`           // Unix seconds
	Until   int64  `json:"until"`            // block: refused until then; unblock: carried until then
	Reason  string `json:"reason,omitempty"` // printable ASCII, at most MaxBlockReason bytes
	Gen     uint64 `json:"gen,omitempty"`    // the issuer's key generation that signs (omitted when 0)
	Head    string `json:"head,omitempty"`   // base64url digest of the key event that made Gen current
	Sig     string `json:"sig"`
}

// SigningInput is exactly what the administrator signs.
func (n *BlockNotice) SigningInput() *signature.Input {
	return signature.NewInput(signature.BlockNotice).
		Uint64(uint64(n.Version)).
		String(n.Action).
		String(n.Agent).
		String(n.Issuer).
		Int64(n.Issued).
		Int64(n.Until).
		String(n.Reason).
		Uint64(n.Gen).
		String(n.Head)
}

// Encode returns the compact JSON form.
func (n *BlockNotice) Encode() []byte { return mustJSON(n) }

// Expires is when the notice stops counting.
func (n *BlockNotice) Expires() time.Time { return time.Unix(n.Until, 0) }

// IssueBlockNotice makes and signs a notice with the key of generation by.Generation: action
// BlockActionBlock or BlockActionUnblock, of agent, issued now, ending at until.
func IssueBlockNotice(ctx context.Context, issuer keystore.Signer, by IssuerKey, action string, agent identity.ID, now, until time.Time, why string) (BlockNotice, error) {
	n := BlockNotice{Version: BlockNoticeVersion, Action: action, Agent: agent.String(), Issuer: by.ID.String(),
		Issued: now.Unix(), Until: until.Unix(), Reason: why, Gen: by.Generation, Head: by.Head, Sig: "AA"}
	if err := n.check(); err != nil {
		return BlockNotice{}, err
	}
	sig, err := signature.SignInput(ctx, issuer, n.SigningInput())
	if err != nil {
		return BlockNotice{}, fmt.Errorf("sign block notice: %w", err)
	}
	n.Sig = identity.Base64().EncodeToString(sig)
	return n, nil
}

// DecodeBlockNotice strictly decodes a notice: at most MaxBlockNoticeSize bytes, no unknown fields, no
// trailing data, version 1, a known action, agent IDs in canonical form, the agent not the issuer, a
// validity of 1 s to MaxBlockDuration, a bounded printable reason, a signature, and the canonical
// encoding. It checks form, not the signature (Authorizer.VerifyBlockNotice).
func DecodeBlockNotice(b []byte) (BlockNotice, error) {
	var n BlockNotice
	if err := strictjson.Decode(b, &n, MaxBlockNoticeSize); err != nil {
		return BlockNotice{}, fmt.Errorf("%w: block notice: %v", ErrMalformed, err)
	}
	if err := n.check(); err != nil {
		return BlockNotice{}, fmt.Errorf("%w: block notice: %v", ErrMalformed, err)
	}
	if strictjson.Canonical(b, n.Encode()) != nil {
		return BlockNotice{}, fmt.Errorf("%w: block notice is not in canonical form (compact JSON, fields in order, as Encode writes it)", ErrMalformed)
	}
	return n, nil
}

func (n *BlockNotice) check() error {
	if n.Version != BlockNoticeVersion {
		return fmt.Errorf("version %d (this agent speaks %d)", n.Version, BlockNoticeVersion)
	}
	if n.Action != BlockActionBlock && n.Action != BlockActionUnblock {
		return fmt.Errorf("action %.20q (want %q or %q)", n.Action, BlockActionBlock, BlockActionUnblock)
	}
	for _, f := range []struct{ name, v string }{{"agent", n.Agent}, {"issuer", n.Issuer}} {
		if id, err := identity.ParseID(f.v); err != nil || id.String() != f.v {
			return fmt.Errorf("%s %.80q is not an agent ID in canonical form", f.name, f.v)
		}
	}
	if n.Agent == n.Issuer {
		return errors.New("an administrator cannot block itself")
	}
	if n.Issued <= 0 || n.Until <= n.Issued || time.Duration(n.Until-n.Issued)*time.Second > MaxBlockDuration {
		return fmt.Errorf("validity [%d, %d]: until must be 1 s to %s after issued", n.Issued, n.Until, MaxBlockDuration)
	}
	if len(n.Reason) > MaxBlockReason {
		return fmt.Errorf("reason of %d bytes (at most %d)", len(n.Reason), MaxBlockReason)
	}
	for _, c := range []byte(n.Reason) {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return errors.New("reason must be printable ASCII without \" \\ < > &")
		}
	}
	if err := checkVersion(GrantVersion, n.Gen, n.Head); err != nil {
		return err
	}
	_, err := decodeSig(n.Sig)
	return err
}

// VerifyBlockNotice checks n completely at now: form, not expired (Until after now: BlockExpired), the
// issuer a configured system administrator (GrantBadIssuer), the signature under the issuer's key of
// the named generation (GrantBadSignature). Denials carry rbac reasons (ReasonOf).
func (a *Authorizer) VerifyBlockNotice(n BlockNotice, now time.Time) error {
	if err := n.check(); err != nil {
		return fmt.Errorf("%w: block notice: %v", ErrMalformed, err)
	}
	if !now.Before(n.Expires()) {
		return deny(BlockExpired, n.Issuer, "", "", "block notice of %s by %s ended at %s", n.Agent, n.Issuer, n.Expires().UTC().Format(time.RFC3339))
	}
	a.mu.RLock()
	admin := a.isAdmin(n.Issuer)
	a.mu.RUnlock()
	if !admin {
		return deny(GrantBadIssuer, n.Issuer, "", "", "block notice of %s is signed by %s, which is not a configured system administrator", n.Agent, n.Issuer)
	}
	if err := a.verifySig(n.Issuer, int64(n.Gen), n.Head, n.Issued, n.SigningInput, n.Sig, nil); err != nil {
		return deny(GrantBadSignature, n.Issuer, "", "", "block notice of %s: %v", n.Agent, err)
	}
	return nil
}
