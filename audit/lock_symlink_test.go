package audit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLockFileRefusesSymlink (issue 20.9): an audit LOCK that is a symbolic link is refused with an error
// that says so, and the file it points to is not created (O_NOFOLLOW).
func TestLockFileRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "victim")
	if err := os.Symlink(target, filepath.Join(dir, lockName)); err != nil {
		t.Fatal(err)
	}
	f, err := lockFile(dir)
	if err == nil {
		f.Close()
		t.Fatal("lockFile followed a symbolic link")
	}
	if !strings.Contains(err.Error(), "is a symbolic link") {
		t.Fatalf("got %v, want an error saying the lock is a symbolic link", err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Fatalf("the link's target was created: %v", err)
	}
}
