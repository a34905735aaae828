package puzzle

import (
	"context"
	"encoding/binary"
	"fmt"
)

// SolutionSize is the length of an encoded solution: the nonce, 8 bytes big-endian.
const SolutionSize = 8

// EncodeSolution is the wire form of a nonce.
func EncodeSolution(nonce uint64) []byte { return binary.BigEndian.AppendUint64(nil, nonce) }

// DecodeSolution parses EncodeSolution's form (exactly 8 bytes).
func DecodeSolution(b []byte) (uint64, error) {
	if len(b) != SolutionSize {
		return 0, fmt.Errorf("%w: solution of %d bytes, want %d", ErrMalformed, len(b), SolutionSize)
	}
	return binary.BigEndian.Uint64(b), nil
}

// Admission adapts an Issuer to a handshake that carries puzzles and solutions as opaque bytes (the
// responder's Puzzle hook and its validator's check). The handshake's bind must hold both agents' IDs and
// both nonces.
type Admission struct {
	Issuer   *Issuer
	Adaptive Adaptive
	// BaseBits returns the base difficulty for an initiator (in the agent:
	// rep.Effects(rep.Level(id)).PuzzleBits); nil means 0.
	BaseBits func(initiatorID string) uint8
	// Load returns the agent's current load (e.g. handshakes in progress / capacity); nil means 0.
	Load func() float64
}

// Puzzle issues the encoded challenge for an initiator, or nil (no puzzle) when the difficulty is 0.
func (a *Admission) Puzzle(ctx context.Context, initiatorID string, bind []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var base uint8
	if a.BaseBits != nil {
		base = a.BaseBits(initiatorID)
	}
	load := 0.0
	if a.Load != nil {
		load = a.Load()
	}
	bits := a.Adaptive.Difficulty(base, load)
	if bits == 0 {
		return nil, nil
	}
	c, err := a.Issuer.Issue(bind, bits)
	if err != nil {
		return nil, err
	}
	return c.Encode(), nil
}

// Verify checks an encoded solution against the encoded challenge this agent issued for bind. An empty
// puzzle (none was asked) verifies.
func (a *Admission) Verify(puzzle, bind, solution []byte) error {
	if len(puzzle) == 0 {
		return nil
	}
	c, err := DecodeChallenge(puzzle)
	if err != nil {
		return err
	}
	n, err := DecodeSolution(solution)
	if err != nil {
		return err
	}
	return a.Issuer.Verify(bind, c, n)
}

// Solver answers encoded challenges (the initiator's side).
type Solver struct{}

// Solve decodes the challenge, searches a nonce and returns it encoded.
func (Solver) Solve(ctx context.Context, puzzle, bind []byte) ([]byte, error) {
	c, err := DecodeChallenge(puzzle)
	if err != nil {
		return nil, err
	}
	n, err := Solve(ctx, bind, c)
	if err != nil {
		return nil, err
	}
	return EncodeSolution(n), nil
}
