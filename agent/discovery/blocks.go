package discovery

import (
	"context"
	"encoding/json"

	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/transports"
)

// Block notices on gossip (ADR 0101, docs/protocol.md "Block notices on gossip"): an administrator's
// signed "block agent X until T" (or its unblock) on transports.TopicBlocks, with the issuer's key event
// log, judged by authorization like a revocation and installed as a network block; pushed to a peer
// whose session comes up (catch-up), since the notices in force are few.

// BlockMessageVersion is the version of the block gossip message.
const BlockMessageVersion = 1

// BlockMessage is what travels on transports.TopicBlocks: the notice exactly as rbac.BlockNotice.Encode
// writes it and the issuer's key event log (JSON lines, may be omitted).
type BlockMessage struct {
	V         int    `json:"v"`
	Notice    string `json:"notice"`
	IssuerLog string `json:"issuer_log,omitempty"`
}

// Blocks applies block notices (*authz.Authz).
type Blocks interface {
	// InstallBlockNotice verifies n completely and applies it; ignore is true when err is not the
	// sender's fault (an older notice than the one held). via says how it came, for the audit record.
	InstallBlockNotice(ctx context.Context, n rbac.BlockNotice, issuerLog []byte, via string) (ignore bool, err error)
	// HeldBlockNotices returns the notices held that have not ended, newest first, at most max.
	HeldBlockNotices(max int) [][]byte
	// OnBlockNotice sets the function called with each notice this agent issues (New sets it: published).
	OnBlockNotice(func(rbac.BlockNotice))
	// IssuerLog returns the key event log (JSON lines) known of an issuer, or nil.
	IssuerLog(issuer string) []byte
}

// EncodeBlockMessage makes the gossip message of n with the issuer's key event log (may be empty; one
// too long for the gossip limit is left out).
func EncodeBlockMessage(n rbac.BlockNotice, issuerLog []byte) ([]byte, error) {
	b, err := json.Marshal(BlockMessage{V: BlockMessageVersion, Notice: string(n.Encode()), IssuerLog: string(issuerLog)})
	if err != nil {
		return nil, err
	}
	if len(b) > transports.MaxGossipSize {
		if len(issuerLog) > 0 {
			return EncodeBlockMessage(n, nil)
		}
		return nil, reason.New(reason.TooLarge, "block message of %d bytes (limit %d)", len(b), transports.MaxGossipSize)
	}
	return b, nil
}

// DecodeBlockMessage decodes a block gossip message strictly (unknown fields, trailing data, another
// version, a notice not in canonical form or out of its bounds: refused). Nothing is verified here.
func DecodeBlockMessage(b []byte) (rbac.BlockNotice, []byte, error) {
	if len(b) == 0 || len(b) > transports.MaxGossipSize {
		return rbac.BlockNotice{}, nil, reason.New(reason.Malformed, "block message of %d bytes (want 1..%d)", len(b), transports.MaxGossipSize)
	}
	var m BlockMessage
	if err := strictjson.Decode(b, &m, transports.MaxGossipSize); err != nil {
		return rbac.BlockNotice{}, nil, reason.Wrap(reason.Malformed, err, "block message")
	}
	if m.V != BlockMessageVersion {
		return rbac.BlockNotice{}, nil, reason.New(reason.UnknownVersion, "block message version %d (this agent speaks %d)", m.V, BlockMessageVersion)
	}
	n, err := rbac.DecodeBlockNotice([]byte(m.Notice))
	if err != nil {
		return rbac.BlockNotice{}, nil, reason.Wrap(reason.Malformed, err, "block message")
	}
	return n, []byte(m.IssuerLog), nil
}

// judgeBlock judges a block gossip message (or a catch-up entry) and applies it.
func (s *Service) judgeBlock(ctx context.Context, data []byte, via string) (bool, error) {
	if s.cfg.Blocks == nil {
		return true, reason.New(reason.Unavailable, "this agent applies no block notices")
	}
	n, log, err := DecodeBlockMessage(data)
	if err != nil {
		return false, err
	}
	return s.cfg.Blocks.InstallBlockNotice(ctx, n, log, via)
}

// PublishBlockNotice sends n (with its issuer's key event log) on the block topic of every transport that
// runs gossip, and returns how many took it.
func (s *Service) PublishBlockNotice(ctx context.Context, n rbac.BlockNotice) (int, error) {
	msg, err := EncodeBlockMessage(n, s.cfg.Blocks.IssuerLog(n.Issuer))
	if err != nil {
		return 0, err
	}
	return s.publish(ctx, transports.TopicBlocks, msg)
}

// blockHook publishes a notice this agent issued in the background.
func (s *Service) blockHook(n rbac.BlockNotice) {
	go func() {
		pctx, cancel := context.WithTimeout(context.Background(), publishTimeout)
		defer cancel()
		cnt, err := s.PublishBlockNotice(pctx, n)
		if err != nil || cnt == 0 {
			s.cfg.Logger.Warn("block notice not gossiped", "agent", n.Agent, "action", n.Action, "transports", cnt, "err", err)
			return
		}
		s.cfg.Logger.Info("block notice gossiped", "agent", n.Agent, "action", n.Action, "transports", cnt)
	}()
}

// catchupSendBlocks pushes the notices held to a peer whose session came up (none: nothing is sent).
func (s *Service) catchupSendBlocks(ctx context.Context, peer string) {
	if s.cfg.Blocks == nil {
		return
	}
	held := s.cfg.Blocks.HeldBlockNotices(transports.MaxCatchupBlocks)
	out := make([]json.RawMessage, 0, len(held))
	size := 64
	for _, raw := range held {
		n, err := rbac.DecodeBlockNotice(raw)
		if err != nil {
			continue
		}
		msg, err := EncodeBlockMessage(n, s.cfg.Blocks.IssuerLog(n.Issuer))
		if err != nil || size+len(msg)+1 > transports.MaxCatchupMessage {
			continue
		}
		size += len(msg) + 1
		out = append(out, msg)
	}
	if len(out) == 0 {
		return
	}
	s.sendCatchup(ctx, peer, CatchupMessage{V: CatchupVersion, Blocks: &out}, "blocks")
}

// catchupBlocks judges the notices a peer pushed, each exactly as a gossiped one. One blocks message per
// session; a notice that does not verify cuts catch-up with the peer off (and scores it down).
func (s *Service) catchupBlocks(ctx context.Context, peer string, raws []json.RawMessage) error {
	s.cu.mu.Lock()
	p := s.cu.peer(peer)
	if p.cut {
		s.cu.mu.Unlock()
		s.m.catchup("dropped")
		return reason.New(reason.CatchupUnsolicited, "catch-up from %s ended for this session: block notices dropped", peer)
	}
	if p.blocks >= 1 {
		s.cu.mu.Unlock()
		return s.catchupViolation(ctx, peer, reason.New(reason.CatchupExceeded, "a second message of block notices in this session (at most one)"))
	}
	p.blocks++
	s.cu.mu.Unlock()
	for _, raw := range raws {
		ignore, err := s.judgeBlock(ctx, raw, "catch-up from "+peer)
		switch {
		case err == nil:
			s.m.catchup("accept")
		case ignore:
			s.m.catchup("ignore")
		default:
			s.m.catchup("reject:" + codeLabel(err))
			return s.cutOff(ctx, peer, err)
		}
	}
	return nil
}
