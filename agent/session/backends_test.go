package session

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/keystore/software"
	"github.com/custos-agent/custos/pkcs11"
	"github.com/custos-agent/custos/pkcs11/softhsmtest"
	"github.com/custos-agent/custos/tpm"
	"github.com/custos-agent/custos/tpm/swtpmtest"
)

// Identity keys in real keystores: the software keystore (encrypted key files), SoftHSM through PKCS#11,
// and swtpm through the TPM backend. Each agent's identity key (and its pre-committed next key) lives in
// the backend; the handshake, delegations and envelopes run as in production.

type backend func(t *testing.T, alg keystore.Algorithm) (cur, next keystore.Signer)

func fromKeystore(t *testing.T, ks keystore.Keystore, alg keystore.Algorithm) (keystore.Signer, keystore.Signer) {
	t.Helper()
	t.Cleanup(func() { ks.Close() })
	t.Logf("identity keys in the %s keystore (%s, hardware-backed: %v)", ks.Info().Backend, alg, ks.Info().HardwareBacked)
	var out []keystore.Signer
	for _, label := range []string{"identity-0", "identity-1"} {
		k, err := ks.Generate(bg, keystore.GenerateRequest{Algorithm: alg, Label: label})
		if err != nil {
			t.Fatalf("%s: generate %s: %v", ks.Info().Backend, alg, err)
		}
		s, err := ks.Signer(bg, k.URI)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out[0], out[1]
}

func softwareBackend(t *testing.T, alg keystore.Algorithm) (keystore.Signer, keystore.Signer) {
	dir := t.TempDir()
	pass := filepath.Join(dir, "pass")
	if err := os.WriteFile(pass, []byte("correct horse battery staple"), 0o600); err != nil {
		t.Fatal(err)
	}
	ks, err := software.Open(bg, "file:"+filepath.Join(dir, "keys")+"?passphrase-source=file:"+pass+"&work-factor=10", keystore.OpenOptions{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return fromKeystore(t, ks, alg)
}

func softhsmBackend(t *testing.T, alg keystore.Algorithm) (keystore.Signer, keystore.Signer) {
	ks, err := pkcs11.Open(bg, softhsmtest.NewToken(t), keystore.OpenOptions{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return fromKeystore(t, ks, alg)
}

func tpmBackend(t *testing.T, alg keystore.Algorithm) (keystore.Signer, keystore.Signer) {
	sim := swtpmtest.Start(t)
	ks, err := tpm.Open(bg, sim.KeystoreURI(t.TempDir()), keystore.OpenOptions{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return fromKeystore(t, ks, alg)
}

func TestBackends(t *testing.T) {
	cases := []struct {
		name       string
		a, b       backend
		algA, algB keystore.Algorithm
		modeA      delegation.Mode
	}{
		{"software ed25519 vs softhsm ed25519", softwareBackend, softhsmBackend, keystore.Ed25519, keystore.Ed25519, delegation.Delegated},
		{"softhsm p256 vs software ed25519", softhsmBackend, softwareBackend, keystore.P256, keystore.Ed25519, delegation.Delegated},
		{"tpm p256 vs software ed25519", tpmBackend, softwareBackend, keystore.P256, keystore.Ed25519, delegation.Delegated},
		{"tpm p256 strict vs softhsm ed25519", tpmBackend, softhsmBackend, keystore.P256, keystore.Ed25519, delegation.Strict},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			curA, nextA := c.a(t, c.algA)
			curB, nextB := c.b(t, c.algB)
			a := newAgent(t, withSigner(curA, nextA), withMode(c.modeA))
			b := newAgent(t, withSigner(curB, nextB))
			ca, cb := tcpPair(t)
			sa, sb, errA, errB := connect(t, a, b, ca, cb, b.ID())
			if errA != nil || errB != nil {
				t.Fatalf("initiator %v; responder %v", errA, errB)
			}
			if sb.Peer().ID.PublicKey().Algorithm != c.algA || sa.Peer().ID.PublicKey().Algorithm != c.algB {
				t.Fatal("agent IDs do not carry the backends' algorithms")
			}
			if c.modeA == delegation.Strict && !sb.Peer().Delegation.OpKey.Equal(curA.Public()) {
				t.Fatal("strict mode: envelopes are not signed by the hardware key")
			}
			exchange(t, sa, sb, 10)
			if err := sa.Reauthenticate(bg); err != nil {
				t.Fatal(err)
			}
			exchange(t, sa, sb, 3)
		})
	}
}
