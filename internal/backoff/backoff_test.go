package backoff

import (
	"math"
	"testing"
	"time"
)

func TestStep(t *testing.T) {
	p := Policy{Min: 200 * time.Millisecond, Max: 30 * time.Second}
	for _, tc := range []struct {
		n    int
		want time.Duration
	}{
		{0, 200 * time.Millisecond},
		{1, 400 * time.Millisecond},
		{5, 6400 * time.Millisecond},
		{7, 25600 * time.Millisecond},
		{8, 30 * time.Second},
		{math.MaxInt, 30 * time.Second},
	} {
		if got := p.Step(tc.n); got != tc.want {
			t.Errorf("Step(%d) = %v, want %v", tc.n, got, tc.want)
		}
	}
	huge := Policy{Min: time.Duration(math.MaxInt64/2 + 1), Max: time.Duration(math.MaxInt64)}
	if got := huge.Step(3); got != huge.Max {
		t.Errorf("Step near the int64 limit = %v, want the cap %v (no overflow)", got, huge.Max)
	}
	if got := (Policy{Min: time.Second, Max: 0}).Step(4); got != time.Second {
		t.Errorf("Max below Min: Step = %v, want Min", got)
	}
}

func TestDelayBounds(t *testing.T) {
	p := Policy{Min: 10 * time.Millisecond, Max: time.Second}
	for n := range 12 {
		s := p.Step(n)
		for range 200 {
			if d := p.Delay(n); d < s/2 || d > s {
				t.Fatalf("Delay(%d) = %v, outside [%v, %v]", n, d, s/2, s)
			}
		}
	}
	if Jitter(0) != 0 || Jitter(-1) != 0 {
		t.Fatal("Jitter of a non-positive duration must be 0")
	}
}
