package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Entry is a record read back from the log, with where it was and its line as stored.
type Entry struct {
	Record
	Segment string // segment file name
	Line    int    // line in the segment, from 1
	Raw     []byte // the stored JSON line, without its newline
}

// Filter selects records. Zero fields select everything.
type Filter struct {
	Since time.Time // records at or after
	Until time.Time // records before
	// Types are event types; "auth.*" (or "auth.") selects every type under "auth.".
	Types []string
	Actor string // exact actor
	// Keys, when set, opens sealed fields (Record.Unseal) before the record is matched and passed on;
	// nil leaves them sealed (ADR 0099).
	Keys KeyLookup
}

// Match reports whether r passes the filter.
func (f Filter) Match(r *Record) bool {
	if !f.Since.IsZero() && r.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !r.Time.Before(f.Until) {
		return false
	}
	if f.Actor != "" && r.Actor != f.Actor {
		return false
	}
	if len(f.Types) == 0 {
		return true
	}
	for _, t := range f.Types {
		if p, ok := strings.CutSuffix(t, "*"); ok {
			if strings.HasPrefix(string(r.Type), p) {
				return true
			}
		} else if strings.HasSuffix(t, ".") && strings.HasPrefix(string(r.Type), t) {
			return true
		} else if string(r.Type) == t {
			return true
		}
	}
	return false
}

// Query calls fn, in log order, for every record that matches f. It reads; it does not verify (see
// Verify): a record that cannot be decoded stops it with an error naming the place. An incomplete last
// line (being written, or torn) is skipped.
func Query(ctx context.Context, dir string, f Filter, fn func(Entry) error) error {
	segs, err := listSegments(dir)
	if err != nil {
		return err
	}
	for _, sf := range segs {
		if _, err := readSegment(ctx, dir, sf.name, 0, f, fn); err != nil {
			return err
		}
	}
	return nil
}

// readSegment reads complete records of one segment from offset off, and returns the offset after the
// last complete line read.
func readSegment(ctx context.Context, dir, name string, off int64, f Filter, fn func(Entry) error) (int64, error) {
	file, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return off, err
	}
	defer file.Close()
	if _, err := file.Seek(off, io.SeekStart); err != nil {
		return off, err
	}
	lr := newLineReader(file)
	lr.next = off
	for {
		if err := ctx.Err(); err != nil {
			return off, err
		}
		line, complete, err := lr.read()
		if errors.Is(err, io.EOF) || (err == nil && !complete) {
			return off, nil
		}
		if err != nil {
			return off, fmt.Errorf("%s line %d: %w", name, lr.line, err)
		}
		off = lr.next
		w, _, err := decodeLine(line)
		if err != nil {
			return off, fmt.Errorf("%s line %d: %w (run agentctl audit verify)", name, lr.line, err)
		}
		r, err := w.record()
		if err != nil {
			return off, fmt.Errorf("%s line %d: %w", name, lr.line, err)
		}
		if f.Keys != nil {
			if _, err := r.Unseal(f.Keys); err != nil {
				return off, fmt.Errorf("%s line %d: %w", name, lr.line, err)
			}
		}
		if !f.Match(&r) {
			continue
		}
		if err := fn(Entry{Record: r, Segment: name, Line: lr.line, Raw: bytes.Clone(line)}); err != nil {
			return off, err
		}
	}
}

// TailOptions configure Tail.
type TailOptions struct {
	// N is how many of the last matching records to show first (0: none, only new ones when following).
	N int
	// Follow keeps reading new records until ctx ends.
	Follow bool
	// Poll is how often a follower looks for new records (default 200ms).
	Poll time.Duration
	// Filter selects records.
	Filter Filter
}

// Tail calls fn for the last N matching records and, when following, for every new matching record
// until ctx ends (it then returns nil).
func Tail(ctx context.Context, dir string, o TailOptions, fn func(Entry) error) error {
	if o.Poll <= 0 {
		o.Poll = 200 * time.Millisecond
	}
	segs, err := listSegments(dir)
	if err != nil {
		return err
	}
	if len(segs) == 0 {
		return fmt.Errorf("%w: %s holds no segments", ErrNoLog, dir)
	}
	// The last N matching records: keep a ring while reading every segment from the newest back until
	// enough are found.
	var last []Entry
	start := len(segs) - 1
	offs := map[string]int64{}
	for ; start >= 0 && o.N > 0; start-- {
		var got []Entry
		end, err := readSegment(ctx, dir, segs[start].name, 0, o.Filter, func(e Entry) error {
			got = append(got, e)
			return nil
		})
		if err != nil {
			return err
		}
		offs[segs[start].name] = end
		last = append(got, last...)
		if len(last) >= o.N {
			break
		}
	}
	if len(last) > o.N {
		last = last[len(last)-o.N:]
	}
	for _, e := range last {
		if err := fn(e); err != nil {
			return err
		}
	}
	if !o.Follow {
		return nil
	}
	cur := segs[len(segs)-1].name
	off, ok := offs[cur]
	if !ok {
		// Nothing was read from the newest segment yet: start at its end.
		fi, err := os.Stat(filepath.Join(dir, cur))
		if err != nil {
			return err
		}
		off = completeEnd(filepath.Join(dir, cur), fi.Size())
	}
	t := time.NewTicker(o.Poll)
	defer t.Stop()
	for {
		off, err = readSegment(ctx, dir, cur, off, o.Filter, fn)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if next := nextSegment(dir, cur); next != "" {
			// The writer moved on: read what is left of this segment, then switch.
			if _, err := readSegment(ctx, dir, cur, off, o.Filter, fn); err != nil && !errors.Is(err, os.ErrNotExist) {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			cur, off = next, 0
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// completeEnd is the offset after the last complete line of a file of size bytes.
func completeEnd(path string, size int64) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	n := min(size, int64(MaxRecordSize)+1)
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, size-n); err != nil {
		return 0
	}
	i := bytes.LastIndexByte(buf, '\n')
	if i < 0 {
		return size - n
	}
	return size - n + int64(i) + 1
}

func nextSegment(dir, cur string) string {
	segs, err := listSegments(dir)
	if err != nil {
		return ""
	}
	c, _ := parseSegmentName(cur)
	for _, s := range segs {
		if s.first > c {
			return s.name
		}
	}
	return ""
}
