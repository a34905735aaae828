package transporttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"testing"
	"time"
)

// FrameConn is what the helpers and benchmarks drive: a connection of any transport, or a raw baseline.
type FrameConn interface {
	ReadFrame(ctx context.Context) ([]byte, error)
	WriteFrame(ctx context.Context, frame []byte) error
}

// Exchange sends frames from w to r and checks they arrive intact and in order.
func Exchange(t testing.TB, w, r FrameConn, frames [][]byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		for _, f := range frames {
			if err := w.WriteFrame(ctx, f); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for i, want := range frames {
		got, err := r.ReadFrame(ctx)
		if err != nil {
			t.Fatalf("frame %d: read: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("frame %d: got %d bytes, want %d (content differs: %v)", i, len(got), len(want), !bytes.Equal(got, want))
		}
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
}

// Frame returns n random bytes.
func Frame(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// ExpectEnd waits for c to end (ReadFrame returns an error), reading past any frames, and returns that
// error; the test fails if c is still open after within.
func ExpectEnd(t testing.TB, c FrameConn, within time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	for {
		_, err := c.ReadFrame(ctx)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("connection still open after %v", within)
			}
			return err
		}
	}
}
