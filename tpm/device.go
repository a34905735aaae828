package tpm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/custos-agent/custos/keystore"
)

// DefaultDevice is the kernel's TPM resource manager: several processes can use the TPM at once through it,
// and every transient object a process loaded is flushed when it closes the device.
const DefaultDevice = "/dev/tpmrm0"

const (
	headerSize = 10
	// maxResponse bounds a response frame; TPMs answer in at most a few KiB (swtpm: 4096).
	maxResponse = 64 << 10
	// defaultOpTimeout bounds one operation when the caller's context has no deadline.
	defaultOpTimeout = 60 * time.Second
	// retryBudget bounds how long a command is resent while the TPM answers RETRY, YIELDED or TESTING.
	retryBudget = 3 * time.Second
	// minCommandTime is the least time one command is given, even when the caller's deadline is closer.
	minCommandTime = 5 * time.Second
)

// deviceKind says how a TPM is reached.
type deviceKind int

const (
	kindChar deviceKind = iota // a character device (/dev/tpmrm0): one open file, one command per write/read
	kindUnix                   // swtpm's command channel on a unix socket
	kindTCP                    // swtpm's command channel on TCP
)

// deviceSpec is a parsed device string.
type deviceSpec struct {
	kind deviceKind
	addr string // file path, socket path or host:port
	raw  string // as the user wrote it (for messages and URIs)
}

// parseDevice accepts "/dev/tpmrm0" (an absolute character-device path), "unix:///path/to/socket" and
// "tcp://host:port".
func parseDevice(s string) (deviceSpec, error) {
	if s == "" {
		s = DefaultDevice
	}
	switch {
	case strings.HasPrefix(s, "unix://"):
		p := strings.TrimPrefix(s, "unix://")
		if !filepath.IsAbs(p) {
			return deviceSpec{}, keystore.Errorf(keystore.ErrBadURI,
				"TPM device %q: a unix socket must be written unix:///absolute/path (three slashes)", s)
		}
		return deviceSpec{kind: kindUnix, addr: p, raw: s}, nil
	case strings.HasPrefix(s, "tcp://"):
		u, err := url.Parse(s)
		if err != nil || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
			return deviceSpec{}, keystore.Errorf(keystore.ErrBadURI,
				"TPM device %q: write tcp://host:port (swtpm's --server port, not its --ctrl port)", s)
		}
		return deviceSpec{kind: kindTCP, addr: u.Host, raw: s}, nil
	case strings.Contains(s, "://"):
		return deviceSpec{}, keystore.Errorf(keystore.ErrBadURI,
			"TPM device %q: unknown scheme; use %s, unix:///path or tcp://host:port", s, DefaultDevice)
	case filepath.IsAbs(s):
		return deviceSpec{kind: kindChar, addr: filepath.Clean(s), raw: s}, nil
	}
	return deviceSpec{}, keystore.Errorf(keystore.ErrBadURI,
		"TPM device %q: use an absolute device path such as %s, unix:///path or tcp://host:port", s, DefaultDevice)
}

// device is one TPM. It runs one operation (a short sequence of commands) at a time.
//
// A character device stays open for the life of the keystore: through /dev/tpmrm0 the kernel keeps this
// process's transient objects apart from everyone else's and flushes them when the file is closed.
// swtpm has no resource manager and serves one socket client at a time (the others wait in its accept
// queue), so a socket is kept only while this process is busy: it is closed after idleClose without
// an operation, and after maxHold even when busy, so that other processes get their turn.
type device struct {
	spec deviceSpec
	log  *slog.Logger
	sem  chan struct{} // one operation at a time

	// Guarded by sem.
	cur      io.ReadWriteCloser // the open device file or socket, nil when closed
	opened   time.Time          // when cur was opened
	epoch    uint64             // bumped whenever a connection is opened
	timer    *time.Timer        // closes an idle socket
	shutdown bool

	retryBudget time.Duration // how long to resend while the TPM answers RETRY, YIELDED or TESTING

	// release, when set, runs on a socket connection that is in order just before this process lets go
	// of it (idle or held too long): the keystore parks its loaded key there, because swtpm keeps
	// transient objects across connections and has only three slots for everyone.
	release func(c *conn)
}

const (
	idleClose = 20 * time.Millisecond
	maxHold   = 250 * time.Millisecond
)

func newDevice(spec deviceSpec, log *slog.Logger) *device {
	return &device{spec: spec, log: log, sem: make(chan struct{}, 1), retryBudget: retryBudget}
}

// conn is the connection for the duration of one operation. It implements go-tpm's transport.TPM with
// full-frame reads, resends on RETRY/YIELDED/TESTING, and sends TPM2_Startup when the TPM was never started.
type conn struct {
	dev    *device
	ctx    context.Context
	rw     io.ReadWriter
	epoch  uint64 // which connection this is; transient handles cached under another epoch need checking
	broken error  // the first transport failure; the connection is dropped when the operation ends
}

// do runs fn with exclusive use of the TPM. Transport failures come back as ErrUnavailable naming the device.
func (d *device) do(ctx context.Context, fn func(c *conn) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultOpTimeout)
		defer cancel()
	}
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		return d.ctxError(ctx, "waiting for the TPM")
	}
	defer func() { <-d.sem }()
	if ctx.Err() != nil {
		return d.ctxError(ctx, "waiting for the TPM")
	}
	if d.shutdown {
		return fmt.Errorf("the TPM keystore on %s was closed: %w", d.spec.raw, keystore.ErrClosed)
	}
	if d.cur != nil && !peerAlive(d.cur) {
		d.drop() // swtpm went away (or restarted) while the socket was idle: reconnect
	}
	if d.cur == nil {
		rw, err := d.dial(ctx)
		if err != nil {
			return err
		}
		d.cur, d.opened = rw, time.Now()
		d.epoch++
	}
	c := &conn{dev: d, ctx: ctx, rw: d.cur, epoch: d.epoch}
	err := fn(c)
	switch {
	case c.broken != nil:
		d.drop()
	case d.spec.kind == kindChar:
	case time.Since(d.opened) > maxHold:
		d.letGo(ctx) // let a waiting process in; the next operation reconnects
	default:
		if d.timer == nil {
			d.timer = time.AfterFunc(idleClose, d.closeIfIdle)
		} else {
			d.timer.Reset(idleClose)
		}
	}
	return err
}

// closeIfIdle runs from the idle timer: it closes the socket unless an operation is running (which
// re-arms the timer when it ends).
func (d *device) closeIfIdle() {
	select {
	case d.sem <- struct{}{}:
	default:
		return
	}
	defer func() { <-d.sem }()
	d.letGo(context.Background())
}

// letGo closes a connection that is in order, first running release on it (socket devices only).
func (d *device) letGo(ctx context.Context) {
	if d.cur == nil {
		return
	}
	if d.release != nil && d.spec.kind != kindChar {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), minCommandTime)
		d.release(&conn{dev: d, ctx: ctx, rw: d.cur, epoch: d.epoch})
		cancel()
	}
	d.drop()
}

func (d *device) drop() {
	if d.cur != nil {
		_ = d.cur.Close()
		d.cur = nil
	}
}

// peerAlive reports whether an idle socket still has a live peer: a non-blocking peek that finds the
// connection closed (or, worse, unread bytes out of step with our commands) says it must be replaced.
func peerAlive(rw io.ReadWriteCloser) bool {
	sc, ok := rw.(syscall.Conn)
	if !ok {
		return true
	}
	if _, isFile := rw.(*os.File); isFile {
		return true // a character device has no peer to lose
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := true
	var buf [1]byte
	err = raw.Read(func(fd uintptr) bool {
		_, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case rerr == syscall.EAGAIN || rerr == syscall.EINTR:
			alive = true
		default: // closed (n == 0), failed, or unexpected bytes waiting
			alive = false
		}
		return true // never wait for readiness
	})
	return err == nil && alive
}

// dial opens the device file or connects to the socket.
func (d *device) dial(ctx context.Context) (io.ReadWriteCloser, error) {
	if d.spec.kind == kindChar {
		f, err := openChar(d.spec.addr)
		if err != nil {
			return nil, d.unavailable(err)
		}
		return f, nil
	}
	network := "unix"
	if d.spec.kind == kindTCP {
		network = "tcp"
	}
	var dialer net.Dialer
	nc, err := dialer.DialContext(ctx, network, d.spec.addr)
	for backoff := time.Millisecond; errors.Is(err, syscall.EAGAIN) && ctx.Err() == nil; backoff = min(2*backoff, 50*time.Millisecond) {
		// swtpm serves one client at a time and its accept queue is short (a unix socket refuses a
		// connection with EAGAIN when the queue is full): wait for our turn as a TCP client would.
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		nc, err = dialer.DialContext(ctx, network, d.spec.addr)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, d.ctxError(ctx, "connecting to the TPM")
		}
		return nil, d.unavailable(err)
	}
	return nc, nil
}

// close waits for a running operation, then closes the connection; later operations get ErrClosed.
func (d *device) close(ctx context.Context) error {
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		return d.ctxError(ctx, "closing the TPM keystore")
	}
	defer func() { <-d.sem }()
	d.shutdown = true
	if d.timer != nil {
		d.timer.Stop()
	}
	if d.cur != nil {
		err := d.cur.Close()
		d.cur = nil
		return err
	}
	return nil
}

// openChar opens a character device read-write.
func openChar(path string) (*os.File, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode()&fs.ModeCharDevice == 0 {
		return nil, fmt.Errorf("%s is not a character device (mode %s)", path, fi.Mode())
	}
	return os.OpenFile(path, os.O_RDWR, 0)
}

// unavailable turns a failure to reach the device into a sentence that says what to check.
func (d *device) unavailable(err error) error {
	var hint string
	switch {
	case d.spec.kind == kindChar && errors.Is(err, fs.ErrNotExist):
		hint = "this host has no TPM 2.0 device there (check the firmware settings and that the kernel's tpm_tis/tpm_crb driver is loaded); for development use swtpm and --tpm-device unix:///path/to/swtpm.sock"
	case d.spec.kind == kindChar && errors.Is(err, fs.ErrPermission):
		hint = "this user may not open it: add the user to the tss group (sudo usermod -aG tss $USER, then log in again)"
	case d.spec.kind == kindChar && errors.Is(err, syscall.EBUSY):
		hint = "another program holds it open exclusively; use the resource manager /dev/tpmrm0 instead of /dev/tpm0"
	case d.spec.kind == kindChar:
		hint = "use the kernel resource manager " + DefaultDevice
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, fs.ErrNotExist):
		hint = "nothing is listening there: is swtpm running (swtpm socket --tpm2 --server type=unixio,path=... --flags not-need-init,startup-clear)?"
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		hint = "the connection dropped (was the TPM simulator stopped or restarted?); the next call reconnects"
	default:
		hint = "check that the TPM (or swtpm) is up"
	}
	return fmt.Errorf("cannot use the TPM at %s: %v; %s: %w", d.spec.raw, err, hint, keystore.ErrUnavailable)
}

func (d *device) ctxError(ctx context.Context, doing string) error {
	return fmt.Errorf("%s at %s: %w: %w", doing, d.spec.raw, ctx.Err(), keystore.ErrUnavailable)
}

// Send implements transport.TPM: it writes one command and reads exactly one response frame.
func (c *conn) Send(cmd []byte) ([]byte, error) {
	if c.broken != nil {
		return nil, c.broken
	}
	var (
		backoff = 2 * time.Millisecond
		start   = time.Now()
		started bool
	)
	for {
		rsp, err := c.roundTrip(cmd)
		if err != nil {
			return nil, err
		}
		rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
		switch {
		case rc == tpm2.TPMRCInitialize && !started && commandCode(cmd) != tpm2.TPMCCStartup:
			// swtpm started with not-need-init but without startup-clear waits for TPM2_Startup.
			if err := c.startup(); err != nil {
				return nil, err
			}
			started = true
			continue
		case rc == tpm2.TPMRCRetry || rc == tpm2.TPMRCYielded || rc == tpm2.TPMRCTesting:
			if time.Since(start) > c.dev.retryBudget {
				return rsp, nil // the caller turns the warning into a sentence
			}
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-c.ctx.Done():
				t.Stop()
				return nil, c.dev.ctxError(c.ctx, "waiting for a busy TPM")
			}
			backoff = min(backoff*2, 100*time.Millisecond)
			continue
		}
		return rsp, nil
	}
}

// startup sends TPM2_Startup(CLEAR). A TPM that was started meanwhile answers TPM_RC_INITIALIZE: fine.
func (c *conn) startup() error {
	c.dev.log.Info("the TPM was not started; sending TPM2_Startup(CLEAR)", "device", c.dev.spec.raw)
	cmd := []byte{0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0}
	rsp, err := c.roundTrip(cmd)
	if err != nil {
		return err
	}
	rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
	if rc != tpm2.TPMRCSuccess && rc != tpm2.TPMRCInitialize {
		return fmt.Errorf("the TPM at %s refused TPM2_Startup: %v: %w", c.dev.spec.raw, rc, keystore.ErrUnavailable)
	}
	return nil
}

func commandCode(cmd []byte) tpm2.TPMCC {
	if len(cmd) < headerSize {
		return 0
	}
	return tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
}

// roundTrip writes cmd and reads one whole response. A failure marks the connection broken.
//
// Once written, a command is given time to finish (the caller's deadline, but at least minCommandTime)
// and cancelling the context does not cut it off: a response thrown away could be the only record of a
// transient object the TPM just loaded, which could then never be flushed. Cancellation is honoured
// before an operation starts and between resends.
func (c *conn) roundTrip(cmd []byte) ([]byte, error) {
	type deadliner interface{ SetDeadline(time.Time) error }
	if dl, ok := c.rw.(deadliner); ok {
		t := time.Now().Add(minCommandTime)
		if d, ok := c.ctx.Deadline(); ok && d.After(t) {
			t = d
		}
		_ = dl.SetDeadline(t) // not every TPM driver can be polled; then the kernel's own timeout applies
	}
	if _, err := c.rw.Write(cmd); err != nil {
		return nil, c.fail(err)
	}
	rsp, err := readResponse(c.rw, c.dev.spec.kind == kindChar)
	if err != nil {
		return nil, c.fail(err)
	}
	return rsp, nil
}

func (c *conn) fail(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("the TPM did not answer in time: %w", err)
	}
	c.broken = c.dev.unavailable(err)
	return c.broken
}

// readResponse reads exactly one TPM response frame: the 10-byte header (tag, size, code), then exactly
// size-10 more bytes. A character device hands a whole response to one large read (older kernels drop
// whatever a short read leaves behind), so for it the first read asks for the maximum; a socket may
// deliver a frame in pieces, so for it the header is read first and then exactly the rest.
func readResponse(r io.Reader, oneRead bool) ([]byte, error) {
	var buf []byte
	if oneRead {
		buf = make([]byte, 4096)
		n, err := r.Read(buf)
		if err != nil && n == 0 {
			return nil, err
		}
		buf = buf[:n]
		if n < headerSize {
			more := make([]byte, headerSize-n)
			if _, err := io.ReadFull(r, more); err != nil {
				return nil, fmt.Errorf("short TPM response header (%d bytes): %w", n, err)
			}
			buf = append(buf, more...)
		}
	} else {
		buf = make([]byte, headerSize)
		if _, err := io.ReadFull(r, buf); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("short TPM response header: %w", err)
			}
			return nil, err
		}
	}
	size := binary.BigEndian.Uint32(buf[2:6])
	if size < headerSize || size > maxResponse {
		return nil, fmt.Errorf("TPM response header announces %d bytes (want %d..%d): not a TPM, or the stream is out of step", size, headerSize, maxResponse)
	}
	if uint32(len(buf)) > size {
		return nil, fmt.Errorf("TPM response is %d bytes but its header announces %d", len(buf), size)
	}
	if rest := int(size) - len(buf); rest > 0 {
		full := make([]byte, size)
		copy(full, buf)
		if _, err := io.ReadFull(r, full[len(buf):]); err != nil {
			return nil, fmt.Errorf("TPM response cut short after %d of %d bytes: %w", len(buf), size, err)
		}
		buf = full
	}
	return buf, nil
}
