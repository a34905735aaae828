package atrest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/keystore/software"
)

// softKeystore opens a software keystore with passphrase pass; it returns the keystore and its URI.
func softKeystore(t *testing.T, pass string) (keystore.DataKeyWrapper, string) {
	t.Helper()
	root := t.TempDir()
	pf := filepath.Join(root, "pass")
	if err := os.WriteFile(pf, []byte(pass), 0o600); err != nil {
		t.Fatal(err)
	}
	uri := software.KeystoreURI(filepath.Join(root, "keys"), "file:"+pf, software.MinWorkFactor)
	ks, err := software.Open(context.Background(), uri, keystore.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ks.Close() })
	return ks.(keystore.DataKeyWrapper), uri
}

func TestCreateThenReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "home", File)
	w, uri := softKeystore(t, "passphrase one")
	box, err := Open(ctx, path, w, uri)
	if err != nil {
		t.Fatal(err)
	}
	sealed := box.Seal([]byte("p"), []byte("peer address 198.51.100.4"))
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state.key: %v, mode %v; want 0600", err, fi.Mode())
	}
	data, _ := os.ReadFile(path)
	if !bytes.HasPrefix(data, []byte(magicLine+"\nkeystore: ")) || bytes.Contains(data, []byte("passphrase-source")) {
		t.Fatalf("state.key header is wrong or names the passphrase source:\n%s", data[:60])
	}
	again, err := Open(ctx, path, w, uri)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := again.Open([]byte("p"), sealed); err != nil || string(pt) != "peer address 198.51.100.4" {
		t.Fatalf("a reopened data key does not open what the first sealed: %q, %v", pt, err)
	}
}

func TestRefusals(t *testing.T) {
	ctx := context.Background()
	w, uri := softKeystore(t, "passphrase one")
	other, otherURI := softKeystore(t, "another passphrase")
	good := filepath.Join(t.TempDir(), File)
	if _, err := Open(ctx, good, w, uri); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(good)
	cases := map[string]struct {
		data []byte
		mode os.FileMode
		w    keystore.DataKeyWrapper
		uri  string
		is   error
		says string
	}{
		"another keystore": {data, 0o600, other, otherURI, ErrSealedElsewhere, "restore the home from a backup"},
		"group readable":   {data, 0o640, w, uri, nil, "chmod 600"},
		"not a key":        {[]byte("hello\n\nworld"), 0o600, w, uri, nil, "not a Custos state data key"},
		"truncated":        {data[:len(data)-10], 0o600, w, uri, ErrSealedElsewhere, ""},
		"tampered":         {append(bytes.Clone(data[:len(data)-1]), data[len(data)-1]^1), 0o600, w, uri, ErrSealedElsewhere, ""},
		"no wrapper":       {data, 0o600, nil, uri, ErrNoWrapper, ""},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), File)
			if err := os.WriteFile(path, c.data, c.mode); err != nil {
				t.Fatal(err)
			}
			_ = os.Chmod(path, c.mode)
			box, err := Open(ctx, path, c.w, c.uri)
			if err == nil {
				t.Fatalf("Open succeeded (box %v)", box != nil)
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Fatalf("error %v, want %v", err, c.is)
			}
			if !strings.Contains(err.Error(), c.says) {
				t.Fatalf("error %q does not say %q", err, c.says)
			}
		})
	}
}
