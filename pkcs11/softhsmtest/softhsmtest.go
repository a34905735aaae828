// Package softhsmtest gives tests fresh SoftHSM2 tokens, reached through the pkcs11 keystore.
//
// SoftHSM reads SOFTHSM2_CONF when the module is initialised, and a module is initialised once per
// process, so the harness is per test binary: on first use it makes a private token directory and
// softhsm2.conf under the system temp directory, and sets SOFTHSM2_CONF for the whole process (tests of
// the binary must not set SOFTHSM2_CONF themselves). Every call of New or NewToken then initialises a
// fresh token with a unique label (through pkcs11.InitToken, so no PIN is ever on a command line), writes
// its random PINs to 0600 files and returns its keystore URI with pin-source=file:<pin file>. The token
// and its PIN files are deleted when the test ends. A missing SoftHSM skips the test, or fails it under
// CI=true (see test/testenv).
//
// Typical use:
//
//	uri := softhsmtest.NewToken(t)
//	ks, err := pkcs11.Open(ctx, uri, keystore.OpenOptions{})
//
// A child process (a subprocess test, a plugin, agentctl run by a test) sees the same tokens when its
// environment includes Env(t):
//
//	cmd.Env = append(os.Environ(), softhsmtest.Env(t)...)
//
// The token directory of a test binary stays behind (empty) until a later run finds its process gone and
// removes it.
package softhsmtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/pkcs11"
	"github.com/custos-agent/custos/test/testenv"
)

// moduleCandidates are where Debian and others install the SoftHSM2 PKCS#11 module.
var moduleCandidates = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
}

// Token is one fresh SoftHSM token.
type Token struct {
	// URI is the keystore URI: pkcs11:token=<label>?module-path=<module>&pin-source=file:<PINFile>.
	URI string
	// Label and Serial identify the token.
	Label, Serial string
	// ModulePath is the SoftHSM module's absolute path.
	ModulePath string
	// PINFile and SOPINFile hold the user PIN and the security officer PIN (0600).
	PINFile, SOPINFile string
}

// proc is the per-process state: SOFTHSM2_CONF is process-wide, so this is too.
var proc struct {
	once   sync.Once
	err    error
	dir    string // 0700: softhsm2.conf, tokens/, pins/
	conf   string
	tokens string
	pins   string
	module string
	util   string
	mu     sync.Mutex // serialises token creation, so the token-directory check below is exact
}

const dirPrefix = "custos-softhsm-"

func setup(t testing.TB) {
	t.Helper()
	module := testenv.FirstFile(t, "the SoftHSM2 PKCS#11 module", "softhsm2", moduleCandidates...)
	util := testenv.LookTool(t, "softhsm2-util", "softhsm2")
	proc.once.Do(func() {
		sweepStale()
		dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
		if err != nil {
			proc.err = err
			return
		}
		proc.dir, proc.module, proc.util = dir, module, util
		proc.tokens = filepath.Join(dir, "tokens")
		proc.pins = filepath.Join(dir, "pins")
		proc.conf = filepath.Join(dir, "softhsm2.conf")
		for _, d := range []string{proc.tokens, proc.pins} {
			if err := os.Mkdir(d, 0o700); err != nil {
				proc.err = err
				return
			}
		}
		conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", proc.tokens)
		if err := os.WriteFile(proc.conf, []byte(conf), 0o600); err != nil {
			proc.err = err
			return
		}
		proc.err = os.Setenv("SOFTHSM2_CONF", proc.conf)
	})
	if proc.err != nil {
		t.Fatalf("softhsmtest: prepare the SoftHSM token directory: %v", proc.err)
	}
}

// sweepStale removes token directories left by earlier test processes that no longer run.
func sweepStale() {
	entries, err := os.ReadDir(os.TempDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), dirPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
		}
	}
}

// ModulePath returns the SoftHSM module's path (skipping, or failing under CI, when it is missing) and
// makes sure SOFTHSM2_CONF points at this process's token directory.
func ModulePath(t testing.TB) string {
	t.Helper()
	setup(t)
	return proc.module
}

// Env returns the environment variables a child process needs to see this process's tokens.
func Env(t testing.TB) []string {
	t.Helper()
	setup(t)
	return []string{"SOFTHSM2_CONF=" + proc.conf}
}

// NewToken initialises a fresh token and returns its keystore URI.
func NewToken(t testing.TB) string {
	t.Helper()
	return New(t).URI
}

// New initialises a fresh token with a unique label and random PINs, and deletes it when the test ends.
func New(t testing.TB) Token {
	t.Helper()
	setup(t)
	label := "custos-test-" + randomHex(t, 6)
	so, user := []byte(randomHex(t, 8)), []byte(randomHex(t, 8))
	defer keystore.Wipe(so)
	defer keystore.Wipe(user)
	tok := Token{
		Label:      label,
		ModulePath: proc.module,
		PINFile:    filepath.Join(proc.pins, label+".pin"),
		SOPINFile:  filepath.Join(proc.pins, label+".so-pin"),
	}
	for path, pin := range map[string][]byte{tok.PINFile: user, tok.SOPINFile: so} {
		if err := os.WriteFile(path, pin, 0o600); err != nil {
			t.Fatalf("softhsmtest: write PIN file: %v", err)
		}
	}
	t.Cleanup(func() {
		_ = os.Remove(tok.PINFile)
		_ = os.Remove(tok.SOPINFile)
	})

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	proc.mu.Lock()
	before := entryNames(t, proc.tokens)
	serial, err := pkcs11.InitToken(ctx, proc.module, label, so, user)
	after := entryNames(t, proc.tokens)
	proc.mu.Unlock()
	if err != nil {
		t.Fatalf("softhsmtest: initialise token %q: %v", label, err)
	}
	tok.Serial = serial
	// The token's directory is the new entry whose token.object holds its label: another test's token
	// may be deleted (or, in another process, created) while this one is initialised.
	tokenDir := ""
	for name := range after {
		if before[name] {
			continue
		}
		obj, err := os.ReadFile(filepath.Join(proc.tokens, name, "token.object"))
		if err == nil && bytes.Contains(obj, []byte(label)) {
			tokenDir = filepath.Join(proc.tokens, name)
		}
	}
	t.Cleanup(func() { deleteToken(t, tok, tokenDir) })
	if tokenDir == "" {
		t.Fatalf("softhsmtest: token %q did not appear in %s: the SoftHSM module was initialised in this process before softhsmtest set SOFTHSM2_CONF (call softhsmtest before opening any PKCS#11 keystore, and do not set SOFTHSM2_CONF in tests)",
			label, proc.tokens)
	}
	u := &keystore.URI{Scheme: "pkcs11"}
	u.SetPath("token", label)
	u.SetQuery("module-path", proc.module)
	u.SetQuery("pin-source", "file:"+tok.PINFile)
	tok.URI = u.String()
	return tok
}

// deleteToken deletes the token with softhsm2-util. Another test's process that initialises the
// SoftHSM module at the same moment opens every token of the directory and creates a token.lock file in
// each, so the tool's final rmdir can find the directory not empty (seen in CI); the token's objects are
// gone by then, and what is left is removed here.
func deleteToken(t testing.TB, tok Token, dir string) {
	cmd := exec.Command(proc.util, "--delete-token", "--serial", tok.Serial)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+proc.conf)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return
	}
	for i := 0; i < 5 && dir != ""; i++ {
		if rmErr := os.RemoveAll(dir); rmErr == nil {
			if _, statErr := os.Stat(dir); errors.Is(statErr, os.ErrNotExist) {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("softhsmtest: delete token %q (serial %s): %v: %s", tok.Label, tok.Serial, err, out)
}

func entryNames(t testing.TB, dir string) map[string]bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("softhsmtest: read token directory: %v", err)
	}
	names := make(map[string]bool, len(entries))
	for _, e := range entries {
		names[e.Name()] = true
	}
	return names
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
