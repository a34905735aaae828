// Package pkgtest checks what Custos ships (ADR 0088). TestPackageInstallsAndRuns builds the Debian package
// (packaging/build.sh, what `make package` runs), unpacks it into a throw-away root and runs the installed
// agentctl from there; it is not part of `make test` (the first build of the package compiles every binary
// with -trimpath and fetches nfpm: minutes on a cold cache): `make package-test` runs it
// (CUSTOS_PACKAGE_TEST=1). TestDockerfile checks the Dockerfile without a Docker daemon and runs in
// `make test`.
package pkgtest

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/test/testenv"
)

func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "packaging", "build.sh")); err != nil {
		t.Fatalf("packaging/build.sh not found above the test: %v", err)
	}
	return dir
}

func run(t *testing.T, env []string, name string, args ...string) (string, string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, o.String(), e.String())
	}
	return o.String(), e.String()
}

// TestPackageInstallsAndRuns: the .deb holds what ADR 0088 lists, with the modes the daemon requires;
// unpacked into an empty root, agentctl --version names the build, agentctl init --software makes an
// identity in a temporary home, agentctl run finds the daemon beside it, and the example configuration
// pins the digests of exactly the packaged plugins at their installed paths.
func TestPackageInstallsAndRuns(t *testing.T) {
	if os.Getenv("CUSTOS_PACKAGE_TEST") != "1" {
		t.Skip("builds the .deb (minutes on a cold build cache): make package-test runs it (CUSTOS_PACKAGE_TEST=1)")
	}
	dpkgDeb := testenv.LookTool(t, "dpkg-deb", "dpkg")
	src := root(t)
	out := t.TempDir()
	const version = "1.2.3+test"
	goTool, err := exec.LookPath("go") // go test puts its own go first on PATH
	if err != nil {
		t.Fatalf("the go command is not on PATH: %v", err)
	}
	stdout, _ := run(t, []string{"OUT=" + out, "PKG_VERSION=" + version, "GO=" + goTool}, filepath.Join(src, "packaging", "build.sh"))
	debs, _ := filepath.Glob(filepath.Join(out, "*.deb"))
	if len(debs) != 1 {
		t.Fatalf("build.sh made %v in %s, want one .deb (it printed %q)", debs, out, stdout)
	}
	deb := debs[0]

	info, _ := run(t, nil, dpkgDeb, "--field", deb, "Package", "Version", "Architecture", "Depends")
	for _, want := range []string{"Package: custos", "Version: " + version, "Architecture: " + runtime.GOARCH, "Depends: libc6"} {
		if !strings.Contains(info, want) {
			t.Errorf("control fields lack %q:\n%s", want, info)
		}
	}
	// Every file, its mode and owner as dpkg will install them.
	listing, _ := run(t, nil, dpkgDeb, "--contents", deb)
	modes := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(listing), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		if f[1] != "root/root" {
			t.Errorf("%s is owned by %s, want root/root", f[5], f[1])
		}
		modes[strings.TrimPrefix(f[5], ".")] = f[0]
	}
	for path, mode := range map[string]string{
		"/usr/bin/agentctl":                               "-rwxr-xr-x",
		"/usr/bin/custosd":                                "-rwxr-xr-x",
		"/usr/lib/custos/transport-tcp":                   "-rwxr-xr-x",
		"/usr/lib/custos/transport-ws":                    "-rwxr-xr-x",
		"/usr/lib/custos/transport-libp2p":                "-rwxr-xr-x",
		"/usr/lib/systemd/system/custos.service":          "-rw-r--r--",
		"/usr/lib/sysusers.d/custos.conf":                 "-rw-r--r--",
		"/usr/share/custos/agent.example.yaml":            "-rw-r--r--",
		"/usr/share/man/man1/agentctl.1.gz":               "-rw-r--r--",
		"/usr/share/bash-completion/completions/agentctl": "-rw-r--r--",
		"/usr/share/doc/custos/README.md":                 "-rw-r--r--",
	} {
		if got := modes[path]; got != mode {
			t.Errorf("%s: mode %q in the package, want %q", path, got, mode)
		}
	}

	// The throw-away root: dpkg --root would run the maintainer scripts as root inside it, so unpack
	// instead (dpkg-deb -x, what dpkg --unpack does with the files) and check the scripts' syntax.
	rootDir := filepath.Join(out, "root")
	run(t, nil, dpkgDeb, "-x", deb, rootDir)
	ctrl := filepath.Join(out, "control")
	run(t, nil, dpkgDeb, "-e", deb, ctrl)
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		run(t, nil, "sh", "-n", filepath.Join(ctrl, s))
	}
	same := func(inPkg, inTree string) {
		a, err := os.ReadFile(filepath.Join(rootDir, inPkg))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(src, inTree))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s in the package differs from %s", inPkg, inTree)
		}
	}
	same("/usr/lib/systemd/system/custos.service", "configs/custos.service")
	same("/usr/lib/sysusers.d/custos.conf", "configs/custos-transport.sysusers.conf")
	gz, err := os.Open(filepath.Join(rootDir, "usr/share/man/man1/agentctl.1.gz"))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(gz)
	if err != nil {
		t.Fatal(err)
	}
	man, err := io.ReadAll(zr)
	_ = gz.Close()
	wantMan, _ := os.ReadFile(filepath.Join(src, "docs/agentctl.1"))
	if err != nil || !bytes.Equal(man, wantMan) {
		t.Errorf("the packaged man page is not docs/agentctl.1 (%v)", err)
	}

	// The installed agentctl, run from the root with a temporary home.
	agentctl := filepath.Join(rootDir, "usr/bin/agentctl")
	home := filepath.Join(t.TempDir(), "home")
	env := []string{"CUSTOS_HOME=" + home, "CUSTOS_SOFTWARE_WORK_FACTOR=10", "GORACE=atexit_sleep_ms=0"}
	ver, _ := run(t, env, agentctl, "--version")
	if !regexp.MustCompile(`^agentctl version \S+ commit ([0-9a-f]{40}(\+dirty)?|unknown) go1\.\S+ linux/`).MatchString(ver) {
		t.Errorf("agentctl --version = %q, want the version, the commit the package was built from and the Go version", ver)
	}
	// The go command stamps the commit in a clone; it does not recognise a linked worktree (git worktree
	// add), where the commit stays "unknown".
	gitDir, err1 := exec.Command("git", "-C", src, "rev-parse", "--absolute-git-dir").Output()
	common, err2 := exec.Command("git", "-C", src, "rev-parse", "--path-format=absolute", "--git-common-dir").Output()
	head, err3 := exec.Command("git", "-C", src, "rev-parse", "HEAD").Output()
	switch {
	case err1 != nil || err2 != nil || err3 != nil:
		t.Logf("not a git checkout (%v %v %v): the commit is not checked", err1, err2, err3)
	case !bytes.Equal(gitDir, common):
		t.Logf("a linked git worktree: the go command does not stamp the commit (agentctl --version: %q)", ver)
	case !strings.Contains(ver, strings.TrimSpace(string(head))):
		t.Errorf("agentctl --version = %q, does not name the commit %s", ver, head)
	}
	pass := filepath.Join(out, "passphrase")
	if err := os.WriteFile(pass, []byte("correct horse battery staple\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, env, agentctl, "init", "--software", "--passphrase-file", pass)
	id, _ := run(t, env, agentctl, "id", "-q")
	if !regexp.MustCompile(`^ed25519:[A-Za-z0-9_-]{43}\n$`).MatchString(id) {
		t.Errorf("agentctl id -q after init = %q", id)
	}
	for _, f := range []string{"identity.json", "kel.jsonl"} {
		if _, err := os.Stat(filepath.Join(home, f)); err != nil {
			t.Errorf("init made no %s in CUSTOS_HOME: %v", f, err)
		}
	}
	// agentctl run executes the custosd beside it: its help answers.
	help, _ := run(t, env, agentctl, "run", "--help")
	if !strings.Contains(help, "custosd") && !strings.Contains(help, "--config") {
		t.Errorf("agentctl run --help did not reach the packaged daemon:\n%s", help)
	}

	// The example configuration loads, and pins each packaged plugin's digest at its installed path.
	raw, err := os.ReadFile(filepath.Join(rootDir, "usr/share/custos/agent.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.ParseConfig(raw)
	if err != nil {
		t.Fatalf("the packaged example configuration does not load: %v\n%s", err, raw)
	}
	if len(cfg.Transports) != 3 {
		t.Errorf("example configuration has %d transports, want tcp, ws and libp2p", len(cfg.Transports))
	}
	for _, tr := range cfg.Transports {
		if want := "/usr/lib/custos/transport-" + tr.Name; tr.Plugin != want {
			t.Errorf("transport %s: plugin %s, want %s", tr.Name, tr.Plugin, want)
		}
		bin, err := os.ReadFile(filepath.Join(rootDir, tr.Plugin))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(bin); tr.SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("transport %s: the example pins %s, the packaged plugin is %x", tr.Name, tr.SHA256, sum)
		}
	}
}
