package discovery

import (
	"context"
	"encoding/json"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/identity"
)

// defaultFindTimeout bounds a lookup when the caller gives none.
const defaultFindTimeout = 10 * time.Second

// Handlers are the control operations this package serves (agent/api.Table gives their permissions):
// peers.find.
func (s *Service) Handlers() map[string]api.Handler {
	return map[string]api.Handler{api.OpPeersFind: s.opFind}
}

func (s *Service) opFind(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
	var a api.FindArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return nil, err
	}
	id, err := identity.ParseID(a.ID)
	if err != nil {
		return nil, control.Errorf(control.CodeBadRequest, "id %q: %v", a.ID, err)
	}
	timeout := defaultFindTimeout
	if a.TimeoutMS != 0 {
		timeout = time.Duration(a.TimeoutMS) * time.Millisecond
		if a.TimeoutMS < 0 || timeout > api.MaxFindTimeout {
			return nil, control.Errorf(control.CodeBadRequest, "timeout_ms %d: want 1..%d", a.TimeoutMS, api.MaxFindTimeout.Milliseconds())
		}
	}
	if id.Equal(s.cfg.Self) {
		if r := s.Current(); r != nil {
			return View(r), nil
		}
		return nil, control.Errorf(control.CodeNotFound, "this agent has not published its record yet")
	}
	r, err := s.Find(ctx, id, timeout)
	if err != nil {
		return nil, control.Errorf(control.CodeNotFound, "%v", err)
	}
	return View(r), nil
}

// View is the control API's form of a verified record.
func View(r *Record) api.PeerRecord {
	v := api.PeerRecord{AgentID: r.AgentID, Generation: r.Generation, PeerID: r.PeerID, Seq: r.Seq,
		Expires: time.Unix(r.Expires, 0).UTC(), Addrs: []api.PeerAddress{}}
	for _, a := range r.Addrs {
		v.Addrs = append(v.Addrs, api.PeerAddress{Transport: a.Transport, Address: a.Addr})
	}
	return v
}
