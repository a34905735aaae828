package custody

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLockRefusesSymlink (issue 20.9): a custody.lock that is a symbolic link is refused with an error
// that says so, and the file it points to is neither created nor touched (O_NOFOLLOW): whoever can write
// the home directory must not make the agent create files elsewhere.
func TestLockRefusesSymlink(t *testing.T) {
	home := t.TempDir()
	target := filepath.Join(t.TempDir(), "victim")
	if err := os.Symlink(target, filepath.Join(home, lockFileName)); err != nil {
		t.Fatal(err)
	}
	unlock, err := lock(context.Background(), home)
	if err == nil {
		unlock()
		t.Fatal("lock followed a symbolic link")
	}
	if !strings.Contains(err.Error(), "is a symbolic link") || !strings.Contains(err.Error(), lockFileName) {
		t.Fatalf("got %v, want an error saying %s is a symbolic link", err, lockFileName)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Fatalf("the link's target was created: %v", err)
	}
}
