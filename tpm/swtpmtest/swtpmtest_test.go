package swtpmtest

import (
	"encoding/binary"
	"os"
	"strings"
	"testing"
)

// srkName creates the TCG ECC SRK with raw commands and returns its Name, then flushes it.
func srkName(t *testing.T, s *TPM) []byte {
	t.Helper()
	network, addr := s.addr()
	// TPM2_CreatePrimary(TPM_RH_OWNER, empty password) with the ECC P-256 SRK template.
	template := []byte{
		0x00, 0x23, 0x00, 0x0b, // ECC, SHA-256
		0x00, 0x03, 0x04, 0x72, // fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA|restricted|decrypt
		0x00, 0x00, // authPolicy
		0x00, 0x06, 0x00, 0x80, 0x00, 0x43, // AES-128-CFB
		0x00, 0x10, // scheme NULL
		0x00, 0x03, // NIST P-256
		0x00, 0x10, // kdf NULL
		0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	}
	var body []byte
	body = binary.BigEndian.AppendUint32(body, 0x40000001)            // TPM_RH_OWNER
	body = binary.BigEndian.AppendUint32(body, 9)                     // auth area size
	body = append(body, 0x40, 0, 0, 9, 0, 0, 1, 0, 0)                 // TPM_RS_PW, empty
	body = append(body, 0, 4, 0, 0, 0, 0)                             // inSensitive: empty auth, empty data
	body = binary.BigEndian.AppendUint16(body, uint16(len(template))) // inPublic
	body = append(body, template...)
	body = append(body, 0, 0, 0, 0, 0, 0) // outsideInfo, creationPCR
	cmd := []byte{0x80, 0x02}
	cmd = binary.BigEndian.AppendUint32(cmd, uint32(10+len(body)))
	cmd = binary.BigEndian.AppendUint32(cmd, 0x131) // TPM_CC_CreatePrimary
	cmd = append(cmd, body...)
	rsp, err := roundTrip(network, addr, cmd)
	if err != nil {
		t.Fatal(err)
	}
	if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 {
		t.Fatalf("CreatePrimary answered 0x%x", rc)
	}
	handle := rsp[10:14]
	// The name is the last parameter, followed by the 5-byte password-session response (empty nonce,
	// attributes, empty hmac): a TPM2B of 34 bytes, SHA-256 name algorithm first.
	end := len(rsp) - 5
	name := rsp[end-34 : end]
	if binary.BigEndian.Uint16(rsp[end-36:]) != 34 || binary.BigEndian.Uint16(name) != 0x000b {
		t.Fatalf("cannot find the SRK name in the response %x", rsp)
	}
	flush := append([]byte{0x80, 0x01, 0, 0, 0, 14, 0, 0, 0x01, 0x65}, handle...)
	if _, err := roundTrip(network, addr, flush); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), name...)
}

func TestLifecycle(t *testing.T) {
	s := Start(t)
	if !strings.HasPrefix(s.Device(), "unix:///") || len(s.SocketPath()) >= 108 {
		t.Fatalf("device %q (socket paths must stay below 108 bytes)", s.Device())
	}
	if !s.Running() {
		t.Fatal("not running after Start")
	}
	if hs := s.TransientHandles(); len(hs) != 0 {
		t.Fatalf("a fresh TPM holds %x", hs)
	}
	first := srkName(t, s)

	s.Kill()
	if s.Running() {
		t.Fatal("still running after Kill")
	}
	if _, err := TransientHandles(s.addr()); err == nil {
		t.Fatal("a killed swtpm answered")
	}
	s.Restart()
	if got := srkName(t, s); string(got) != string(first) {
		t.Fatal("Restart lost the owner seed (the SRK changed)")
	}

	s.Clear()
	cleared := srkName(t, s)
	if string(cleared) == string(first) {
		t.Fatal("Clear kept the owner seed")
	}
	s.Fresh()
	if got := srkName(t, s); string(got) == string(cleared) || string(got) == string(first) {
		t.Fatal("Fresh kept the owner seed")
	}
	if hs := s.TransientHandles(); len(hs) != 0 {
		t.Fatalf("left behind %x", hs)
	}
}

func TestTCP(t *testing.T) {
	s := StartWith(t, Options{TCP: true})
	if !strings.HasPrefix(s.Device(), "tcp://127.0.0.1:") {
		t.Fatalf("device %q", s.Device())
	}
	a := srkName(t, s)
	s.Restart()
	if b := srkName(t, s); string(a) != string(b) {
		t.Fatal("Restart lost the owner seed")
	}
}

func TestCleanupRemovesEverything(t *testing.T) {
	var dir string
	t.Run("inner", func(t *testing.T) {
		s := Start(t)
		dir = s.dir
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s survived the test: %v", dir, err)
	}
}
