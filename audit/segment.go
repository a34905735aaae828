package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// A segment is one file "<first seq, 20 digits>.jsonl" of the log. Segments are contiguous: the next
// one starts at the seq after the last record of the one before.
const (
	segmentSuffix = ".jsonl"
	segmentDigits = 20
	lockName      = "LOCK"
)

func segmentName(first uint64) string {
	return fmt.Sprintf("%0*d%s", segmentDigits, first, segmentSuffix)
}

func parseSegmentName(name string) (uint64, bool) {
	base, ok := strings.CutSuffix(name, segmentSuffix)
	if !ok || len(base) != segmentDigits {
		return 0, false
	}
	for _, c := range base {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(base, 10, 64)
	return n, err == nil && n > 0
}

type segFile struct {
	name  string
	first uint64 // from the name
}

// listSegments returns the segments of dir in order. A missing directory gives ErrNoLog.
func listSegments(dir string) ([]segFile, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist", ErrNoLog, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("read audit directory: %w", err)
	}
	var segs []segFile
	for _, e := range ents {
		if first, ok := parseSegmentName(e.Name()); ok && e.Type().IsRegular() {
			segs = append(segs, segFile{name: e.Name(), first: first})
		}
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].first < segs[j].first })
	return segs, nil
}

// lineReader reads the lines of a segment, keeping track of line numbers and offsets.
type lineReader struct {
	r    *bufio.Reader
	line int   // number of the line last returned (from 1)
	off  int64 // offset of the start of the line last returned
	next int64 // offset after it
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(r, MaxRecordSize+1)}
}

// errLongLine: a line is longer than MaxRecordSize.
var errLongLine = fmt.Errorf("%w: line longer than %d bytes", ErrMalformed, MaxRecordSize)

// read returns the next line without its newline. complete is false for a last line with no newline
// (torn). At the end it returns io.EOF. The returned slice is valid until the next call.
func (lr *lineReader) read() (line []byte, complete bool, err error) {
	b, err := lr.r.ReadSlice('\n')
	lr.off = lr.next
	lr.next += int64(len(b))
	if len(b) > 0 {
		lr.line++
	}
	switch {
	case err == nil:
		return b[:len(b)-1], true, nil
	case errors.Is(err, bufio.ErrBufferFull):
		return nil, false, errLongLine
	case errors.Is(err, io.EOF):
		if len(b) == 0 {
			return nil, false, io.EOF
		}
		return b, false, nil
	default:
		return nil, false, err
	}
}

// readLastLine returns the last line of a complete segment (one ending in a newline) without its
// newline, and the line's offset.
func readLastLine(f *os.File, size int64) ([]byte, int64, error) {
	n := min(size, int64(MaxRecordSize)+1)
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, size-n); err != nil {
		return nil, 0, err
	}
	if len(buf) == 0 || buf[len(buf)-1] != '\n' {
		return nil, 0, fmt.Errorf("%w: the segment does not end with a complete record", ErrTorn)
	}
	body := buf[:len(buf)-1]
	i := bytes.LastIndexByte(body, '\n')
	if i < 0 && n < size {
		return nil, 0, errLongLine
	}
	return body[i+1:], size - n + int64(i+1), nil
}

// lockFile takes the writer's exclusive lock on dir/LOCK. The lock dies with the process.
func lockFile(dir string) (*os.File, error) {
	// O_NOFOLLOW: whoever can plant a link here must not make this process create or open a file elsewhere.
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("open audit lock: %s is a symbolic link; a lock file never is: remove it and check who can write %s", filepath.Join(dir, lockName), dir)
	}
	if err != nil {
		return nil, fmt.Errorf("open audit lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is held by another process (is the agent running?)", ErrLocked, filepath.Join(dir, lockName))
		}
		return nil, fmt.Errorf("lock %s: %w", filepath.Join(dir, lockName), err)
	}
	return f, nil
}

// writerActive reports whether a writer holds dir's lock right now.
func writerActive(dir string) bool {
	f, err := os.Open(filepath.Join(dir, lockName))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		return errors.Is(err, syscall.EWOULDBLOCK)
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

// ErrLocked: another process is writing the log.
var ErrLocked = errors.New("audit log is locked by another writer")
