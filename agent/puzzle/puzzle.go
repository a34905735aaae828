// Package puzzle is the hashcash-style proof of work that prices admission at the handshake (DESIGN 6:
// "proof-of-work puzzles price admission for new peers and under load"). The responder issues a stateless
// challenge (authenticated with its own HMAC key, so it keeps nothing per connection before the peer has
// paid); the initiator searches a nonce such that
//
//	SHA-256("custos/v1/puzzle\x00" || len(context) || context || challenge || nonce)
//
// starts with Difficulty zero bits; the responder verifies with one HMAC and one SHA-256 (O(1)), comparing
// in constant time. The context binds the solution to one handshake (put both sides' nonces and IDs in
// it). Difficulty adapts: a higher base for New and Restricted peers (reputation.Effects.PuzzleBits) and
// extra bits for everyone under load (Adaptive).
package puzzle

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"math"
	"math/bits"
	"sync"
	"time"

	"github.com/custos-agent/custos/internal/wire"
)

// MaxDifficulty is the largest difficulty a challenge may carry (2^32 hashes on average).
const MaxDifficulty = 32

// ChallengeSize is the length of an encoded challenge: difficulty (1), issued (8), salt (16), MAC (32).
const ChallengeSize = 1 + 8 + 16 + 32

var prefix = []byte("custos/v1/puzzle\x00")
var macPrefix = []byte("custos/v1/puzzle-mac\x00")

// Challenge is what the responder sends.
type Challenge struct {
	Difficulty uint8
	Issued     int64 // Unix seconds
	Salt       [16]byte
	MAC        [32]byte // HMAC-SHA256 under the issuer's key over the context and the fields above
}

// Encode returns the ChallengeSize-byte wire form.
func (c Challenge) Encode() []byte {
	b := make([]byte, 0, ChallengeSize)
	b = append(b, c.Difficulty)
	b = binary.BigEndian.AppendUint64(b, uint64(c.Issued))
	b = append(b, c.Salt[:]...)
	return append(b, c.MAC[:]...)
}

// ErrMalformed marks a challenge that does not decode.
var ErrMalformed = errors.New("malformed puzzle challenge")

// DecodeChallenge strictly decodes the wire form: exactly ChallengeSize bytes, difficulty at most
// MaxDifficulty.
func DecodeChallenge(b []byte) (Challenge, error) {
	if len(b) != ChallengeSize {
		return Challenge{}, fmt.Errorf("%w: %d bytes, want %d", ErrMalformed, len(b), ChallengeSize)
	}
	var c Challenge
	c.Difficulty = b[0]
	if c.Difficulty > MaxDifficulty {
		return Challenge{}, fmt.Errorf("%w: difficulty %d exceeds %d", ErrMalformed, c.Difficulty, MaxDifficulty)
	}
	c.Issued = int64(binary.BigEndian.Uint64(b[1:9]))
	copy(c.Salt[:], b[9:25])
	copy(c.MAC[:], b[25:])
	return c, nil
}

// Verification errors.
var (
	// ErrForged: the challenge was not issued by this responder for this context (or was altered).
	ErrForged = errors.New("puzzle challenge not issued for this context")
	// ErrExpired: the challenge is older than the issuer's TTL (or from the future).
	ErrExpired = errors.New("puzzle challenge expired")
	// ErrInsufficientWork: the hash does not start with enough zero bits.
	ErrInsufficientWork = errors.New("puzzle solution does not meet the difficulty")
	// ErrReplayed: this challenge was already solved once.
	ErrReplayed = errors.New("puzzle challenge already used")
)

// Issuer issues and verifies challenges. It is safe for concurrent use.
type Issuer struct {
	key [32]byte
	now func() time.Time
	ttl time.Duration

	mu       sync.Mutex
	spent    map[[16]byte]int64 // salt → issued, for challenges already solved (pruned past the TTL)
	maxSpent int
}

// IssuerOptions tune an Issuer.
type IssuerOptions struct {
	// TTL is how long a challenge may be solved after it is issued; default 30 s.
	TTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// MaxSpent bounds the remembered solved challenges; default 100000. When full, Verify refuses (rather
	// than forget a live entry and allow a replay).
	MaxSpent int
}

// NewIssuer makes an issuer with a fresh random key (challenges do not survive a restart; they live
// seconds).
func NewIssuer(opts IssuerOptions) (*Issuer, error) {
	is := &Issuer{now: opts.Now, ttl: opts.TTL, maxSpent: opts.MaxSpent, spent: map[[16]byte]int64{}}
	if is.now == nil {
		is.now = time.Now
	}
	if is.ttl == 0 {
		is.ttl = 30 * time.Second
	}
	if is.maxSpent == 0 {
		is.maxSpent = 100000
	}
	if _, err := rand.Read(is.key[:]); err != nil {
		return nil, fmt.Errorf("puzzle key: %w", err)
	}
	return is, nil
}

func (is *Issuer) mac(ctxStr []byte, c Challenge) [32]byte {
	m := hmac.New(sha256.New, is.key[:])
	m.Write(macPrefix)
	wire.HashBytes(m, ctxStr)
	m.Write([]byte{c.Difficulty})
	var t [8]byte
	binary.BigEndian.PutUint64(t[:], uint64(c.Issued))
	m.Write(t[:])
	m.Write(c.Salt[:])
	var out [32]byte
	m.Sum(out[:0])
	return out
}

// Issue makes a challenge of the given difficulty bound to bind (the handshake's nonces and both agent IDs).
func (is *Issuer) Issue(bind []byte, difficulty uint8) (Challenge, error) {
	if difficulty > MaxDifficulty {
		return Challenge{}, fmt.Errorf("difficulty %d exceeds %d", difficulty, MaxDifficulty)
	}
	c := Challenge{Difficulty: difficulty, Issued: is.now().Unix()}
	if _, err := rand.Read(c.Salt[:]); err != nil {
		return Challenge{}, fmt.Errorf("puzzle salt: %w", err)
	}
	c.MAC = is.mac(bind, c)
	return c, nil
}

// Verify checks a solution: the challenge is this issuer's for this context (constant-time MAC
// comparison), within the TTL, not solved before, and the hash has Difficulty leading zero bits (counted
// without data-dependent branches). It costs one HMAC and one SHA-256.
func (is *Issuer) Verify(bind []byte, c Challenge, nonce uint64) error {
	want := is.mac(bind, c)
	if !hmac.Equal(want[:], c.MAC[:]) {
		return ErrForged
	}
	now := is.now().Unix()
	if now < c.Issued-1 || now > c.Issued+int64(math.Ceil(is.ttl.Seconds())) {
		return fmt.Errorf("%w: issued at %d, now %d, ttl %s", ErrExpired, c.Issued, now, is.ttl)
	}
	if !Check(bind, c, nonce) {
		return fmt.Errorf("%w: %d bits required", ErrInsufficientWork, c.Difficulty)
	}
	is.mu.Lock()
	defer is.mu.Unlock()
	if _, used := is.spent[c.Salt]; used {
		return ErrReplayed
	}
	if len(is.spent) >= is.maxSpent {
		horizon := now - int64(math.Ceil(is.ttl.Seconds())) - 1
		for s, t := range is.spent {
			if t < horizon {
				delete(is.spent, s)
			}
		}
		if len(is.spent) >= is.maxSpent {
			return fmt.Errorf("%w: too many challenges solved within the TTL; try again shortly", ErrReplayed)
		}
	}
	is.spent[c.Salt] = c.Issued
	return nil
}

// Check reports whether nonce solves c for bind (the hash test only; no MAC, no expiry).
func Check(bind []byte, c Challenge, nonce uint64) bool {
	h := sha256.New()
	d := digest(h, bind, c, nonce)
	return subtle.ConstantTimeLessOrEq(int(c.Difficulty), leadingZeros(d)) == 1
}

func digest(h hash.Hash, bind []byte, c Challenge, nonce uint64) [32]byte {
	h.Reset()
	h.Write(prefix)
	wire.HashBytes(h, bind)
	h.Write(c.Encode())
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], nonce)
	h.Write(n[:])
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// leadingZeros counts the leading zero bits of d, looking at every byte whatever their values.
func leadingZeros(d [32]byte) int {
	n, still := 0, 1
	for _, b := range d {
		n += still * bits.LeadingZeros8(b)
		still &= subtle.ConstantTimeByteEq(b, 0)
	}
	return n
}

// Solve searches a nonce for c, checking ctx every 4096 attempts. The expected work is 2^Difficulty hashes.
func Solve(ctx context.Context, bind []byte, c Challenge) (uint64, error) {
	if c.Difficulty > MaxDifficulty {
		return 0, fmt.Errorf("difficulty %d exceeds %d", c.Difficulty, MaxDifficulty)
	}
	h := sha256.New()
	for nonce := uint64(0); ; nonce++ {
		if nonce&4095 == 0 {
			if err := ctx.Err(); err != nil {
				return 0, fmt.Errorf("puzzle of %d bits unsolved after %d attempts: %w", c.Difficulty, nonce, err)
			}
		}
		d := digest(h, bind, c, nonce)
		if leadingZeros(d) >= int(c.Difficulty) {
			return nonce, nil
		}
	}
}

// Adaptive computes the difficulty to ask: the peer's base (reputation.Effects.PuzzleBits: 0 for Trusted
// and Super, 16 for New, 20 for Restricted by default) plus extra bits when the agent is under load.
type Adaptive struct {
	// LoadStart is the load (the caller's measure, e.g. handshakes in progress / capacity) from which extra
	// bits apply; default 0.5.
	LoadStart float64
	// BitsPerDoubling is the extra bits at LoadStart and for each doubling of the load beyond it; default 2.
	BitsPerDoubling uint8
	// MaxBits caps the result; default 24 (about 16 million hashes, a few seconds of one core).
	MaxBits uint8
}

// Difficulty returns the bits to ask of a peer whose base is base, at the given load.
func (a Adaptive) Difficulty(base uint8, load float64) uint8 {
	start, per, maxBits := a.LoadStart, a.BitsPerDoubling, a.MaxBits
	if start <= 0 {
		start = 0.5
	}
	if per == 0 {
		per = 2
	}
	if maxBits == 0 {
		maxBits = 24
	}
	maxBits = min(maxBits, MaxDifficulty)
	extra := 0.0
	if load >= start && !math.IsNaN(load) {
		extra = float64(per) * (1 + math.Floor(math.Log2(math.Min(load/start, 1<<20))))
	}
	d := float64(base) + extra
	if d > float64(maxBits) {
		return maxBits
	}
	return uint8(d)
}
