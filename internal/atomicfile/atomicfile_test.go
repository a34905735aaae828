package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReplace(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Replace(p, []byte("new"), nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "new" {
		t.Fatalf("content %q, %v", b, err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
}

func TestReplacePlantedSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "elsewhere")
	if err := os.WriteFile(target, []byte("victim"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "f")
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
	if err := Replace(p, []byte("new"), nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "victim" {
		t.Fatalf("the link target was written: %q", b)
	}
	if fi, _ := os.Lstat(p); fi.Mode()&fs.ModeSymlink != 0 {
		t.Fatal("the planted link is still there")
	}
}

func TestReplaceHookLeavesTemp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	stop := errors.New("stop")
	err := Replace(p, []byte("x"), func(s string) error {
		if s == StageRename {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("final file exists: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || !strings.Contains(entries[0].Name(), TempMarker) {
		t.Fatalf("entries %v, want one temporary file", entries)
	}
	RemoveStaleTemps(dir)
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("stale temporary files left: %v", entries)
	}
}

func TestCreateNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	if err := Create(p, []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := Create(p, []byte("two")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Create: %v, want fs.ErrExist", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "one" {
		t.Fatalf("content %q", b)
	}
	link := filepath.Join(dir, "planted")
	if err := os.Symlink(filepath.Join(dir, "nowhere"), link); err != nil {
		t.Fatal(err)
	}
	if err := Create(link, []byte("x")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Create over a planted link: %v, want fs.ErrExist", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "nowhere")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("Create followed the planted link")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Fatalf("entries %v, want key and planted only", entries)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}
}
