package discovery

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/custos-agent/custos/agent/envelope"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/strictjson"
	"github.com/custos-agent/custos/reason"
	"github.com/custos-agent/custos/transports"
)

// Catch-up of revocations (ADR 0096, docs/protocol.md "Catch-up of revocations"). Gossipsub does not
// replay: an agent that was offline when a revocation was gossiped learns it from its peers when a
// session comes up. Each side offers the (grant, issuer) pairs of the revocations it holds; the other
// asks for the ones it wants (issuer one of its administrators or the issuer of a grant it holds, grant
// not revoked here) in wants of at most transports.MaxCatchupWant; each want is answered by one batch of
// revocation gossip messages, and every revocation of a batch is judged exactly as a gossiped one
// (judgeGossip). A batch entry nobody asked for, a revocation that does not verify, or more offers or
// wants than a session allows: the peer is reported (Misbehaved) and catch-up from it ends until its
// next session.

// CatchupVersion is the version of revocation_sync messages.
const CatchupVersion = 1

// CatchupEntry names one revocation in an offer.
type CatchupEntry struct {
	Grant  string `json:"grant"`
	Issuer string `json:"issuer"`
}

// CatchupMessage is the payload of a revocation_sync message: exactly one of Offer (1 to
// transports.MaxCatchupOffer entries), Want (1 to MaxCatchupWant grant IDs) and Batch (0 to
// MaxCatchupWant revocation gossip messages; empty: the peer holds none of the grants asked).
type CatchupMessage struct {
	V     int                `json:"v"`
	Offer *[]CatchupEntry    `json:"offer,omitempty"`
	Want  *[]string          `json:"want,omitempty"`
	Batch *[]json.RawMessage `json:"batch,omitempty"`
	// Blocks: 1 to transports.MaxCatchupBlocks block gossip messages, pushed once per session (ADR 0101).
	Blocks *[]json.RawMessage `json:"blocks,omitempty"`
}

// Catchup is what catch-up needs of authorization (*authz.Authz) besides Revocations.
type Catchup interface {
	// HeldRevocations returns the revocations recorded here, newest first, at most max.
	HeldRevocations(max int) []rbac.Revocation
	// HeldRevocationOf returns the revocation of grant recorded here.
	HeldRevocationOf(grant string) (rbac.Revocation, bool)
	// RevocationWanted returns whether a revocation of grant by issuer would be of use here and is not
	// held yet (one snapshot of the grants this agent holds, for one offer).
	RevocationWanted() func(grant, issuer string) bool
	// IssuerLog returns the key event log (JSON lines) known of an issuer, or nil: sent with its
	// revocations.
	IssuerLog(issuer string) []byte
	// SendTo sends a message to a connected peer.
	SendTo(ctx context.Context, peer string, t envelope.MessageType, payload []byte) error
	// OnCatchup sets the handler of the revocation_sync messages peers send (New sets HandleCatchup).
	OnCatchup(func(ctx context.Context, peer string, payload []byte) error)
}

// DecodeCatchup decodes a revocation_sync payload strictly and checks its bounds; the revocations of a
// batch are decoded (DecodeRevocationMessage) but not verified. Refusals carry reason.Malformed or
// reason.UnknownVersion.
func DecodeCatchup(b []byte) (*CatchupMessage, []rbac.Revocation, error) {
	if len(b) == 0 || len(b) > transports.MaxCatchupMessage {
		return nil, nil, reason.New(reason.Malformed, "revocation_sync message of %d bytes (want 1..%d)", len(b), transports.MaxCatchupMessage)
	}
	var m CatchupMessage
	if err := strictjson.Decode(b, &m, transports.MaxCatchupMessage); err != nil {
		return nil, nil, reason.Wrap(reason.Malformed, err, "revocation_sync message")
	}
	if m.V != CatchupVersion {
		return nil, nil, reason.New(reason.UnknownVersion, "revocation_sync message version %d (this agent speaks %d)", m.V, CatchupVersion)
	}
	n := 0
	for _, set := range []bool{m.Offer != nil, m.Want != nil, m.Batch != nil, m.Blocks != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, nil, reason.New(reason.Malformed, "revocation_sync message with %d of offer, want, batch and blocks (want exactly one)", n)
	}
	if m.Blocks != nil {
		if l := len(*m.Blocks); l == 0 || l > transports.MaxCatchupBlocks {
			return nil, nil, reason.New(reason.Malformed, "revocation_sync blocks of %d notices (want 1..%d)", l, transports.MaxCatchupBlocks)
		}
		for i, raw := range *m.Blocks {
			if _, _, err := DecodeBlockMessage(raw); err != nil {
				return nil, nil, reason.Wrap(reason.Of(err), err, "revocation_sync blocks entry %d", i)
			}
		}
		return &m, nil, nil
	}
	seen := map[string]bool{}
	dup := func(g string) error {
		if seen[g] {
			return reason.New(reason.Malformed, "revocation_sync: grant %s listed twice", g)
		}
		seen[g] = true
		return nil
	}
	switch {
	case m.Offer != nil:
		if l := len(*m.Offer); l == 0 || l > transports.MaxCatchupOffer {
			return nil, nil, reason.New(reason.Malformed, "revocation_sync offer of %d entries (want 1..%d)", l, transports.MaxCatchupOffer)
		}
		for _, e := range *m.Offer {
			if err := rbac.CheckGrantID(e.Grant); err != nil {
				return nil, nil, reason.Wrap(reason.Malformed, err, "revocation_sync offer")
			}
			if id, err := identity.ParseID(e.Issuer); err != nil || id.String() != e.Issuer {
				return nil, nil, reason.New(reason.Malformed, "revocation_sync offer: issuer %.80q is not an agent ID in canonical form", e.Issuer)
			}
			if err := dup(e.Grant); err != nil {
				return nil, nil, err
			}
		}
	case m.Want != nil:
		if l := len(*m.Want); l == 0 || l > transports.MaxCatchupWant {
			return nil, nil, reason.New(reason.Malformed, "revocation_sync want of %d grants (want 1..%d)", l, transports.MaxCatchupWant)
		}
		for _, g := range *m.Want {
			if err := rbac.CheckGrantID(g); err != nil {
				return nil, nil, reason.Wrap(reason.Malformed, err, "revocation_sync want")
			}
			if err := dup(g); err != nil {
				return nil, nil, err
			}
		}
	default:
		if l := len(*m.Batch); l > transports.MaxCatchupWant {
			return nil, nil, reason.New(reason.Malformed, "revocation_sync batch of %d revocations (at most %d)", l, transports.MaxCatchupWant)
		}
		revs := make([]rbac.Revocation, 0, len(*m.Batch))
		for i, raw := range *m.Batch {
			r, _, err := DecodeRevocationMessage(raw)
			if err != nil {
				return nil, nil, reason.Wrap(reason.Of(err), err, "revocation_sync batch entry %d", i)
			}
			if err := dup(r.Grant); err != nil {
				return nil, nil, err
			}
			revs = append(revs, r)
		}
		return &m, revs, nil
	}
	return &m, nil, nil
}

// catchupPeer is the catch-up state with one peer.
type catchupPeer struct {
	queue  []string        // grants the peer offered that this agent wants, not asked yet
	asked  map[string]bool // grants of the outstanding want not answered yet
	order  []string        // the outstanding want, in order
	prev   map[string]bool // grants asked in the peer's previous session (a late answer is no violation)
	rounds int             // wants sent since the peer's last offer
	cut    bool            // catch-up from this peer ended for this session (a violation)
	offers int             // offers received this session
	served int             // wants answered this session
	blocks int             // messages of block notices received this session
}

type catchupState struct {
	mu    sync.Mutex
	peers map[string]*catchupPeer
	quiet map[string]int // grants being judged from a batch: not republished on gossip
}

// setQuiet marks grants as being judged from a catch-up batch (on, until off).
func (c *catchupState) setQuiet(grants []string, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.quiet == nil {
		c.quiet = map[string]int{}
	}
	for _, g := range grants {
		if on {
			c.quiet[g]++
		} else if c.quiet[g]--; c.quiet[g] <= 0 {
			delete(c.quiet, g)
		}
	}
}

func (c *catchupState) quieted(grant string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.quiet[grant] > 0
}

func (c *catchupState) peer(id string) *catchupPeer {
	if c.peers == nil || len(c.peers) >= transports.MaxCatchupPeers && c.peers[id] == nil {
		c.peers = map[string]*catchupPeer{}
	}
	p := c.peers[id]
	if p == nil {
		p = &catchupPeer{asked: map[string]bool{}}
		c.peers[id] = p
	}
	return p
}

func (s *Service) catchupOn() bool {
	return s.cfg.Catchup != nil && s.cfg.Revocations != nil
}

// CatchupPeerUp starts the catch-up with a peer whose session just came up: its counters start again
// and it is offered the revocations held here (none: nothing is sent). It does not wait for the send.
func (s *Service) CatchupPeerUp(ctx context.Context, peer string) {
	if !s.catchupOn() {
		return
	}
	s.cu.mu.Lock()
	p := s.cu.peer(peer)
	p.prev, p.asked, p.order = p.asked, map[string]bool{}, nil
	p.queue, p.rounds, p.cut, p.offers, p.served, p.blocks = nil, 0, false, 0, 0, 0
	s.cu.mu.Unlock()
	s.catchupSendBlocks(ctx, peer) // the block notices in force (ADR 0101)
	held := s.cfg.Catchup.HeldRevocations(transports.MaxCatchupOffer)
	if len(held) == 0 {
		return
	}
	offer := make([]CatchupEntry, 0, len(held))
	for _, r := range held {
		offer = append(offer, CatchupEntry{Grant: r.Grant, Issuer: r.Issuer})
	}
	s.sendCatchup(ctx, peer, CatchupMessage{V: CatchupVersion, Offer: &offer}, "offer")
}

// sendCatchup sends m to peer in the background (a receive loop must never wait on its own sends).
func (s *Service) sendCatchup(ctx context.Context, peer string, m CatchupMessage, kind string) {
	b, err := json.Marshal(m)
	if err == nil && len(b) > transports.MaxCatchupMessage {
		err = fmt.Errorf("%d bytes (limit %d)", len(b), transports.MaxCatchupMessage)
	}
	if err != nil {
		s.cfg.Logger.Warn("catch-up message not sent", "peer", peer, "kind", kind, "err", err)
		return
	}
	go func() {
		sctx, cancel := context.WithTimeout(ctx, publishTimeout)
		defer cancel()
		if err := s.cfg.Catchup.SendTo(sctx, peer, envelope.RevocationSync, b); err != nil {
			s.cfg.Logger.Info("catch-up message not sent", "peer", peer, "kind", kind, "err", err)
			return
		}
		s.cfg.Logger.Debug("catch-up message sent", "peer", peer, "kind", kind, "bytes", len(b))
	}()
}

// HandleCatchup handles a revocation_sync message of an authenticated peer (after authorization's
// checks). A malformed message, a violation of the bounds, an unsolicited or invalid revocation: the
// peer is reported (Misbehaved) and catch-up from it ends for this session; the error says why.
func (s *Service) HandleCatchup(ctx context.Context, peer string, payload []byte) error {
	if !s.catchupOn() {
		return reason.New(reason.Unavailable, "this agent runs no catch-up of revocations")
	}
	m, revs, err := DecodeCatchup(payload)
	if err != nil {
		return s.catchupViolation(ctx, peer, err)
	}
	switch {
	case m.Offer != nil:
		return s.catchupOffer(ctx, peer, *m.Offer)
	case m.Want != nil:
		return s.catchupWant(ctx, peer, *m.Want)
	case m.Blocks != nil:
		return s.catchupBlocks(ctx, peer, *m.Blocks)
	}
	return s.catchupBatch(ctx, peer, *m.Batch, revs)
}

// catchupViolation counts a message refused before judging (refused:<code>) and cuts its peer off.
func (s *Service) catchupViolation(ctx context.Context, peer string, err error) error {
	s.m.catchup("refused:" + codeLabel(err))
	return s.cutOff(ctx, peer, err)
}

// cutOff reports peer (Misbehaved) and ends catch-up from it for this session.
func (s *Service) cutOff(ctx context.Context, peer string, err error) error {
	s.cu.mu.Lock()
	s.cu.peer(peer).cut = true
	s.cu.mu.Unlock()
	s.cfg.Logger.Info("catch-up from peer cut off", "peer", peer, "code", reason.Of(err), "err", err)
	if id, perr := identity.ParseID(peer); perr == nil && s.cfg.Misbehaved != nil {
		s.cfg.Misbehaved(ctx, id)
	}
	return err
}

func (s *Service) catchupOffer(ctx context.Context, peer string, offer []CatchupEntry) error {
	wanted := s.cfg.Catchup.RevocationWanted()
	s.cu.mu.Lock()
	p := s.cu.peer(peer)
	if p.offers >= transports.MaxCatchupRounds {
		s.cu.mu.Unlock()
		return s.catchupViolation(ctx, peer, reason.New(reason.CatchupExceeded, "offer %d of this session (at most %d)", p.offers+1, transports.MaxCatchupRounds))
	}
	p.offers++
	p.queue, p.rounds = nil, 0
	room := transports.MaxCatchupQueued // over all peers; the rest of the offer waits for a later session
	for _, q := range s.cu.peers {
		room -= len(q.queue) + len(q.asked)
	}
	for _, e := range offer {
		if len(p.queue) >= room {
			break
		}
		if !p.asked[e.Grant] && wanted(e.Grant, e.Issuer) {
			p.queue = append(p.queue, e.Grant)
		}
	}
	want := s.nextWantLocked(p)
	s.cu.mu.Unlock()
	s.cfg.Logger.Debug("catch-up offer", "peer", peer, "offered", len(offer), "wanted", len(want))
	if len(want) > 0 {
		s.sendCatchup(ctx, peer, CatchupMessage{V: CatchupVersion, Want: &want}, "want")
	}
	return nil
}

// nextWantLocked takes the next want off p's queue when none is outstanding and rounds remain.
func (s *Service) nextWantLocked(p *catchupPeer) []string {
	if p.cut || len(p.asked) > 0 || len(p.queue) == 0 || p.rounds >= transports.MaxCatchupRounds {
		return nil
	}
	n := min(len(p.queue), transports.MaxCatchupWant)
	want := append([]string(nil), p.queue[:n]...)
	p.queue = p.queue[n:]
	for _, g := range want {
		p.asked[g] = true
	}
	p.order = want
	p.rounds++
	return want
}

// catchupWant answers a want with one batch of the revocations held here among those asked, in the
// order asked, as long as they fit in one message (the peer asks again for the rest).
func (s *Service) catchupWant(ctx context.Context, peer string, want []string) error {
	s.cu.mu.Lock()
	p := s.cu.peer(peer)
	if p.served >= transports.MaxCatchupServed {
		s.cu.mu.Unlock()
		return s.catchupViolation(ctx, peer, reason.New(reason.CatchupExceeded, "want %d of this session (at most %d)", p.served+1, transports.MaxCatchupServed))
	}
	p.served++
	s.cu.mu.Unlock()
	batch := []json.RawMessage{}
	size := 64 // the wrapper
	logs := map[string][]byte{}
	for _, g := range want {
		r, ok := s.cfg.Catchup.HeldRevocationOf(g)
		if !ok {
			continue
		}
		lg, ok := logs[r.Issuer]
		if !ok {
			lg = s.cfg.Catchup.IssuerLog(r.Issuer)
			logs[r.Issuer] = lg
		}
		msg, err := EncodeRevocationMessage(r, lg)
		if err != nil { // the issuer's log is too long: send the revocation alone
			if msg, err = EncodeRevocationMessage(r, nil); err != nil {
				continue
			}
		}
		if size+len(msg)+1 > transports.MaxCatchupMessage {
			break
		}
		size += len(msg) + 1
		batch = append(batch, msg)
	}
	s.m.catchupServed(len(batch))
	s.sendCatchup(ctx, peer, CatchupMessage{V: CatchupVersion, Batch: &batch}, "batch")
	return nil
}

// catchupBatch judges the revocations of a batch that answers this agent's want, in order, exactly as
// gossiped ones; then asks for the rest.
func (s *Service) catchupBatch(ctx context.Context, peer string, raws []json.RawMessage, revs []rbac.Revocation) error {
	s.cu.mu.Lock()
	p := s.cu.peer(peer)
	if p.cut {
		s.cu.mu.Unlock()
		s.m.catchup("dropped")
		return reason.New(reason.CatchupUnsolicited, "catch-up from %s ended for this session: batch dropped", peer)
	}
	// It answers the outstanding want (current), or late, a want of the peer's previous session.
	current := len(p.asked) > 0 && len(revs) == 0
	for _, r := range revs {
		switch {
		case p.asked[r.Grant]:
			current = true
		case !p.prev[r.Grant]:
			s.cu.mu.Unlock()
			return s.catchupViolation(ctx, peer, reason.New(reason.CatchupUnsolicited, "batch carries the revocation of grant %s, which this agent did not ask for", r.Grant))
		}
	}
	if len(revs) == 0 && !current && len(p.prev) == 0 {
		s.cu.mu.Unlock()
		return s.catchupViolation(ctx, peer, reason.New(reason.CatchupUnsolicited, "an empty batch while no want is outstanding"))
	}
	var rest []string
	if current {
		// The peer answers in the order asked and stops when the message is full: the grants asked
		// after the last one it sent did not fit and are asked again first; those before it it does
		// not hold (an empty batch: none).
		if len(revs) > 0 {
			if last := slices.Index(p.order, revs[len(revs)-1].Grant); last >= 0 {
				for _, g := range p.order[last+1:] {
					if p.asked[g] {
						rest = append(rest, g)
					}
				}
			}
		}
	}
	for _, r := range revs { // each answered at most once
		delete(p.asked, r.Grant)
		delete(p.prev, r.Grant)
	}
	if len(revs) == 0 && !current {
		p.prev = nil // the late answer of the previous session: it holds none of them
	}
	s.cu.mu.Unlock()
	grants := make([]string, len(revs))
	for i, r := range revs {
		grants[i] = r.Grant
	}
	s.cu.setQuiet(grants, true) // what catch-up brings is not republished on gossip
	defer s.cu.setQuiet(grants, false)
	accepted := 0
	for i, raw := range raws {
		ignore, err := s.judgeGossip(ctx, transports.TopicRevocations, raw, "catch-up from "+peer)
		switch {
		case err == nil:
			accepted++
			s.m.catchup("accept")
		case ignore:
			s.m.catchup("ignore")
		default:
			s.m.catchup("reject:" + codeLabel(err))
			return s.cutOff(ctx, peer, fmt.Errorf("revocation of grant %s in a catch-up batch: %w", revs[i].Grant, err))
		}
	}
	if accepted > 0 {
		s.cfg.Logger.Info("revocations caught up", "peer", peer, "accepted", accepted, "in_batch", len(raws))
	}
	if !current {
		return nil
	}
	s.cu.mu.Lock()
	p.queue = append(rest, p.queue...)
	p.asked, p.order = map[string]bool{}, nil
	want := s.nextWantLocked(p)
	s.cu.mu.Unlock()
	if len(want) > 0 {
		s.sendCatchup(ctx, peer, CatchupMessage{V: CatchupVersion, Want: &want}, "want")
	}
	return nil
}

func codeLabel(err error) string {
	c := string(reason.Of(err))
	if !reason.Registered(c) {
		c = "other"
	}
	return c
}

type catchupMetrics struct {
	received *prometheus.CounterVec
	served   prometheus.Counter
}

func newCatchupMetrics() catchupMetrics {
	return catchupMetrics{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custos_revocation_catchup_total",
			Help: "Catch-up of revocations from peers (ADR 0096), by result: accept, ignore or reject:<code> for each revocation judged; refused:<code> for a message refused before judging (the peer is scored down); dropped for a batch after catch-up from its peer ended.",
		}, []string{"result"}),
		served: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "custos_revocation_catchup_served_total",
			Help: "Revocations this agent sent to peers that asked for them in catch-up (ADR 0096).",
		}),
	}
}

func (m *serviceMetrics) catchup(result string) { m.c.received.WithLabelValues(result).Inc() }

func (m *serviceMetrics) catchupServed(n int) { m.c.served.Add(float64(n)) }
