package host_test

import (
	"os"
	"strings"
	"testing"

	"github.com/custos-agent/custos/transports/host"
)

func TestLoadTransportKey(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/keys/libp2p.key"
	k1, err := host.LoadTransportKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	if di, err := os.Stat(dir + "/keys"); err != nil || di.Mode().Perm() != 0o700 {
		t.Fatalf("key directory mode %v, %v; want 0700", di.Mode().Perm(), err)
	}
	k2, err := host.LoadTransportKey(path)
	if err != nil || !k1.Equal(k2) {
		t.Fatalf("second load: %v (same key: %v)", err, k1.Equal(k2))
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := host.LoadTransportKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable key: %v, want a refusal saying chmod 600", err)
	}
	bad := dir + "/other.key"
	if err := os.WriteFile(bad, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := host.LoadTransportKey(bad); err == nil || !strings.Contains(err.Error(), "not a Custos transport key") {
		t.Errorf("foreign file: %v", err)
	}
	if data, _ := os.ReadFile(bad); string(data) != "not a key" {
		t.Errorf("the foreign file was changed: %q", data)
	}
}
