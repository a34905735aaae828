package flow

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/transports"
	pb "github.com/custos-agent/custos/transports/proto"
)

// pipe is an in-memory Stream pair (unit test of the credit logic; the real gRPC path is tested in
// transports/host with plugin processes).
type pipe struct {
	in     chan *pb.FrameMessage
	out    chan *pb.FrameMessage
	closed chan struct{}
	once   *sync.Once
}

func newPipe() (*pipe, *pipe) {
	a, b := make(chan *pb.FrameMessage, 1024), make(chan *pb.FrameMessage, 1024)
	c, o := make(chan struct{}), &sync.Once{}
	return &pipe{in: a, out: b, closed: c, once: o}, &pipe{in: b, out: a, closed: c, once: o}
}

func (p *pipe) Send(m *pb.FrameMessage) error {
	select {
	case p.out <- m:
		return nil
	case <-p.closed:
		return io.EOF
	}
}

func (p *pipe) Recv() (*pb.FrameMessage, error) {
	select {
	case m := <-p.in:
		return m, nil
	case <-p.closed:
		return nil, io.EOF
	}
}

func (p *pipe) abort() { p.once.Do(func() { close(p.closed) }) }

func TestCreditBoundsWhatIsInFlight(t *testing.T) {
	pa, pb_ := newPipe()
	const window = 64 << 10
	a, err := New(pa, Options{Window: window, Abort: pa.abort, Peer: "b"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(pb_, Options{Window: window, Abort: pb_.abort, Peer: "a"})
	if err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, 10<<10)
	sent := 0
	for ; sent < 100; sent++ {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		err := a.WriteFrame(ctx, frame)
		cancel()
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "waiting for b") {
				t.Fatalf("write %d: %v", sent, err)
			}
			break
		}
	}
	// A frame may be sent while credit is positive, so at most window/(frame+cost) + 1 frames fit.
	if max := window/(len(frame)+transports.FrameCost) + 1; sent > max || sent == 0 {
		t.Fatalf("sent %d frames into a %d-byte window (max %d)", sent, window, max)
	}
	// Reading returns credit; the writer proceeds.
	ctx := context.Background()
	for i := 0; i < sent; i++ {
		if _, err := b.ReadFrame(ctx); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := a.WriteFrame(wctx, frame); err != nil {
		t.Fatalf("write after the reader drained: %v", err)
	}
	if _, err := b.ReadFrame(ctx); err != nil {
		t.Fatal(err)
	}
	// Oversized frames are refused before anything is sent.
	if err := a.WriteFrame(ctx, make([]byte, transports.MaxFrameSize+1)); !errors.Is(err, transports.ErrFrameTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
}

func TestViolations(t *testing.T) {
	tests := []struct {
		name string
		msgs []*pb.FrameMessage
		want string
	}{
		{"data without credit", []*pb.FrameMessage{
			{Msg: &pb.FrameMessage_Data{Data: make([]byte, 1000)}},
			{Msg: &pb.FrameMessage_Data{Data: make([]byte, 1000)}},
		}, "without credit"},
		{"oversized frame", []*pb.FrameMessage{{Msg: &pb.FrameMessage_Data{Data: make([]byte, transports.MaxFrameSize+1)}}}, "frame of"},
		{"zero credit", []*pb.FrameMessage{{Msg: &pb.FrameMessage_Credit{Credit: 0}}}, "granted 0 bytes"},
		{"open mid-stream", []*pb.FrameMessage{{Msg: &pb.FrameMessage_Open{Open: &pb.Open{ConnId: "x"}}}}, "unexpected"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pa, raw := newPipe()
			c, err := New(pa, Options{Window: 1000, Abort: pa.abort, Peer: "evil"})
			if err != nil {
				t.Fatal(err)
			}
			<-raw.in // the initial credit grant
			for _, m := range tc.msgs {
				_ = raw.Send(m)
			}
			<-c.Done()
			var err2 error
			for err2 == nil {
				_, err2 = c.ReadFrame(context.Background())
			}
			if !errors.Is(err2, ErrViolation) || !strings.Contains(err2.Error(), tc.want) {
				t.Fatalf("got %v, want ErrViolation mentioning %q", err2, tc.want)
			}
			if err := c.WriteFrame(context.Background(), []byte("x")); !errors.Is(err, ErrViolation) {
				t.Fatalf("write after violation: %v", err)
			}
		})
	}
}
