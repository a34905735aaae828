package softhsmtest_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/pkcs11"
	"github.com/custos-agent/custos/pkcs11/softhsmtest"
)

func TestNewToken(t *testing.T) {
	var tok softhsmtest.Token
	t.Run("token", func(t *testing.T) {
		tok = softhsmtest.New(t)
		other := softhsmtest.New(t)
		if tok.Label == other.Label || tok.Serial == other.Serial {
			t.Fatalf("two tokens share label or serial: %+v %+v", tok, other)
		}
		for _, f := range []string{tok.PINFile, tok.SOPINFile} {
			fi, err := os.Stat(f)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
			}
			if dir, err := os.Stat(filepath.Dir(f)); err != nil || dir.Mode().Perm() != 0o700 {
				t.Errorf("PIN directory %s: mode %v (err %v), want 0700", filepath.Dir(f), dir.Mode().Perm(), err)
			}
		}
		pin, err := os.ReadFile(tok.PINFile)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(tok.URI, string(pin)) {
			t.Fatalf("the URI carries the PIN: %s", tok.URI)
		}
		want := "pkcs11:token=" + tok.Label + "?module-path=" + tok.ModulePath + "&pin-source=file:" + tok.PINFile
		if tok.URI != want {
			t.Fatalf("URI = %s, want %s", tok.URI, want)
		}
		ks, err := pkcs11.Open(context.Background(), tok.URI, keystore.OpenOptions{})
		if err != nil {
			t.Fatalf("Open(%s): %v", tok.URI, err)
		}
		defer ks.Close()
		if keys, err := ks.List(context.Background()); err != nil || len(keys) != 0 {
			t.Fatalf("a fresh token holds keys %v (err %v)", keys, err)
		}
		env := softhsmtest.Env(t)
		if len(env) != 1 || env[0] != "SOFTHSM2_CONF="+os.Getenv("SOFTHSM2_CONF") {
			t.Fatalf("Env = %v, SOFTHSM2_CONF = %s", env, os.Getenv("SOFTHSM2_CONF"))
		}
	})
	// When the test that made it ends, the token and its PIN files are gone.
	if _, err := os.Stat(tok.PINFile); !os.IsNotExist(err) {
		t.Errorf("PIN file %s still exists after the test (err %v)", tok.PINFile, err)
	}
	cmd := exec.Command("softhsm2-util", "--show-slots")
	cmd.Env = append(os.Environ(), softhsmtest.Env(t)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --show-slots: %v\n%s", err, out)
	}
	if strings.Contains(string(out), tok.Label) {
		t.Errorf("token %s still exists after its test:\n%s", tok.Label, out)
	}
}
