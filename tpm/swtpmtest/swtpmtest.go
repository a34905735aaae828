// Package swtpmtest starts a private swtpm (a software TPM 2.0) for one test and stops it when the test
// ends. Every test gets its own process, socket and state directory, so tests never share TPM state.
//
//	sim := swtpmtest.Start(t)
//	ks, err := tpm.Open(ctx, sim.KeystoreURI(t.TempDir()), keystore.OpenOptions{})
//
// A subprocess (agentctl in the CLI tests) reaches the same TPM through Device() ("unix:///..."), e.g. as
// --tpm-device or inside a tpm: URI. A missing swtpm skips the test, or fails it under CI=true (testenv).
//
// Fault injection: Kill (SIGKILL, state kept), Restart (same state, like a reboot), Clear (TPM2_Clear: new
// owner seed, so every key wrapped under the old storage root key is gone), Fresh (new state directory:
// a different TPM altogether).
package swtpmtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/test/testenv"
)

// Options change how swtpm is started.
type Options struct {
	// NoStartup leaves out --flags startup-clear: the TPM then answers TPM_RC_INITIALIZE until a client
	// sends TPM2_Startup (as a host TPM would if nothing had started it).
	NoStartup bool
	// TCP serves the command channel on a loopback TCP port (Device() is then tcp://127.0.0.1:port)
	// instead of a unix socket.
	TCP bool
}

// TPM is one swtpm process owned by one test.
type TPM struct {
	t    testing.TB
	bin  string
	dir  string // short: unix socket paths must stay below 108 bytes
	opts Options
	port int // TCP command port when opts.TCP

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when the current process has exited
}

// Start starts swtpm with --flags not-need-init,startup-clear and waits until it answers.
func Start(t testing.TB) *TPM { return StartWith(t, Options{}) }

// StartWith starts swtpm with options.
func StartWith(t testing.TB, opts Options) *TPM {
	t.Helper()
	bin := testenv.LookTool(t, "swtpm", "swtpm")
	dir, err := os.MkdirTemp("", "tpm")
	if err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
	s := &TPM{t: t, bin: bin, dir: dir, opts: opts}
	if opts.TCP {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("swtpmtest: find a free port: %v", err)
		}
		s.port = l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
	}
	if err := os.Mkdir(s.stateDir(), 0o700); err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
	t.Cleanup(func() {
		s.stop(syscall.SIGTERM)
		_ = os.RemoveAll(dir)
	})
	s.start()
	return s
}

func (s *TPM) stateDir() string { return filepath.Join(s.dir, "state") }

// SocketPath is the path of swtpm's command-channel socket (unused with Options.TCP).
func (s *TPM) SocketPath() string { return filepath.Join(s.dir, "sock") }

// Device is the device string for the tpm keystore: "unix://" + SocketPath(), or tcp://127.0.0.1:port.
func (s *TPM) Device() string {
	if s.opts.TCP {
		return fmt.Sprintf("tcp://127.0.0.1:%d", s.port)
	}
	return "unix://" + s.SocketPath()
}

// addr is the network and address of the command channel.
func (s *TPM) addr() (string, string) {
	if s.opts.TCP {
		return "tcp", fmt.Sprintf("127.0.0.1:%d", s.port)
	}
	return "unix", s.SocketPath()
}

// KeystoreURI is a tpm: keystore URI for this TPM with its blobs in blobDir (an absolute path).
func (s *TPM) KeystoreURI(blobDir string) string {
	return "tpm:?device=" + s.Device() + "&dir=" + blobDir
}

// LogPath is swtpm's log file (useful in failure messages).
func (s *TPM) LogPath() string { return filepath.Join(s.dir, "log") }

func (s *TPM) start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		s.t.Fatalf("swtpmtest: swtpm is already running")
	}
	_ = os.Remove(s.SocketPath())
	_ = os.Remove(filepath.Join(s.dir, "ctrl"))
	flags := "not-need-init,startup-clear"
	if s.opts.NoStartup {
		flags = "not-need-init"
	}
	server := "type=unixio,path=" + s.SocketPath() + ",mode=0600"
	if s.opts.TCP {
		server = fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", s.port)
	}
	cmd := exec.Command(s.bin, "socket", "--tpm2",
		"--tpmstate", "dir="+s.stateDir()+",mode=0600",
		"--server", server,
		"--ctrl", "type=unixio,path="+filepath.Join(s.dir, "ctrl")+",mode=0600",
		"--flags", flags,
		"--log", "file="+s.LogPath()+",level=1",
	)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("swtpmtest: start swtpm: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done

	deadline := time.Now().Add(15 * time.Second)
	for {
		err := ping(s.addr())
		if err == nil {
			return
		}
		select {
		case <-done:
			s.cmd = nil
			s.t.Fatalf("swtpmtest: swtpm exited at start: %s%s", stderr.String(), s.logTail())
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("swtpmtest: swtpm did not answer within 15s: %v%s", err, s.logTail())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *TPM) logTail() string {
	b, _ := os.ReadFile(s.LogPath())
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	if len(b) == 0 {
		return ""
	}
	return "\nswtpm log:\n" + string(b)
}

// stop ends the current process with sig (SIGKILL after 5 s) and waits for it.
func (s *TPM) stop(sig syscall.Signal) {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Running reports whether the swtpm process is up.
func (s *TPM) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// Kill ends swtpm with SIGKILL (as a crash would) and waits for it; the state directory is kept.
func (s *TPM) Kill() { s.stop(syscall.SIGKILL) }

// Restart stops swtpm if it runs and starts it again on the same state, like a reboot: the seeds (and so
// every wrapped key) survive, transient objects do not.
func (s *TPM) Restart() {
	s.t.Helper()
	s.stop(syscall.SIGTERM)
	s.start()
}

// Fresh stops swtpm, deletes its state and starts it again: a different TPM with new seeds, as if the
// machine's TPM had been replaced. Keys wrapped by the old one can no longer be loaded.
func (s *TPM) Fresh() {
	s.t.Helper()
	s.stop(syscall.SIGKILL)
	if err := os.RemoveAll(s.stateDir()); err != nil {
		s.t.Fatalf("swtpmtest: %v", err)
	}
	if err := os.Mkdir(s.stateDir(), 0o700); err != nil {
		s.t.Fatalf("swtpmtest: %v", err)
	}
	s.start()
}

// Clear sends TPM2_Clear with the (empty) lockout authorization, as an administrator clearing the TPM
// would: the owner seed changes, so the storage root key changes and every key wrapped under it is lost.
func (s *TPM) Clear() {
	s.t.Helper()
	network, addr := s.addr()
	// TPM2_Clear(TPM_RH_LOCKOUT) with an empty password session.
	cmd := []byte{
		0x80, 0x02, 0, 0, 0, 27, 0, 0, 0x01, 0x26, // header: sessions, size 27, TPM_CC_Clear
		0x40, 0x00, 0x00, 0x0A, // TPM_RH_LOCKOUT
		0, 0, 0, 9, // authorization area size
		0x40, 0x00, 0x00, 0x09, 0, 0, 0x01, 0, 0, // TPM_RS_PW, empty nonce, continueSession, empty hmac
	}
	rsp, err := roundTrip(network, addr, cmd)
	if err != nil {
		s.t.Fatalf("swtpmtest: TPM2_Clear: %v", err)
	}
	if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 {
		s.t.Fatalf("swtpmtest: TPM2_Clear answered 0x%x", rc)
	}
}

// TransientHandles lists the transient objects loaded in the TPM right now (TPM2_GetCapability with
// TPM_CAP_HANDLES from 0x80000000). Use it to prove that a client flushed everything it loaded.
func (s *TPM) TransientHandles() []uint32 {
	s.t.Helper()
	h, err := TransientHandles(s.addr())
	if err != nil {
		s.t.Fatalf("swtpmtest: %v", err)
	}
	return h
}

// TransientHandles asks the TPM simulator at network, addr ("unix", "/path" or "tcp", "host:port") for its
// loaded transient objects.
func TransientHandles(network, addr string) ([]uint32, error) {
	// TPM2_GetCapability(TPM_CAP_HANDLES, 0x80000000, 64)
	cmd := []byte{
		0x80, 0x01, 0, 0, 0, 22, 0, 0, 0x01, 0x7A,
		0, 0, 0, 1, // TPM_CAP_HANDLES
		0x80, 0, 0, 0, // first transient handle
		0, 0, 0, 64, // property count
	}
	rsp, err := roundTrip(network, addr, cmd)
	if err != nil {
		return nil, fmt.Errorf("TPM2_GetCapability(handles): %w", err)
	}
	if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 {
		return nil, fmt.Errorf("TPM2_GetCapability(handles) answered 0x%x", rc)
	}
	// header(10) moreData(1) capability(4) count(4) handles(4 each)
	body := rsp[10:]
	if len(body) < 9 {
		return nil, errors.New("TPM2_GetCapability(handles): short response")
	}
	n := binary.BigEndian.Uint32(body[5:9])
	if int(n) > (len(body)-9)/4 {
		return nil, errors.New("TPM2_GetCapability(handles): count exceeds response")
	}
	out := make([]uint32, 0, n)
	for i := 0; i < int(n); i++ {
		h := binary.BigEndian.Uint32(body[9+4*i:])
		if h>>24 != 0x80 {
			break
		}
		out = append(out, h)
	}
	return out, nil
}

// ping sends TPM2_GetRandom(8); success or TPM_RC_INITIALIZE (not yet started) both mean "answering".
func ping(network, addr string) error {
	rsp, err := roundTrip(network, addr, []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7B, 0, 8})
	if err != nil {
		return err
	}
	if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 && rc != 0x100 {
		return fmt.Errorf("TPM2_GetRandom answered 0x%x", rc)
	}
	return nil
}

// roundTrip sends one raw command on a fresh connection and reads one whole response frame.
func roundTrip(network, addr string, cmd []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	for errors.Is(err, syscall.EAGAIN) && ctx.Err() == nil {
		// swtpm serves one client at a time and its accept queue is short: wait for a place in it.
		time.Sleep(5 * time.Millisecond)
		c, err = d.DialContext(ctx, network, addr)
	}
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(cmd); err != nil {
		return nil, err
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < 10 || size > 1<<16 {
		return nil, fmt.Errorf("bad response size %d", size)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr)
	if _, err := io.ReadFull(c, rsp[10:]); err != nil {
		return nil, err
	}
	return rsp, nil
}
