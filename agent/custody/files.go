package custody

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/custos-agent/custos/internal/atomicfile"
)

// lockFileName is the advisory lock that serialises changes to one home directory.
const lockFileName = "custody.lock"

// writeFile replaces path atomically (atomicfile.Replace). fail is called before the rename and before
// the directory fsync, under the step names "<step>:rename" and "<step>:sync-dir", so tests can stop it
// there.
func writeFile(path string, data []byte, step string, fail func(string) error) error {
	return atomicfile.Replace(path, data, func(stage string) error { return fail(step + ":" + stage) })
}

// readLimited reads a whole file of at most limit bytes.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return b, nil
}

// lock takes the home directory's exclusive lock (flock), waiting until ctx is done.
func lock(ctx context.Context, home string) (unlock func(), err error) {
	// O_NOFOLLOW: whoever can plant a link here must not make this process create or open a file elsewhere.
	f, err := os.OpenFile(filepath.Join(home, lockFileName), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("lock %s: %s is a symbolic link; a lock file never is: remove it and check who can write %s", home, lockFileName, home)
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", home, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				_ = f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", home, err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("another process is changing the identity in %s (lock %s held): %w", home, lockFileName, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
