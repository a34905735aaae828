package transporttest

import (
	"context"
	"testing"
	"time"
)

// BenchSizes are the frame sizes every transport benchmark reports.
var BenchSizes = []struct {
	Name string
	Size int
}{{"1KiB", 1 << 10}, {"64KiB", 64 << 10}}

// Stream measures one-way streaming of b.N frames of size bytes from w to r: MB/s (b.SetBytes) and
// frames/s.
func Stream(b *testing.B, w, r FrameConn, size int) {
	b.Helper()
	frame := Frame(size)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	errc := make(chan error, 1)
	b.ResetTimer()
	start := time.Now()
	go func() {
		for i := 0; i < b.N; i++ {
			if err := w.WriteFrame(ctx, frame); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for i := 0; i < b.N; i++ {
		f, err := r.ReadFrame(ctx)
		if err != nil {
			b.Fatalf("read %d: %v", i, err)
		}
		if len(f) != size {
			b.Fatalf("frame %d: %d bytes, want %d", i, len(f), size)
		}
	}
	if err := <-errc; err != nil {
		b.Fatalf("write: %v", err)
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "frames/s")
}
