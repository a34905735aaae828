package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readmeBlock is the bash block after the marker line in README.md.
func readmeBlock(t *testing.T, marker string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(raw), marker)
	if !ok {
		t.Fatalf("README.md has no line %q: the quick start moved; keep the marker before its code block", marker)
	}
	_, after, ok = strings.Cut(after, "```bash\n")
	if !ok {
		t.Fatal("README.md: no ```bash block after the quick start marker")
	}
	block, _, ok := strings.Cut(after, "```\n")
	if !ok {
		t.Fatal("README.md: the quick start block is not closed")
	}
	return block
}

// TestReadmeQuickstart runs README.md's "Running an agent" block as written, with bash, in a fresh $HOME
// and the built binaries first in $PATH (as after installing them): two agents, config init, a grant, a
// connection, a task whose result must be the SHA-256 of "hello", a reload and a drain. It fails on the
// README as it was (no grant: no_grant; dialled 7401 while the example listened on 7400).
func TestReadmeQuickstart(t *testing.T) {
	block := readmeBlock(t, "<!-- quickstart: run by test/e2e TestReadmeQuickstart")
	for _, port := range []string{"7400", "7401", "9464", "9465"} {
		l, err := net.Listen("tcp", "127.0.0.1:"+port)
		if err != nil {
			t.Fatalf("the README's quick start uses 127.0.0.1:%s, which is busy here: %v", port, err)
		}
		l.Close()
	}
	home, err := os.MkdirTemp("", "rq") // short: the control socket path must stay under 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", block)
	cmd.Dir = home
	cmd.Env = []string{
		"HOME=" + home, "PATH=" + bins.dir + ":/usr/bin:/bin",
		"CUSTOS_SOFTWARE_WORK_FACTOR=10", // a cheap scrypt (the default takes a second per key load)
		"GORACE=atexit_sleep_ms=0",
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	logs := func() string {
		var b strings.Builder
		for _, f := range []string{"custos-a.log", "custos-b.log"} {
			raw, _ := os.ReadFile(filepath.Join(home, f))
			fmt.Fprintf(&b, "--- %s:\n%s\n", f, raw)
		}
		return b.String()
	}
	if runErr != nil {
		t.Fatalf("the README block failed: %v\nstdout:\n%s\nstderr:\n%s\n%s", runErr, stdout.String(), stderr.String(), logs())
	}
	// The task's JSON: done, ok, output the hex SHA-256 of "hello".
	out := stdout.String()
	start := strings.Index(out, "{")
	if start < 0 {
		t.Fatalf("no JSON task result in the output:\n%s", out)
	}
	var res struct {
		State     string `json:"state"`
		Submitted string `json:"submitted"`
		Result    struct {
			Status   string `json:"status"`
			Output   string `json:"output"`
			Started  string `json:"started"`   // RFC 3339 like every other time (issue 18, defect 10)
			SignedAt string `json:"signed_at"` // (they were unix seconds)
		} `json:"result"`
	}
	if err := json.NewDecoder(strings.NewReader(out[start:])).Decode(&res); err != nil {
		t.Fatalf("task result: %v\n%s", err, out)
	}
	for _, ts := range []string{res.Submitted, res.Result.Started, res.Result.SignedAt} {
		if _, err := time.Parse(time.RFC3339, ts); err != nil {
			t.Errorf("a time in the task's JSON is not RFC 3339: %v", err)
		}
	}
	sum := sha256.Sum256([]byte("hello"))
	want := hex.EncodeToString(sum[:])
	got, _ := base64.RawURLEncoding.DecodeString(res.Result.Output)
	if res.State != "done" || res.Result.Status != "ok" || string(got) != want {
		t.Fatalf("task result: state %q status %q output %q, want done ok %s\n%s\n%s", res.State, res.Result.Status, got, want, out, logs())
	}
	// Both daemons drained and exited 0: wait returned their status, and bash -e would have failed otherwise.
}

// TestDemoPrintsPastableCommands (issue 18, defect 10): the "$ ..." lines make demo prints are shell
// words quoted so that pasting one runs the same command (a keystore URI holds ; ? & and spaces).
func TestDemoPrintsPastableCommands(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(root, "test", "demo.sh"))
	if err != nil {
		t.Fatal(err)
	}
	var def string
	for _, l := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(l, "run() {") {
			def = l
		}
	}
	if def == "" {
		t.Fatal("test/demo.sh has no one-line run() { ... } function")
	}
	arg := "pkcs11:token=custos demo;object=x?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/tmp/a b"
	script := def + "\nrun printf '%s\\n' \"$1\" 2>shown >/dev/null\n" +
		"line=$(sed -e 's/\\x1b\\[[0-9]*m//g' -e 's/^\\$ //' shown)\neval \"$line\"\n"
	cmd := exec.Command("bash", "-c", script, "bash", arg)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pasting the printed line failed: %v\n%s", err, out)
	}
	if got := strings.TrimSuffix(string(out), "\n"); got != arg {
		t.Fatalf("the printed command, pasted, gives %q, want %q", got, arg)
	}
}
