package plugin

import (
	"context"
	"fmt"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custos-agent/custos/transports"
	pb "github.com/custos-agent/custos/transports/proto"
)

// Gossip is an optional Network capability: gossipsub topics (transports.GossipTopics) whose messages the
// host judges before they are forwarded (ADR 0091). A Network without it answers Publish with
// Unimplemented.
type Gossip interface {
	// Publish sends data on topic (already judged by the host: it signed or verified it).
	Publish(ctx context.Context, topic string, data []byte) error
}

// GossipVerdict is the host's answer about one gossip message.
type GossipVerdict int

// The verdicts, as gossipsub's validation results.
const (
	// GossipAccept: valid; delivered and forwarded.
	GossipAccept GossipVerdict = iota
	// GossipReject: invalid (malformed, bad signature): dropped, not forwarded, and the peer that sent it
	// loses gossipsub score.
	GossipReject
	// GossipIgnore: not wrong but of no use here (or no host to ask): dropped without penalty.
	GossipIgnore
)

// ValidateGossip implements Judge: asks the host about data received on topic from the libp2p peer from.
func (j *judge) ValidateGossip(ctx context.Context, topic, from string, data []byte) (GossipVerdict, string) {
	if len(data) == 0 || len(data) > transports.MaxGossipSize {
		return GossipReject, fmt.Sprintf("gossip message of %d bytes (want 1..%d)", len(data), transports.MaxGossipSize)
	}
	a, err := j.ask(ctx, &pb.Question{Kind: pb.Question_KIND_GOSSIP, Key: topic, From: from, Values: [][]byte{data}})
	switch {
	case err != nil:
		return GossipIgnore, err.Error() // nobody judged it: not forwarded, but the sender is not to blame
	case a.GetValid():
		return GossipAccept, ""
	case a.GetIgnore():
		return GossipIgnore, a.GetReason()
	}
	return GossipReject, a.GetReason()
}

// CheckTopic refuses a topic that is not one of transports.GossipTopics.
func CheckTopic(topic string) error {
	if !slices.Contains(transports.GossipTopics(), topic) {
		return fmt.Errorf("unknown gossip topic %q (known: %v)", topic, transports.GossipTopics())
	}
	return nil
}

// Publish implements the RPC.
func (s *Server) Publish(ctx context.Context, req *pb.PublishRequest) (*pb.PublishResponse, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	g, ok := s.net.(Gossip)
	if !ok {
		return nil, status.Errorf(codes.Unimplemented, "transport %s has no gossip", s.net.Name())
	}
	if err := CheckTopic(req.GetTopic()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if n := len(req.GetData()); n == 0 || n > transports.MaxGossipSize {
		return nil, status.Errorf(codes.InvalidArgument, "gossip message of %d bytes (want 1..%d)", n, transports.MaxGossipSize)
	}
	if err := g.Publish(ctx, req.GetTopic(), req.GetData()); err != nil {
		return nil, status.Errorf(codes.Unavailable, "publish on %s: %v", req.GetTopic(), err)
	}
	return &pb.PublishResponse{}, nil
}
