package tpm

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/test/testenv"
	"github.com/custos-agent/custos/tpm/swtpmtest"
)

// Many goroutines sign at once through one signer and through several: every signature verifies.
func TestManyGoroutinesSigning(t *testing.T) {
	sim := swtpmtest.Start(t)
	ks := openKS(t, sim, blobDir(t), "")
	keys := []keystore.Key{mustGenerate(t, ks, "a"), mustGenerate(t, ks, "b")}
	signers := []keystore.Signer{mustSigner(t, ks, keys[0].URI), mustSigner(t, ks, keys[1].URI)}
	const goroutines, each = 16, 10
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			s := signers[g%2] // two keys alternate: the loaded key changes under contention
			for i := 0; i < each; i++ {
				msg := []byte(fmt.Sprintf("g%d/%d", g, i))
				sig, err := s.Sign(context.Background(), msg)
				if err != nil {
					errs <- err
					return
				}
				if err := s.Public().Verify(msg, sig); err != nil {
					errs <- fmt.Errorf("goroutine %d signature %d: %w", g, i, err)
				}
				if err := keys[(g+1)%2].Public.Verify(msg, sig); err == nil {
					errs <- fmt.Errorf("goroutine %d: signature verifies under the other key", g)
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// After many signatures and failures of every kind, closing the keystore leaves no transient object in
// the TPM; while it is open it holds at most the one loaded key.
func TestTransientHandlesFlushed(t *testing.T) {
	sim := swtpmtest.Start(t)
	dir := blobDir(t)
	t.Setenv("CUSTOS_TEST_PW", "pw")
	t.Setenv("CUSTOS_TEST_BADPW", "bad")
	ks := openKS(t, sim, dir, "&key-auth-source=env:CUSTOS_TEST_PW")
	pwKey := mustGenerate(t, ks, "pw")
	plain := openKS(t, sim, dir, "")
	k1, k2 := mustGenerate(t, plain, "k1"), mustGenerate(t, plain, "k2")
	broken := mustGenerate(t, plain, "broken")
	raw, _ := os.ReadFile(blobPath(dir, "broken"))
	b, _ := DecodeBlob(raw)
	b.Private[len(b.Private)-1] ^= 1
	if err := os.WriteFile(blobPath(dir, "broken"), reencode(t, b), 0o600); err != nil {
		t.Fatal(err)
	}

	s1, s2 := mustSigner(t, plain, k1.URI), mustSigner(t, plain, k2.URI)
	badPW := mustSigner(t, plain, strings.Replace(pwKey.URI, "CUSTOS_TEST_PW", "CUSTOS_TEST_BADPW", 1))
	goodPW := mustSigner(t, ks, pwKey.URI)
	for i := 0; i < 40; i++ {
		mustSignVerify(t, s1, fmt.Sprint("one ", i))
		mustSignVerify(t, s2, fmt.Sprint("two ", i)) // evicts k1, loads k2
		if i%10 == 0 {
			mustSignVerify(t, goodPW, "right password")
			_, err := plain.Signer(testCtx(t), broken.URI)
			wantErr(t, err, keystore.ErrCorrupt)
			_, err = plain.Generate(testCtx(t), keystore.GenerateRequest{Algorithm: keystore.P256, Label: "k1"})
			wantErr(t, err, keystore.ErrExists)
			cancelled, cancel := context.WithCancel(context.Background())
			cancel()
			_, err = s1.Sign(cancelled, []byte("x"))
			wantErr(t, err, context.Canceled)
		}
		if hs := sim.TransientHandles(); len(hs) > 2 {
			t.Fatalf("round %d: %d transient objects loaded (%x); want at most one per open keystore", i, len(hs), hs)
		}
	}
	// A wrong password (once: swtpm's dictionary-attack protection locks out after very few).
	_, err := badPW.Sign(testCtx(t), []byte("x"))
	wantErr(t, err, keystore.ErrWrongSecret)
	if err := plain.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	if hs := sim.TransientHandles(); len(hs) != 0 {
		t.Fatalf("after Close the TPM still holds transient objects %x", hs)
	}
}

// The blob directory holds nothing but wrapped blobs: files 0600 in a 0700 directory, each a TPM2B_PUBLIC
// and a TPM2B_PRIVATE whose sensitive area is encrypted, and no 32-byte window of any file is the
// private scalar of any key (checked by multiplying it out against the public key).
func TestBlobsHoldNoPrivateScalar(t *testing.T) {
	sim := swtpmtest.Start(t)
	dir := blobDir(t)
	ks := openKS(t, sim, dir, "")
	var pubs [][]byte // uncompressed SEC 1 points
	for i := 0; i < 3; i++ {
		k := mustGenerate(t, ks, fmt.Sprintf("k%d", i))
		u, err := k.Public.Crypto().(*ecdsa.PublicKey).Bytes()
		if err != nil {
			t.Fatal(err)
		}
		pubs = append(pubs, u)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("blob directory mode %v (err %v), want 0700", fi.Mode().Perm(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Fatalf("blob directory holds %d entries, want the 3 key files", len(entries))
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		info, _ := e.Info()
		if info.Mode().Perm() != 0o600 || !info.Mode().IsRegular() {
			t.Fatalf("%s: mode %v, want a regular 0600 file", e.Name(), info.Mode())
		}
		raw, _ := os.ReadFile(path)
		b, err := DecodeBlob(raw)
		if err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		priv := b.PrivateBlob()
		// A TPM2B_PRIVATE made by TPM2_Create is an integrity digest (TPM2B, 32 bytes for SHA-256)
		// followed by the CFB-encrypted TPM2B_SENSITIVE.
		if len(priv) < 2+32+2 || binary.BigEndian.Uint16(priv) != 32 {
			t.Fatalf("%s: private part does not start with a 32-byte integrity digest", e.Name())
		}
		for _, off := range []int{0, 2 + 32} {
			if s, err := tpm2.Unmarshal[tpm2.TPM2BSensitive](priv[off:]); err == nil {
				if c, err := s.Contents(); err == nil && c.SensitiveType == tpm2.TPMAlgECC {
					t.Fatalf("%s: a plaintext TPMT_SENSITIVE of an ECC key parses at offset %d", e.Name(), off)
				}
			}
		}
		for _, hay := range [][]byte{raw, b.Public, b.Private} {
			for i := 0; i+32 <= len(hay); i++ {
				k, err := ecdh.P256().NewPrivateKey(hay[i : i+32])
				if err != nil {
					continue // zero or not below the group order: not a scalar
				}
				got := k.PublicKey().Bytes()
				for _, p := range pubs {
					if bytes.Equal(got, p) {
						t.Fatalf("%s holds a private key at offset %d", e.Name(), i)
					}
				}
			}
		}
	}
}

// A blob taken to a different TPM does not load there: the key exists only inside the TPM that made it.
func TestBlobOnAnotherTPM(t *testing.T) {
	simA, simB := swtpmtest.Start(t), swtpmtest.Start(t)
	dirA := blobDir(t)
	ksA := openKS(t, simA, dirA, "")
	k := mustGenerate(t, ksA, "agent")
	mustSignVerify(t, mustSigner(t, ksA, k.URI), "on A")

	dirB := blobDir(t)
	if err := os.MkdirAll(dirB, 0o700); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(blobPath(dirA, "agent"))
	if err := os.WriteFile(blobPath(dirB, "agent"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	ksB := openKS(t, simB, dirB, "")
	uriB := ksB.keyURI("agent", "")
	_, err := ksB.Signer(testCtx(t), uriB)
	wantErr(t, err, keystore.ErrKeyLost, "the TPM was reset or replaced; this key is gone")

	// Beyond our own check of the parent's name: TPM B itself refuses the blob under its storage root key.
	b, _ := DecodeBlob(raw)
	err = ksB.dev.do(testCtx(t), func(c *conn) error {
		srk, err := ksB.createSRK(c)
		if err != nil {
			return err
		}
		defer ksB.flush(c, srk.ObjectHandle, "srk")
		priv, _ := tpm2.Unmarshal[tpm2.TPM2BPrivate](b.Private)
		pub, _ := tpm2.Unmarshal[tpm2.TPM2BPublic](b.Public)
		lr, err := tpm2.Load{
			ParentHandle: tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name},
			InPrivate:    *priv,
			InPublic:     *pub,
		}.Execute(c)
		if err == nil {
			ksB.flush(c, lr.ObjectHandle, "key")
		}
		return err
	})
	if !isRC(err, tpm2.TPMRCIntegrity) {
		t.Fatalf("TPM B loading A's blob: got %v, want TPM_RC_INTEGRITY", err)
	}
	if hs := simB.TransientHandles(); len(hs) != 0 {
		t.Fatalf("TPM B holds transient objects %x", hs)
	}
}

// swtpm without startup-clear answers TPM_RC_INITIALIZE: the keystore sends TPM2_Startup itself.
func TestSendsStartup(t *testing.T) {
	sim := swtpmtest.StartWith(t, swtpmtest.Options{NoStartup: true})
	ks := openKS(t, sim, blobDir(t), "")
	mustSignVerify(t, mustSigner(t, ks, mustGenerate(t, ks, "k").URI), "after TPM2_Startup")
}

// swtpm's command channel on TCP works through the same transport.
func TestTCPDevice(t *testing.T) {
	sim := swtpmtest.StartWith(t, swtpmtest.Options{TCP: true})
	if !strings.HasPrefix(sim.Device(), "tcp://127.0.0.1:") {
		t.Fatalf("device %s", sim.Device())
	}
	ks := openKS(t, sim, blobDir(t), "")
	s := mustSigner(t, ks, mustGenerate(t, ks, "k").URI)
	mustSignVerify(t, s, "over tcp")
	sim.Restart()
	mustSignVerify(t, s, "over tcp after a restart")
}

// An open, idle keystore does not keep swtpm (which serves one client at a time) from other programs,
// and after someone else flushed its key and loaded another object, it notices and reloads its own.
func TestSharesSwtpmWithOthers(t *testing.T) {
	sim := swtpmtest.Start(t)
	dir := blobDir(t)
	ks1 := openKS(t, sim, dir, "")
	k1 := mustGenerate(t, ks1, "one")
	s1 := mustSigner(t, ks1, k1.URI)
	mustSignVerify(t, s1, "first")

	done := make(chan error, 1)
	go func() { _, err := swtpmtest.TransientHandles("unix", sim.SocketPath()); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("another client waited more than 2 s for swtpm while the keystore was idle")
	}

	// The idle keystore parked its key (context-saved and flushed): swtpm's slots are all free. Someone
	// flushes whatever is there anyway, then a second keystore loads its own key, likely on the same handle.
	if hs := sim.TransientHandles(); len(hs) != 0 {
		t.Fatalf("transient objects %x while ks1 is idle, want none", hs)
	}
	err := ks1.dev.do(testCtx(t), func(c *conn) error {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(tpm2.TPMHTTransient) << 24, PropertyCount: 64}.Execute(c)
		if err != nil {
			return err
		}
		hl, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return err
		}
		for _, h := range hl.Handle {
			if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(c); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * idleClose) // let ks1 drop its idle connection, as it would between two signatures
	ks2 := openKS(t, sim, dir, "")
	s2 := mustSigner(t, ks2, mustGenerate(t, ks2, "two").URI)
	time.Sleep(3 * idleClose)
	msg := []byte("must be signed by key one")
	sig, err := s1.Sign(testCtx(t), msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := k1.Public.Verify(msg, sig); err != nil {
		t.Fatalf("ks1 signed with an object that is not its key: %v", err)
	}
	mustSignVerify(t, s2, "ks2 still fine")
	ks1.Close()
	ks2.Close()
	if hs := sim.TransientHandles(); len(hs) != 0 {
		t.Fatalf("left behind %x", hs)
	}
}

// A signer whose key was destroyed stops signing.
func TestSignerAfterDestroy(t *testing.T) {
	sim := swtpmtest.Start(t)
	ks := openKS(t, sim, blobDir(t), "")
	k := mustGenerate(t, ks, "doomed")
	s := mustSigner(t, ks, k.URI)
	mustSignVerify(t, s, "before")
	if err := ks.Destroy(testCtx(t), k.URI); err != nil {
		t.Fatal(err)
	}
	_, err := s.Sign(testCtx(t), []byte("after"))
	wantErr(t, err, keystore.ErrNotFound, `"doomed" was destroyed`)
	// A new key under the same label is a different key: the old signer must not use it.
	mustGenerate(t, ks, "doomed")
	_, err = s.Sign(testCtx(t), []byte("after"))
	wantErr(t, err, keystore.ErrNotFound, "different key")
	if err := ks.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = s.Sign(testCtx(t), []byte("closed"))
	wantErr(t, err, keystore.ErrClosed)
	if hs := sim.TransientHandles(); len(hs) != 0 {
		t.Fatalf("left behind %x", hs)
	}
}

func TestUnreachableDevice(t *testing.T) {
	dir := blobDir(t)
	notChar := filepath.Join(t.TempDir(), "plainfile")
	if err := os.WriteFile(notChar, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	sockDir, err := os.MkdirTemp("", "tpm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := l.Addr().String()
	l.Close()
	for _, tc := range []struct {
		device string
		words  []string
	}{
		{"unix://" + sockDir + "/nothing", []string{"cannot use the TPM at unix://" + sockDir + "/nothing", "is swtpm running"}},
		{"tcp://" + closedPort, []string{"cannot use the TPM at tcp://" + closedPort, "connection refused"}},
		{"/dev/tpmrm-does-not-exist", []string{"/dev/tpmrm-does-not-exist", "no TPM 2.0 device"}},
		{notChar, []string{"is not a character device"}},
	} {
		t.Run(tc.device, func(t *testing.T) {
			_, err := Open(testCtx(t), "tpm:?device="+tc.device+"&dir="+dir, testOpts(t))
			wantErr(t, err, keystore.ErrUnavailable, tc.words...)
		})
	}
}

func TestURIErrors(t *testing.T) {
	sim := swtpmtest.Start(t)
	dir := blobDir(t)
	dev := sim.Device()
	for _, tc := range []struct {
		uri   string
		words string
	}{
		{"pkcs11:token=x", `does not start with "tpm:"`},
		{"tpm:?device=" + dev, "no dir=/absolute/path"},
		{"tpm:?device=" + dev + "&dir=relative/dir", "not an absolute path"},
		{"tpm:?device=" + dev + "&dir=" + dir + "&devcie=/dev/tpm0", `unknown attribute "devcie"`},
		{"tpm:token=x?device=" + dev + "&dir=" + dir, `unknown path attribute "token"`},
		{"tpm:?device=" + dev + "&dir=" + dir + "&owner-auth-source=hunter2", "must be file:/path or env:NAME"},
		{"tpm:?device=unix://relative/sock&dir=" + dir, "three slashes"},
		{"tpm:?device=http://x&dir=" + dir, "unknown scheme"},
		{"tpm:?device=tcp://nohost&dir=" + dir, "tcp://host:port"},
		{"tpm:?device=tpmrm0&dir=" + dir, "absolute device path"},
	} {
		t.Run(tc.uri, func(t *testing.T) {
			_, err := Open(testCtx(t), tc.uri, testOpts(t))
			wantErr(t, err, keystore.ErrBadURI, tc.words)
		})
	}
	ks := openKS(t, sim, dir, "")
	k := mustGenerate(t, ks, "k")
	for _, tc := range []struct {
		uri   string
		words string
	}{
		{strings.Replace(k.URI, dev, "unix:///elsewhere/sock", 1), "this keystore uses " + dev},
		{strings.Replace(k.URI, dir, "/other/dir", 1), "keeps its keys in " + dir},
		{"tpm:?device=" + dev + "&dir=" + dir, "no object=<label>"},
		{"tpm:object=../escape?device=" + dev + "&dir=" + dir, "not usable"},
	} {
		_, err := ks.Signer(testCtx(t), tc.uri)
		wantErr(t, err, keystore.ErrBadURI, tc.words)
	}
	_, err := ks.Generate(testCtx(t), keystore.GenerateRequest{Algorithm: keystore.P256, Label: "a/b"})
	wantErr(t, err, keystore.ErrBadURI, "not usable")
	// A key URI is also a keystore URI.
	ks2, err := Open(testCtx(t), k.URI, testOpts(t))
	if err != nil {
		t.Fatal(err)
	}
	defer ks2.Close()
	if ks2.Info().URI != ks.Info().URI {
		t.Fatalf("keystore URI from a key URI: %s, want %s", ks2.Info().URI, ks.Info().URI)
	}
	if ks2.Info().HardwareBacked {
		t.Fatal("swtpm reported as hardware-backed")
	}
}

// Full-frame reads: a response delivered a byte at a time is reassembled; malformed frames are refused.
func TestReadResponse(t *testing.T) {
	frame := []byte{0x80, 0x01, 0, 0, 0, 14, 0, 0, 0, 0, 1, 2, 3, 4}
	for _, oneRead := range []bool{false, true} {
		got, err := readResponse(iotest.OneByteReader(bytes.NewReader(frame)), oneRead)
		if err != nil || !bytes.Equal(got, frame) {
			t.Fatalf("oneRead=%v: got %x, %v", oneRead, got, err)
		}
		got, err = readResponse(iotest.HalfReader(bytes.NewReader(append(frame, 9, 9))), oneRead)
		if !oneRead && (err != nil || !bytes.Equal(got, frame)) {
			t.Fatalf("a socket read took more than one frame: %x, %v", got, err)
		}
	}
	for _, tc := range []struct {
		name  string
		data  []byte
		words string
	}{
		{"short header", frame[:6], "short TPM response header"},
		{"cut short", frame[:12], "cut short after"},
		{"size below header", []byte{0x80, 0x01, 0, 0, 0, 4, 0, 0, 0, 0}, "announces 4 bytes"},
		{"huge size", []byte{0x80, 0x01, 0x7f, 0, 0, 0, 0, 0, 0, 0}, "out of step"},
	} {
		_, err := readResponse(bytes.NewReader(tc.data), false)
		if err == nil || !strings.Contains(err.Error(), tc.words) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.words)
		}
	}
	_, err := readResponse(bytes.NewReader(nil), false)
	if !errors.Is(err, io.EOF) {
		t.Errorf("empty stream: %v, want EOF", err)
	}
}

// A signature from the keystore verifies with openssl, through the files OpenSSLVerifyFiles writes; a
// changed message does not.
func TestOpenSSLVerifies(t *testing.T) {
	openssl := testenv.LookTool(t, "openssl", "openssl")
	sim := swtpmtest.Start(t)
	ks := openKS(t, sim, blobDir(t), "")
	k := mustGenerate(t, ks, "k")
	msg := []byte("custos/v1/test\x00checked by openssl")
	sig, err := mustSigner(t, ks, k.URI).Sign(testCtx(t), msg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	argv, err := OpenSSLVerifyFiles(dir, k.Public, msg, sig)
	if err != nil {
		t.Fatal(err)
	}
	run := func() (string, error) {
		cmd := exec.Command(openssl, argv[1:]...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run()
	if err != nil || !strings.Contains(out, "Verified OK") {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(argv[1:], " "), err, out)
	}
	if err := os.WriteFile(filepath.Join(dir, "msg"), append(msg, '!'), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = run()
	if err == nil || !strings.Contains(out, "Verification failure") {
		t.Fatalf("openssl accepted a changed message: %v\n%s", err, out)
	}
}

// swtpm has no resource manager: objects a client left loaded when it died stay until swtpm restarts.
// When every slot is taken, the keystore flushes them and goes on.
func TestObjectsLeftByDeadClients(t *testing.T) {
	sim := swtpmtest.Start(t)
	dir := blobDir(t)
	ks := openKS(t, sim, dir, "")
	k := mustGenerate(t, ks, "k")
	// A "dead client" fills every transient slot and never flushes.
	leaker := openKS(t, sim, dir, "")
	err := leaker.dev.do(testCtx(t), func(c *conn) error {
		for {
			_, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(c)
			if isRC(err, tpm2.TPMRCObjectMemory) {
				return nil
			}
			if err != nil {
				return err
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(sim.TransientHandles()); n < 3 {
		t.Fatalf("only %d slots filled", n)
	}
	time.Sleep(3 * idleClose)
	s := mustSigner(t, ks, k.URI)
	mustSignVerify(t, s, "after making room")
	if hs := sim.TransientHandles(); len(hs) != 0 {
		t.Fatalf("transient objects %x, want none (the idle keystore parks its key)", hs)
	}
	if _, err := ks.Generate(testCtx(t), keystore.GenerateRequest{Algorithm: keystore.P256, Label: "k2"}); err != nil {
		t.Fatal(err)
	}
}

// Closing a keystore whose TPM is gone does not hang or fail: there is nothing left to flush.
func TestCloseWhileDown(t *testing.T) {
	sim := swtpmtest.Start(t)
	ks := openKS(t, sim, blobDir(t), "")
	s := mustSigner(t, ks, mustGenerate(t, ks, "k").URI)
	mustSignVerify(t, s, "before")
	sim.Kill()
	start := time.Now()
	if err := ks.Close(); err != nil {
		t.Fatalf("Close with the TPM down: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("Close took %v with the TPM down", el)
	}
	_, err := s.Sign(testCtx(t), []byte("after close"))
	wantErr(t, err, keystore.ErrClosed)
}

// Two processes share one swtpm with no resource manager, as agentctl and a running daemon do (issue
// 12.14): the daemon signs and goes idle; agentctl rotates (signs with the current key, makes and signs
// with the next one, makes the one after); the daemon signs again. swtpm has three transient object slots,
// so an idle keystore must hold none: its loaded key is context-saved and flushed when it lets go of the
// connection, and loaded back from that context when it signs next.
func TestIdleKeystoreHoldsNoSlot(t *testing.T) {
	sim := swtpmtest.Start(t)
	dir := blobDir(t)
	daemon := openKS(t, sim, dir, "")
	g0 := mustGenerate(t, daemon, "g0")
	g1 := mustGenerate(t, daemon, "g1")
	ds := mustSigner(t, daemon, g0.URI)
	mustSignVerify(t, ds, "daemon, before")
	idle := func(ks *Keystore) {
		ks.dev.closeIfIdle() // what the idle timer does between two operations
		if hs := sim.TransientHandles(); len(hs) != 0 {
			t.Fatalf("an idle keystore keeps transient objects %x loaded in swtpm; want none", hs)
		}
	}
	idle(daemon)

	cli := openKS(t, sim, dir, "")
	prior, next := mustSigner(t, cli, g0.URI), mustSigner(t, cli, g1.URI)
	mustGenerate(t, cli, "g2") // its loaded key + the storage root key + the object being created
	mustSignVerify(t, prior, "rotation event, old key")
	mustSignVerify(t, next, "rotation event, new key")
	idle(cli)

	mustSignVerify(t, ds, "daemon, after")
	idle(daemon)
	if err := cli.Close(); err != nil {
		t.Fatal(err)
	}
	if err := daemon.Close(); err != nil {
		t.Fatal(err)
	}
	if hs := sim.TransientHandles(); len(hs) != 0 {
		t.Fatalf("left behind %x", hs)
	}
}
