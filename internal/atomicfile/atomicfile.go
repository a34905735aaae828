// Package atomicfile writes files so that a crash leaves either the old content or the whole new content:
// a temporary file (0600) in the same directory, fsync, then a rename (Replace) or a hard link that never
// replaces (Create), then an fsync of the directory. A symbolic link planted at the final name is replaced
// by Replace, never followed: rename(2) acts on the name, not on what it points to.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// TempMarker is part of every temporary file name ("." + final name + TempMarker + random digits), so
// that RemoveStaleTemps and directory listings can tell them apart.
const TempMarker = ".tmp-"

// Stage names passed to a Replace hook.
const (
	StageRename  = "rename"   // the temporary file is written and synced, not yet renamed
	StageSyncDir = "sync-dir" // the rename is done, the directory is not yet synced
)

// Replace replaces path atomically with data (file mode 0600). hook, if not nil, is called before the
// rename and before the directory fsync with StageRename and StageSyncDir; an error from it stops Replace
// there and is returned as is, leaving the files as a crash at that point would (tests use this).
func Replace(path string, data []byte, hook func(stage string) error) error {
	if hook == nil {
		hook = func(string) error { return nil }
	}
	dir := filepath.Dir(path)
	tmp, err := writeTemp(path, data)
	if err != nil {
		return err
	}
	if err := hook(StageRename); err != nil {
		return err // a simulated crash leaves the temporary file behind, as a real one would
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	if err := hook(StageSyncDir); err != nil {
		return err
	}
	return SyncDir(dir)
}

// Create writes data to path (file mode 0600), which must not exist: the synced temporary file is
// hard-linked to path, which fails with an error wrapping fs.ErrExist rather than replace anything (a
// planted symbolic link included). The directory is synced.
func Create(path string, data []byte) error {
	tmp, err := writeTemp(path, data)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	return SyncDir(filepath.Dir(path))
}

// writeTemp writes data to a new 0600 temporary file next to path, syncs and closes it, and returns its
// name. On error nothing is left behind.
func writeTemp(path string, data []byte) (name string, err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+TempMarker+"*")
	if err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	name = f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(name)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("fsync %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return name, nil
}

// SyncDir fsyncs a directory so that a file created, renamed, linked or removed in it is durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

// RemoveStaleTemps deletes the temporary files a crash left in dir (regular files only).
func RemoveStaleTemps(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, ".") && strings.Contains(n, TempMarker) && e.Type().IsRegular() {
			_ = os.Remove(filepath.Join(dir, n))
		}
	}
}
