package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/custos-agent/custos/internal/atomicfile"
)

// Compact rewrites the state database at path into a new file holding only its live data, so that what
// an erasure removed no longer lies in free pages (ADR 0099), and replaces path with it atomically. It
// runs offline only: an agent holding the file makes it fail, naming the lock. The new file is written
// 0600 next to path, fsynced and renamed over it while the old one is still locked; with keepBackup the
// old file is kept as path+".bak" (which still holds the erased values). It returns the sizes before and
// after.
func Compact(path string, keepBackup bool) (before, after int64, err error) {
	src, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: LockTimeout})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return 0, 0, fmt.Errorf("%s is locked by another process: stop the agent first (compaction runs offline)", path)
		}
		return 0, 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer src.Close()
	if fi, err := os.Stat(path); err == nil {
		before = fi.Size()
	}
	tmp := path + ".compact"
	_ = os.Remove(tmp) // a compaction cut short left it
	dst, err := bbolt.Open(tmp, 0o600, &bbolt.Options{Timeout: LockTimeout})
	if err != nil {
		return before, 0, fmt.Errorf("create %s: %w", tmp, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.Remove(tmp)
		}
	}()
	if err := bbolt.Compact(dst, src, 1<<20); err != nil {
		dst.Close()
		return before, 0, fmt.Errorf("compact %s: %w", path, err)
	}
	if err := dst.Sync(); err != nil {
		dst.Close()
		return before, 0, fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := dst.Close(); err != nil {
		return before, 0, fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return before, 0, err
	}
	if keepBackup {
		bak := path + ".bak"
		_ = os.Remove(bak)
		if err := os.Link(path, bak); err != nil {
			return before, 0, fmt.Errorf("keep %s: %w", bak, err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return before, 0, fmt.Errorf("replace %s: %w", path, err)
	}
	ok = true
	if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
		return before, 0, err
	}
	if fi, err := os.Stat(path); err == nil {
		after = fi.Size()
	}
	return before, after, nil
}
