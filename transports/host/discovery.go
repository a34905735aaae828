package host

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/custos-agent/custos/transports"
	pb "github.com/custos-agent/custos/transports/proto"
)

// RecordJudge judges the DHT records a plugin stores, serves or selects (ADR 0070): the plugin asks, on
// its Questions stream, and the host answers with the core's verification code. Implementations must
// be safe for concurrent use.
type RecordJudge interface {
	// ValidateRecord returns nil when value is a valid record for key, else why not.
	ValidateRecord(ctx context.Context, key string, value []byte) error
	// SelectRecord returns the index of the best of values (each valid) for key.
	SelectRecord(ctx context.Context, key string, values [][]byte) (int, error)
}

// ErrNoDiscovery: the transport's plugin has no DHT.
var ErrNoDiscovery = errors.New("transport has no DHT")

// PutRecord stores the record value under key in the transport's DHT.
func (t *Transport) PutRecord(ctx context.Context, key string, value []byte) error {
	in, err := t.current()
	if err != nil {
		return err
	}
	cctx, cancel := in.call(ctx)
	defer cancel()
	_, err = in.h.rpc.PutRecord(cctx, &pb.PutRecordRequest{Key: key, Record: value})
	return discoveryErr(t.cfg.Name, "put", key, err)
}

// FindRecord looks key up in the transport's DHT. The plugin's answer is returned as it is: the caller
// verifies it (a plugin's word is never taken).
func (t *Transport) FindRecord(ctx context.Context, key string, timeout time.Duration) ([]byte, error) {
	in, err := t.current()
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = t.cfg.CallTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, timeout+time.Second)
	defer cancel()
	resp, err := in.h.rpc.FindRecord(cctx, &pb.FindRecordRequest{Key: key, TimeoutMs: uint32(timeout / time.Millisecond)})
	if err := discoveryErr(t.cfg.Name, "find", key, err); err != nil {
		return nil, err
	}
	v := resp.GetRecord()
	if len(v) == 0 || len(v) > transports.MaxRecordSize {
		return nil, misbehaved("record of %d bytes (want 1..%d)", len(v), transports.MaxRecordSize)
	}
	return v, nil
}

func discoveryErr(transport, op, key string, err error) error {
	switch {
	case err == nil:
		return nil
	case status.Code(err) == codes.Unimplemented:
		return fmt.Errorf("%s: %w", transport, ErrNoDiscovery)
	}
	return fmt.Errorf("%s %s %s: %w", transport, op, key, rpcErr(err))
}

// maxQuestionsInFlight bounds the record questions of one plugin process judged at once.
const maxQuestionsInFlight = 16

// serveQuestions answers the plugin's record questions with cfg.Judge until the process ends. A plugin
// without a DHT ends the stream at once (Unimplemented).
func (in *instance) serveQuestions() {
	j := in.cfg.Judge
	st, err := in.h.rpc.Questions(in.ctx)
	if err != nil {
		return
	}
	if err := st.Send(&pb.Answer{Id: 0}); err != nil {
		return
	}
	var sendMu sync.Mutex
	busy := make(chan struct{}, maxQuestionsInFlight) // a flooding plugin waits: its questions are not read
	for {
		q, err := st.Recv()
		if err != nil {
			if status.Code(err) != codes.Unimplemented && in.ctx.Err() == nil {
				in.cfg.Logger.Warn("record questions stream ended", "pid", in.pid, "err", err)
			}
			return
		}
		busy <- struct{}{}
		go func() {
			defer func() { <-busy }()
			a := answer(in.ctx, j, q)
			sendMu.Lock()
			err := st.Send(a)
			sendMu.Unlock()
			if err != nil {
				in.cfg.Logger.Debug("answering a record question", "err", err)
			}
		}()
	}
}

// answer judges one question; what a plugin sends is bounded before the judge sees it.
func answer(ctx context.Context, j RecordJudge, q *pb.Question) *pb.Answer {
	a := &pb.Answer{Id: q.GetId()}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	key, vals := q.GetKey(), q.GetValues()
	if err := transports.CheckText("record key", key, transports.MaxRecordKeyLen); err != nil {
		a.Reason = "malformed: " + err.Error()
		return a
	}
	for _, v := range vals {
		if len(v) == 0 || len(v) > transports.MaxRecordSize {
			a.Reason = fmt.Sprintf("malformed: record of %d bytes", len(v))
			return a
		}
	}
	switch q.GetKind() {
	case pb.Question_KIND_VALIDATE:
		if len(vals) != 1 {
			a.Reason = fmt.Sprintf("malformed: validate %d records (want 1)", len(vals))
			return a
		}
		if err := j.ValidateRecord(ctx, key, vals[0]); err != nil {
			a.Reason = err.Error()
			return a
		}
		a.Valid = true
	case pb.Question_KIND_SELECT:
		if len(vals) == 0 || len(vals) > transports.MaxSelectValues {
			a.Reason = fmt.Sprintf("malformed: select among %d records", len(vals))
			return a
		}
		i, err := j.SelectRecord(ctx, key, vals)
		if err != nil || i < 0 || i >= len(vals) {
			a.Reason = fmt.Sprintf("no valid record: %v", err)
			return a
		}
		a.Valid, a.Best = true, uint32(i)
	case pb.Question_KIND_GOSSIP:
		answerGossip(ctx, j, q, a)
	default:
		a.Reason = fmt.Sprintf("unknown question kind %d", q.GetKind())
	}
	return a
}
