package fileperm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckSecret(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		mode    os.FileMode
		err     bool
		warning bool
	}{
		{0o600, false, false}, {0o400, false, false},
		{0o640, false, true}, {0o660, false, true},
		{0o644, true, false}, {0o604, true, false}, {0o666, true, false}, {0o602, true, false},
	}
	for _, c := range cases {
		p := filepath.Join(dir, "pin")
		if err := os.WriteFile(p, []byte("1234"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, c.mode); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		w, err := CheckSecret(p, fi)
		if got := err != nil; got != c.err || (c.err && (!errors.Is(err, ErrExposed) || !strings.Contains(err.Error(), "run 'chmod 600 "+p+"'"))) {
			t.Errorf("%04o: err %v, want error %v naming the chmod", c.mode, err, c.err)
		}
		if got := w != ""; got != c.warning || (c.warning && !strings.Contains(w, "chmod 600 "+p)) {
			t.Errorf("%04o: warning %q, want %v", c.mode, w, c.warning)
		}
	}
}

func TestWarnings(t *testing.T) {
	dir := t.TempDir()
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(home, "identity.json")
	if err := os.WriteFile(f, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if w := Warnings(home, f, filepath.Join(home, "missing")); len(w) != 0 {
		t.Fatalf("private files: %v", w)
	}
	_ = os.Chmod(home, 0o777)
	_ = os.Chmod(f, 0o666)
	w := Warnings(home, f)
	if len(w) != 2 || !strings.Contains(w[0], "run 'chmod 700 "+home+"'") || !strings.Contains(w[1], "run 'chmod 600 "+f+"'") ||
		!strings.Contains(w[1], "every user can read or write it") {
		t.Fatalf("warnings %q", w)
	}
}
