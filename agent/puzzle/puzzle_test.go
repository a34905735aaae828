package puzzle

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newIssuer(t testing.TB, now *time.Time) *Issuer {
	t.Helper()
	is, err := NewIssuer(IssuerOptions{Now: func() time.Time { return *now }})
	if err != nil {
		t.Fatal(err)
	}
	return is
}

func TestSolveAndVerify(t *testing.T) {
	ctx := context.Background()
	now := t0
	is := newIssuer(t, &now)
	bind := []byte("handshake: A→B nonces 1234")
	c, err := is.Issue(bind, 12)
	if err != nil {
		t.Fatal(err)
	}
	wire, err := DecodeChallenge(c.Encode())
	if err != nil || wire != c {
		t.Fatalf("challenge round trip: %v", err)
	}
	nonce, err := Solve(ctx, bind, wire)
	if err != nil {
		t.Fatal(err)
	}
	// The hash really has 12 leading zero bits (checked independently of leadingZeros).
	h := sha256.New()
	d := digest(h, bind, c, nonce)
	if d[0] != 0 || d[1]&0xf0 != 0 {
		t.Fatalf("solution hash %x does not start with 12 zero bits", d[:2])
	}
	now = now.Add(10 * time.Second)
	if err := is.Verify(bind, wire, nonce); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	// Used once only.
	if err := is.Verify(bind, wire, nonce); !errors.Is(err, ErrReplayed) {
		t.Fatalf("second use: %v", err)
	}

	c2, _ := is.Issue(bind, 12)
	n2, _ := Solve(ctx, bind, c2)
	cases := []struct {
		name  string
		bind  []byte
		c     func() Challenge
		nonce uint64
		at    time.Time
		want  error
	}{
		{"other handshake", []byte("handshake: C→B"), func() Challenge { return c2 }, n2, now, ErrForged},
		{"difficulty lowered", bind, func() Challenge { x := c2; x.Difficulty = 0; return x }, n2, now, ErrForged},
		{"salt changed", bind, func() Challenge { x := c2; x.Salt[0] ^= 1; return x }, n2, now, ErrForged},
		{"another issuer", bind, func() Challenge { o := newIssuer(t, &now); x, _ := o.Issue(bind, 12); return x }, n2, now, ErrForged},
		{"expired", bind, func() Challenge { return c2 }, n2, now.Add(31 * time.Second), ErrExpired},
		{"future", bind, func() Challenge { return c2 }, n2, now.Add(-time.Minute), ErrExpired},
		{"wrong nonce", bind, func() Challenge { return c2 }, n2 + 1, now, ErrInsufficientWork},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			saved := now
			now = tc.at
			defer func() { now = saved }()
			if err := is.Verify(tc.bind, tc.c(), tc.nonce); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	// A wrong nonce is not "spent": the right one still verifies.
	if err := is.Verify(bind, c2, n2); err != nil {
		t.Fatalf("after failed attempts: %v", err)
	}
	// Difficulty 0 needs no work.
	c0, _ := is.Issue(bind, 0)
	if err := is.Verify(bind, c0, 12345); err != nil {
		t.Fatal(err)
	}
	if _, err := is.Issue(bind, MaxDifficulty+1); err == nil {
		t.Fatal("difficulty above the maximum issued")
	}
}

func TestSolveHonoursContext(t *testing.T) {
	now := t0
	is := newIssuer(t, &now)
	c, _ := is.Issue([]byte("x"), MaxDifficulty)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := Solve(ctx, []byte("x"), c); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Solve of 32 bits: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("Solve ignored its context for %s", el)
	}
}

func TestLeadingZeros(t *testing.T) {
	cases := []struct {
		d    [32]byte
		want int
	}{
		{[32]byte{0x80}, 0},
		{[32]byte{0x01}, 7},
		{[32]byte{0, 0x40}, 9},
		{[32]byte{0, 0, 0, 0x10}, 27},
		{[32]byte{}, 256},
		{[32]byte{0, 0, 0xff, 0, 0}, 16},
	}
	for _, c := range cases {
		if got := leadingZeros(c.d); got != c.want {
			t.Errorf("leadingZeros(%x…) = %d, want %d", c.d[:4], got, c.want)
		}
	}
}

func TestSpentLimit(t *testing.T) {
	now := t0
	is, err := NewIssuer(IssuerOptions{Now: func() time.Time { return now }, MaxSpent: 2})
	if err != nil {
		t.Fatal(err)
	}
	bind := []byte("b")
	for i := 0; i < 2; i++ {
		c, _ := is.Issue(bind, 0)
		if err := is.Verify(bind, c, 0); err != nil {
			t.Fatal(err)
		}
	}
	c, _ := is.Issue(bind, 0)
	if err := is.Verify(bind, c, 0); !errors.Is(err, ErrReplayed) {
		t.Fatalf("full spent set: %v", err)
	}
	// Once the earlier challenges are past their TTL they are forgotten and there is room again.
	now = now.Add(time.Minute)
	c, _ = is.Issue(bind, 0)
	if err := is.Verify(bind, c, 0); err != nil {
		t.Fatalf("after the TTL: %v", err)
	}
}

func TestAdaptiveDifficulty(t *testing.T) {
	a := Adaptive{}
	cases := []struct {
		base uint8
		load float64
		want uint8
	}{
		{0, 0, 0},     // trusted, idle
		{16, 0.2, 16}, // new, idle
		{20, 0.4, 20}, // restricted, idle
		{0, 0.5, 2},   // everyone pays under load
		{0, 1.0, 4},
		{0, 2.0, 6},
		{16, 1.0, 20},
		{20, 8, 24}, // capped at MaxBits
		{0, 1e300, 24},
	}
	for _, c := range cases {
		if got := a.Difficulty(c.base, c.load); got != c.want {
			t.Errorf("Difficulty(base %d, load %g) = %d, want %d", c.base, c.load, got, c.want)
		}
	}
	if got := (Adaptive{MaxBits: 40}).Difficulty(30, 100); got != MaxDifficulty {
		t.Errorf("MaxBits above MaxDifficulty: %d", got)
	}
}

func FuzzDecodeChallenge(f *testing.F) {
	f.Add(Challenge{Difficulty: 16, Issued: 1}.Encode())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeChallenge(b)
		if err != nil {
			return
		}
		if !bytes.Equal(c.Encode(), b) {
			t.Fatalf("accepted %x, encodes as %x", b, c.Encode())
		}
	})
}

// BenchmarkVerify is the responder's cost per solution (one HMAC, one SHA-256), whatever the difficulty.
func BenchmarkVerify(b *testing.B) {
	now := t0
	is := newIssuer(b, &now)
	bind := []byte("bench")
	for _, bits := range []uint8{0, 16} {
		c, _ := is.Issue(bind, bits)
		n, _ := Solve(context.Background(), bind, c)
		b.Run(fmt.Sprintf("bits=%d", bits), func(b *testing.B) {
			for b.Loop() {
				// The spent set would refuse the second use; measure the checks before it.
				want := is.mac(bind, c)
				_ = bytes.Equal(want[:], c.MAC[:])
				if !Check(bind, c, n) {
					b.Fatal("no")
				}
			}
		})
	}
}

// BenchmarkSolve is the initiator's cost, 2^bits hashes on average.
func BenchmarkSolve(b *testing.B) {
	now := t0
	is := newIssuer(b, &now)
	for _, bits := range []uint8{8, 12, 16} {
		b.Run(fmt.Sprintf("bits=%d", bits), func(b *testing.B) {
			i := 0
			for b.Loop() {
				c, _ := is.Issue([]byte(fmt.Sprint(i)), bits)
				i++
				if _, err := Solve(context.Background(), []byte(fmt.Sprint(i-1)), c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestAdmission: the opaque-bytes adapter a handshake uses, with difficulty from the peer's level and load.
func TestAdmission(t *testing.T) {
	ctx := context.Background()
	now := t0
	is := newIssuer(t, &now)
	load := 0.0
	base := map[string]uint8{"trusted": 0, "new": 10}
	a := &Admission{Issuer: is, BaseBits: func(id string) uint8 { return base[id] }, Load: func() float64 { return load }}
	bind := []byte("A|B|n1|n2")
	// A trusted peer on an idle agent is asked nothing.
	if p, err := a.Puzzle(ctx, "trusted", bind); err != nil || p != nil {
		t.Fatalf("trusted, idle: %x, %v", p, err)
	}
	if err := a.Verify(nil, bind, nil); err != nil {
		t.Fatal(err)
	}
	// Under load it pays a little too.
	load = 1
	p, err := a.Puzzle(ctx, "trusted", bind)
	if err != nil || len(p) != ChallengeSize || p[0] != 4 {
		t.Fatalf("trusted under load: %x, %v", p, err)
	}
	// A new peer pays its base.
	load = 0
	p, err = a.Puzzle(ctx, "new", bind)
	if err != nil || p[0] != 10 {
		t.Fatalf("new peer: %x, %v", p, err)
	}
	sol, err := Solver{}.Solve(ctx, p, bind)
	if err != nil || len(sol) != SolutionSize {
		t.Fatal(err)
	}
	if err := a.Verify(p, []byte("A|C|n1|n2"), sol); !errors.Is(err, ErrForged) {
		t.Fatalf("other binding: %v", err)
	}
	if err := a.Verify(p, bind, sol[:7]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short solution: %v", err)
	}
	if err := a.Verify(p, bind, sol); err != nil {
		t.Fatal(err)
	}
	if _, err := (Solver{}).Solve(ctx, p[:10], bind); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short puzzle: %v", err)
	}
}
