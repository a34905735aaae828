package plugin

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custos-agent/custos/transports"
	pb "github.com/custos-agent/custos/transports/proto"
)

// Discovery is an optional Network capability: a DHT that stores and finds records the host judges
// (ADR 0070). A Network without it answers PutRecord and FindRecord with Unimplemented.
type Discovery interface {
	// UseJudge is called once, before Configure, with the plugin's way to ask the host about records.
	UseJudge(j Judge)
	// UseDHTMode is called once, before Configure, with the host's word on whether the DHT answers other
	// nodes' lookups (server) or only asks (client): ConfigureRequest.dht_mode, which the host decides from
	// the agent's own roles (self.lookup.answer, ADR 0094 amendment).
	UseDHTMode(server bool)
	// PutRecord stores value under key in the DHT (locally and at the closest peers).
	PutRecord(ctx context.Context, key string, value []byte) error
	// FindRecord looks key up and returns the best valid value found.
	FindRecord(ctx context.Context, key string) ([]byte, error)
}

// Judge answers whether a record is valid and which of several is best. The plugin holds no verification
// code of its own: the host answers, through the Questions stream.
type Judge interface {
	Validate(ctx context.Context, key string, value []byte) error
	Select(ctx context.Context, key string, values [][]byte) (int, error)
	// ValidateGossip judges a gossip message (ADR 0091): the verdict, and why when not accepted.
	ValidateGossip(ctx context.Context, topic, from string, data []byte) (GossipVerdict, string)
}

// ErrNoJudge: no host is answering questions (the stream is not open): every record is refused.
var ErrNoJudge = errors.New("no host answers record questions")

// questionTimeout bounds one question to the host.
const questionTimeout = 5 * time.Second

// judge is the Server's Judge: it sends questions on the open Questions stream and waits for answers.
type judge struct {
	mu      sync.Mutex
	stream  grpc.BidiStreamingServer[pb.Answer, pb.Question]
	sendMu  sync.Mutex
	next    uint64
	pending map[uint64]chan *pb.Answer
}

func newJudge() *judge { return &judge{pending: map[uint64]chan *pb.Answer{}} }

func (j *judge) ask(ctx context.Context, q *pb.Question) (*pb.Answer, error) {
	ctx, cancel := context.WithTimeout(ctx, questionTimeout)
	defer cancel()
	ch := make(chan *pb.Answer, 1)
	j.mu.Lock()
	st := j.stream
	if st == nil {
		j.mu.Unlock()
		return nil, ErrNoJudge
	}
	j.next++
	q.Id = j.next
	j.pending[q.Id] = ch
	j.mu.Unlock()
	defer func() {
		j.mu.Lock()
		delete(j.pending, q.Id)
		j.mu.Unlock()
	}()
	j.sendMu.Lock()
	err := st.Send(q)
	j.sendMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoJudge, err)
	}
	select {
	case a := <-ch:
		if a == nil {
			return nil, ErrNoJudge
		}
		return a, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("the host did not answer: %w", ctx.Err())
	}
}

// Validate implements Judge.
func (j *judge) Validate(ctx context.Context, key string, value []byte) error {
	if len(value) > transports.MaxRecordSize {
		return fmt.Errorf("record of %d bytes (limit %d)", len(value), transports.MaxRecordSize)
	}
	a, err := j.ask(ctx, &pb.Question{Kind: pb.Question_KIND_VALIDATE, Key: key, Values: [][]byte{value}})
	if err != nil {
		return err
	}
	if !a.GetValid() {
		return fmt.Errorf("refused by the host: %s", a.GetReason())
	}
	return nil
}

// Select implements Judge.
func (j *judge) Select(ctx context.Context, key string, values [][]byte) (int, error) {
	if len(values) == 0 || len(values) > transports.MaxSelectValues {
		return 0, fmt.Errorf("select among %d records (want 1..%d)", len(values), transports.MaxSelectValues)
	}
	a, err := j.ask(ctx, &pb.Question{Kind: pb.Question_KIND_SELECT, Key: key, Values: values})
	if err != nil {
		return 0, err
	}
	if !a.GetValid() || int(a.GetBest()) >= len(values) {
		return 0, fmt.Errorf("the host selected none: %s", a.GetReason())
	}
	return int(a.GetBest()), nil
}

// Questions implements the RPC: the host's stream of answers to the plugin's questions. One at a time.
func (s *Server) Questions(stream grpc.BidiStreamingServer[pb.Answer, pb.Question]) error {
	hello, err := stream.Recv()
	if err != nil {
		return err
	}
	if hello.GetId() != 0 {
		return status.Error(codes.InvalidArgument, "the first message must be the hello (answer id 0)")
	}
	j := s.judge
	j.mu.Lock()
	if j.stream != nil {
		j.mu.Unlock()
		return status.Error(codes.FailedPrecondition, "a Questions stream is already open")
	}
	j.stream = stream
	j.mu.Unlock()
	defer func() {
		j.mu.Lock()
		j.stream = nil
		for id, ch := range j.pending {
			close(ch)
			delete(j.pending, id)
		}
		j.mu.Unlock()
	}()
	for {
		a, err := stream.Recv()
		if err != nil {
			return nil
		}
		j.mu.Lock()
		ch := j.pending[a.GetId()]
		delete(j.pending, a.GetId())
		j.mu.Unlock()
		if ch != nil {
			ch <- a
		}
	}
}

func (s *Server) discovery() (Discovery, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	d, ok := s.net.(Discovery)
	if !ok {
		return nil, status.Errorf(codes.Unimplemented, "transport %s has no DHT", s.net.Name())
	}
	return d, nil
}

func checkKey(key string) error {
	if err := transports.CheckText("record key", key, transports.MaxRecordKeyLen); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return nil
}

// PutRecord implements the RPC.
func (s *Server) PutRecord(ctx context.Context, req *pb.PutRecordRequest) (*pb.PutRecordResponse, error) {
	d, err := s.discovery()
	if err != nil {
		return nil, err
	}
	if err := checkKey(req.GetKey()); err != nil {
		return nil, err
	}
	if len(req.GetRecord()) == 0 || len(req.GetRecord()) > transports.MaxRecordSize {
		return nil, status.Errorf(codes.InvalidArgument, "record of %d bytes (want 1..%d)", len(req.GetRecord()), transports.MaxRecordSize)
	}
	if err := d.PutRecord(ctx, req.GetKey(), req.GetRecord()); err != nil {
		return nil, status.Errorf(codes.Unavailable, "put %s: %v", req.GetKey(), err)
	}
	return &pb.PutRecordResponse{}, nil
}

// FindRecord implements the RPC.
func (s *Server) FindRecord(ctx context.Context, req *pb.FindRecordRequest) (*pb.FindRecordResponse, error) {
	d, err := s.discovery()
	if err != nil {
		return nil, err
	}
	if err := checkKey(req.GetKey()); err != nil {
		return nil, err
	}
	if t := req.GetTimeoutMs(); t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(t)*time.Millisecond)
		defer cancel()
	}
	v, err := d.FindRecord(ctx, req.GetKey())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "find %s: %v", req.GetKey(), err)
	}
	return &pb.FindRecordResponse{Record: v}, nil
}
