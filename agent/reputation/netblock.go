package reputation

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/reason"
)

// Network blocks (ADR 0101): an administrator's verified block notice puts a peer at Blocked until the
// notice's end, recording who blocked it; an administrator's later unblock notice lifts it. Unlike an
// operator's own block (Block), a network block ends by itself. The store keeps the newest notice about
// each peer (block or unblock) so that an older one arriving later (by gossip or catch-up) changes
// nothing, and so that it can serve the notices still in force to peers that catch up.

// Notice is what the store needs of a verified administrator notice.
type Notice struct {
	Peer   identity.ID
	Block  bool // false: unblock
	Issuer string
	Issued time.Time
	Until  time.Time
	Raw    []byte // the encoded notice, served to peers in catch-up
}

// ErrStaleNotice marks a notice issued before (or with) the one held about its peer.
var ErrStaleNotice = reason.New(reason.BlockStale, "an administrator notice about this agent issued at or after it is held")

// blockEnded reports whether r is a network block whose end has passed at now (Unix nanoseconds).
func (r *record) blockEnded(now int64) bool {
	return r.Level == Blocked && r.Until > 0 && now >= r.Until*int64(time.Second)
}

// ApplyNotice installs a verified administrator notice. A block puts the peer at Blocked until n.Until
// (an operator's own block, for good, is kept as it is; the notice is recorded). An unblock lifts a
// network block issued before it (a fresh start, as Unblock) and leaves an operator's own block. It
// returns whether the peer's level changed, or ErrStaleNotice when a notice about the peer issued at
// or after n's time is held (nothing changes). The level change is reported to Options.OnChange.
func (s *Store) ApplyNotice(ctx context.Context, n Notice) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if n.Peer.IsZero() || n.Issuer == "" || !n.Until.After(n.Issued) {
		return false, errors.New("reputation: a notice needs a peer, an issuer and an end after its issue time")
	}
	now := s.now().UnixNano()
	s.mu.Lock()
	r := s.get(n.Peer.String(), now)
	if r.NoticeIssued >= n.Issued.Unix() && r.Notice != "" {
		s.mu.Unlock()
		return false, ErrStaleNotice
	}
	from := r.Level
	own := r.Manual && r.Until == 0 && r.Level == Blocked // the operator's own block: kept
	switch {
	case own:
	case n.Block:
		r.Level, r.Manual, r.Until, r.BlockedBy = Blocked, true, n.Until.Unix(), n.Issuer
		if from != Blocked {
			r.Since = now
		}
	case r.Level == Blocked: // a network block: lifted, a fresh start
		*r = record{Peer: r.Peer, FirstSeen: r.FirstSeen, Updated: now, Level: New, Since: now}
	}
	r.Notice, r.NoticeIssued, r.NoticeUntil = string(n.Raw), n.Issued.Unix(), n.Until.Unix()
	changes, err := s.commit(map[string]*record{r.Peer: r}, now, nil)
	if err == nil && from != r.Level {
		changes = append(changes, Change{Peer: n.Peer, From: from, To: r.Level, Score: s.score(r), Manual: true, At: time.Unix(0, now)})
	}
	s.mu.Unlock()
	if err != nil {
		return false, err
	}
	s.report(changes)
	return from != r.Level, nil
}

// Notices returns the administrator notices held that are still relevant at now (their end not
// passed), newest first, at most max: what this agent offers peers in catch-up (ADR 0101).
func (s *Store) Notices(max int) [][]byte {
	now := s.now().Unix()
	type held struct {
		issued int64
		raw    string
	}
	var out []held
	s.mu.Lock()
	for _, r := range s.peers {
		if r.Notice != "" && r.NoticeUntil > now {
			out = append(out, held{r.NoticeIssued, r.Notice})
		}
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b held) int {
		switch {
		case a.issued > b.issued:
			return -1
		case a.issued < b.issued:
			return 1
		}
		return 0
	})
	if max > 0 && len(out) > max {
		out = out[:max]
	}
	raws := make([][]byte, len(out))
	for i, h := range out {
		raws[i] = []byte(h.raw)
	}
	return raws
}

// BlockOf returns who blocked peer by a network block in force and until when (ok false: none).
func (s *Store) BlockOf(peer identity.ID) (issuer string, until time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, found := s.peers[peer.String()]
	if !found || r.Level != Blocked || r.Until == 0 || r.blockEnded(s.now().UnixNano()) {
		return "", time.Time{}, false
	}
	return r.BlockedBy, time.Unix(r.Until, 0), true
}
