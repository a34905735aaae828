package software

import (
	"fmt"
	"os"
	"path/filepath"
)

// createFile writes data to path, which must not exist, so that a crash leaves either no file or the whole
// file: temporary file (0600) in the same directory, fsync, hard link to the final name (which fails with
// fs.ErrExist rather than replace a key), remove the temporary name, fsync the directory.
func createFile(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		_ = os.Remove(tmp)
		if err == nil {
			err = syncDir(dir)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		_ = f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Link(tmp, path)
}

// syncDir fsyncs a directory so that a rename, link or removal in it is durable.
func syncDir(dir string) error {
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
