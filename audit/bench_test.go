package audit

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
)

// benchDir is where benchmarks write: $CUSTOS_BENCH_DIR (to measure another disk) or a temporary one.
func benchDir(b *testing.B) string {
	if d := os.Getenv("CUSTOS_BENCH_DIR"); d != "" {
		dir, err := os.MkdirTemp(d, "audit-bench")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return b.TempDir()
}

func benchRecord() Record {
	return Record{Type: AuthFailure, Actor: "ed25519:Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6", Outcome: OutcomeFailure,
		Subject: "handshake", Details: map[string]any{"reason": "bad_signature", "transport": "tcp", "remote": "192.0.2.7:4431"}}
}

// reportLatency reports records per second and the 50th and 99th percentile acknowledgement latency.
func reportLatency(b *testing.B, lat []time.Duration, elapsed time.Duration) {
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "records/s")
	b.ReportMetric(pct(0.50), "p50-ack-ms")
	b.ReportMetric(pct(0.99), "p99-ack-ms")
}

// BenchmarkDurableAppend compares, in one run, durable appends through the log (many concurrent
// appenders, group commit, hash chain, checkpoints signed in the background) with the baseline of
// writing the same encoded bytes one record at a time with an fsync after each.
//
//	go test -run '^$' -bench DurableAppend -benchtime 3s ./audit
func BenchmarkDurableAppend(b *testing.B) {
	id := newIdent(b, keystore.Ed25519, 0)

	b.Run("baseline=write+fsync-per-record", func(b *testing.B) {
		f, err := os.OpenFile(filepath.Join(benchDir(b), segmentName(1)), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		r := benchRecord()
		w, err := prepare(&r, RedactSecrets, false, nil)
		if err != nil {
			b.Fatal(err)
		}
		lat := make([]time.Duration, 0, b.N)
		var head [32]byte
		b.ResetTimer()
		start := time.Now()
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			w.Seq, w.Prev, w.Time = uint64(i+1), b64.EncodeToString(head[:]), t0.UTC().Format(timeFormat)
			line, d, err := encodeLine(w)
			if err != nil {
				b.Fatal(err)
			}
			head = d
			if _, err := f.Write(line); err != nil {
				b.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		elapsed := time.Since(start)
		b.StopTimer()
		reportLatency(b, lat, elapsed)
	})

	for _, appenders := range []int{64} {
		b.Run("group-commit/appenders="+itoa(uint64(appenders)), func(b *testing.B) {
			o := id.opts(0)
			l := open(b, benchDir(b), o)
			var mu sync.Mutex
			lat := make([]time.Duration, 0, b.N)
			var wg sync.WaitGroup
			work := make(chan struct{}, b.N)
			for i := 0; i < b.N; i++ {
				work <- struct{}{}
			}
			close(work)
			b.ResetTimer()
			start := time.Now()
			for a := 0; a < appenders; a++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					mine := make([]time.Duration, 0, b.N/appenders+1)
					for range work {
						t0 := time.Now()
						if _, err := l.Append(context.Background(), benchRecord()); err != nil {
							b.Error(err)
							return
						}
						mine = append(mine, time.Since(t0))
					}
					mu.Lock()
					lat = append(lat, mine...)
					mu.Unlock()
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			reportLatency(b, lat, elapsed)
			if err := l.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}
