package tpm

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/tpm/swtpmtest"
)

// busSniffer is a unix-socket proxy in front of swtpm that records every byte sent to the TPM, as
// someone on the bus (or on a tcp:// link to swtpm) would see them.
type busSniffer struct {
	mu   sync.Mutex
	sent bytes.Buffer
	path string
}

func sniff(t *testing.T, sim *swtpmtest.TPM) *busSniffer {
	t.Helper()
	s := &busSniffer{path: filepath.Join(t.TempDir(), "sniff.sock")}
	l, err := net.Listen("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			// One client at a time, like swtpm itself.
			up, err := net.Dial("unix", sim.SocketPath())
			if err != nil {
				c.Close()
				continue
			}
			done := make(chan struct{})
			go func() { _, _ = io.Copy(c, up); c.Close(); close(done) }()
			_, _ = io.Copy(io.MultiWriter(up, s), c)
			up.Close()
			<-done
		}
	}()
	return s
}

func (s *busSniffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent.Write(p)
}

func (s *busSniffer) bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.sent.Bytes())
}

func (s *busSniffer) uri(dir string) string { return "tpm:?device=unix://" + s.path + "&dir=" + dir }

// commands splits the recorded stream into command frames.
func commands(stream []byte) [][]byte {
	var out [][]byte
	for len(stream) >= headerSize {
		n := int(binary.BigEndian.Uint32(stream[2:6]))
		if n < headerSize || n > len(stream) {
			break
		}
		out = append(out, stream[:n])
		stream = stream[n:]
	}
	return out
}

// TestSecretsNotOnTheBus (issue 12.7): a key password (in TPM2_Create's sensitive data and in every
// TPM2_Sign's authorization) and the owner password (TPM2_CreatePrimary's authorization) never cross
// the link to the TPM in the clear: the commands that carry them use an HMAC session salted to a key
// inside the TPM, with AES parameter encryption.
func TestSecretsNotOnTheBus(t *testing.T) {
	sim := swtpmtest.Start(t)
	const keyPW, ownerPW = "correct horse battery staple", "owner password 9f3a"
	t.Setenv("CUSTOS_TEST_KEYPW", keyPW)
	ownerFile := filepath.Join(t.TempDir(), "owner")
	if err := os.WriteFile(ownerFile, []byte(ownerPW+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The administrator sets the owner password on the TPM directly (not through the sniffer).
	admin := openKS(t, sim, blobDir(t), "")
	err := admin.dev.do(testCtx(t), func(c *conn) error {
		_, err := tpm2.HierarchyChangeAuth{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NewAuth:    tpm2.TPM2BAuth{Buffer: []byte(ownerPW)},
		}.Execute(c)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	admin.Close()

	bus := sniff(t, sim)
	dir := blobDir(t)
	ks, err := open(testCtx(t), bus.uri(dir)+"&owner-auth-source=file:"+ownerFile+"&key-auth-source=env:CUSTOS_TEST_KEYPW", testOpts(t))
	if err != nil {
		t.Fatal(err)
	}
	k := mustGenerate(t, ks, "pw")
	s := mustSigner(t, ks, k.URI)
	mustSignVerify(t, s, "one")
	ks.dev.closeIfIdle() // the next signature loads the key again: its context, or its blob under the SRK
	mustSignVerify(t, s, "two")
	// The one-use sessions are gone: swtpm has three session slots for everyone, too.
	err = ks.dev.do(testCtx(t), func(c *conn) error {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(tpm2.TPMHTHMACSession) << 24, PropertyCount: 64}.Execute(c)
		if err != nil {
			return err
		}
		hl, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return err
		}
		for _, h := range hl.Handle {
			if uint32(h)>>24 == uint32(tpm2.TPMHTHMACSession) {
				t.Errorf("session 0x%08x left loaded", uint32(h))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}

	sent := bus.bytes()
	for what, secret := range map[string]string{"key password": keyPW, "owner password": ownerPW} {
		if bytes.Contains(sent, []byte(secret)) {
			t.Errorf("the %s crossed the link to the TPM in the clear", what)
		}
	}
	// Every session is an HMAC session salted to a loaded key, with AES-CFB parameter encryption.
	salted := 0
	for _, cmd := range commands(sent) {
		if commandCode(cmd) != tpm2.TPMCCStartAuthSession {
			continue
		}
		tpmKey := binary.BigEndian.Uint32(cmd[10:14])
		p := cmd[18:]
		nonceLen := int(binary.BigEndian.Uint16(p))
		p = p[2+nonceLen:]
		saltLen := int(binary.BigEndian.Uint16(p))
		p = p[2+saltLen:]
		sessionType, symAlg := p[0], binary.BigEndian.Uint16(p[1:3])
		if tpmKey>>24 != 0x80 || saltLen == 0 || sessionType != byte(tpm2.TPMSEHMAC) || tpm2.TPMAlgID(symAlg) != tpm2.TPMAlgAES {
			t.Errorf("a session that is not salted to a loaded key with AES: tpmKey 0x%08x, salt %d bytes, type %d, symmetric 0x%04x", tpmKey, saltLen, sessionType, symAlg)
		}
		salted++
	}
	if salted == 0 {
		t.Error("no salted session was used")
	}
}

// The storage root key that salts a password-protected key's sessions is kept as a saved context: after
// swtpm restarts (saved contexts die with a TPM reset) signing goes on, and after a TPM clear the key is
// reported lost, as for keys without a password.
func TestSaltKeyAfterRestartAndClear(t *testing.T) {
	sim := swtpmtest.Start(t)
	t.Setenv("CUSTOS_TEST_KEYPW", "pw 1")
	ks := openKS(t, sim, blobDir(t), "&key-auth-source=env:CUSTOS_TEST_KEYPW")
	s := mustSigner(t, ks, mustGenerate(t, ks, "pw").URI)
	mustSignVerify(t, s, "before")
	if ks.saltCtx == nil {
		t.Fatal("the salt key's context was not kept")
	}
	sim.Restart()
	mustSignVerify(t, s, "after a restart")
	sim.Clear()
	_, err := s.Sign(testCtx(t), []byte("after a clear"))
	wantErr(t, err, keystore.ErrKeyLost, "reset or replaced")
}
