package host

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custos-agent/custos/transports"
	pb "github.com/custos-agent/custos/transports/proto"
)

// GossipJudge judges gossip messages a plugin received (ADR 0091). The Judge of Config may implement it;
// a plugin's gossip is ignored (not forwarded, nobody penalised) when it does not.
type GossipJudge interface {
	// ValidateGossip verifies data received on topic from the libp2p peer from, and applies it when
	// valid. ignore is true when err is not the sender's fault (dropped without penalty).
	ValidateGossip(ctx context.Context, topic, from string, data []byte) (ignore bool, err error)
}

// ErrNoGossip: the transport's plugin runs no gossip.
var ErrNoGossip = errors.New("transport has no gossip")

// Publish sends data on the transport's gossip topic.
func (t *Transport) Publish(ctx context.Context, topic string, data []byte) error {
	if n := len(data); n == 0 || n > transports.MaxGossipSize {
		return fmt.Errorf("gossip message of %d bytes (want 1..%d)", n, transports.MaxGossipSize)
	}
	in, err := t.current()
	if err != nil {
		return err
	}
	cctx, cancel := in.call(ctx)
	defer cancel()
	_, err = in.h.rpc.Publish(cctx, &pb.PublishRequest{Topic: topic, Data: data})
	switch {
	case err == nil:
		return nil
	case status.Code(err) == codes.Unimplemented:
		return fmt.Errorf("%s: %w", t.cfg.Name, ErrNoGossip)
	}
	return fmt.Errorf("%s publish on %s: %w", t.cfg.Name, topic, rpcErr(err))
}

// answerGossip judges a KIND_GOSSIP question (bounded by answer).
func answerGossip(ctx context.Context, j RecordJudge, q *pb.Question, a *pb.Answer) {
	gj, ok := j.(GossipJudge)
	if !ok {
		a.Ignore, a.Reason = true, "this agent judges no gossip"
		return
	}
	if len(q.GetValues()) != 1 || len(q.GetValues()[0]) > transports.MaxGossipSize {
		a.Reason = fmt.Sprintf("malformed: gossip question with %d messages (want 1 of at most %d bytes)", len(q.GetValues()), transports.MaxGossipSize)
		return
	}
	if err := transports.CheckText("gossip sender", q.GetFrom(), transports.MaxRecordKeyLen); err != nil {
		a.Reason = "malformed: " + err.Error()
		return
	}
	ignore, err := gj.ValidateGossip(ctx, q.GetKey(), q.GetFrom(), q.GetValues()[0])
	if err != nil {
		a.Ignore, a.Reason = ignore, err.Error()
		return
	}
	a.Valid = true
}
