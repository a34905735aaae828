package pkgtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// instructions are the Dockerfile's instructions, continuation lines joined, comments dropped.
func instructions(t *testing.T, path string) [][2]string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out [][2]string
	var cur strings.Builder
	for _, line := range strings.Split(string(raw), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		kw, rest, _ := strings.Cut(cur.String(), " ")
		out = append(out, [2]string{strings.ToUpper(kw), strings.TrimSpace(rest)})
		cur.Reset()
	}
	return out
}

// commands are the main packages under cmd/ (./cmd/NAME).
func commands(t *testing.T, src string) []string {
	t.Helper()
	mains, err := filepath.Glob(filepath.Join(src, "cmd", "*", "main.go"))
	if err != nil || len(mains) == 0 {
		t.Fatalf("no cmd/*/main.go: %v", err)
	}
	var out []string
	for _, m := range mains {
		out = append(out, "./cmd/"+filepath.Base(filepath.Dir(m)))
	}
	return out
}

// TestDockerfile checks what can be checked without a Docker daemon (none is required in CI): a build stage
// and a final stage, the final stage running as a non-root uid with an exec-form entry point, every command
// of cmd/ built (as packaging/build.sh builds them) and copied, the plugins to /usr/lib/custos. hadolint
// runs when it is installed.
func TestDockerfile(t *testing.T) {
	src := root(t)
	ins := instructions(t, filepath.Join(src, "Dockerfile"))
	var froms []string
	lastStage := 0
	for i, in := range ins {
		if in[0] == "FROM" {
			froms = append(froms, in[1])
			lastStage = i
		}
	}
	if len(froms) < 2 || !regexp.MustCompile(`(?i) AS build$`).MatchString(froms[0]) {
		t.Fatalf("FROM lines %q: want a build stage (AS build) and a runtime stage", froms)
	}
	if !strings.Contains(froms[len(froms)-1], "slim") && !strings.Contains(froms[len(froms)-1], "distroless") {
		t.Errorf("runtime stage FROM %q: want Debian slim or distroless", froms[len(froms)-1])
	}
	var user, entry, build string
	var copies []string
	for i, in := range ins {
		switch {
		case in[0] == "RUN" && strings.Contains(in[1], "go build"):
			build = in[1]
		case i > lastStage && in[0] == "USER":
			user = in[1]
		case i > lastStage && in[0] == "ENTRYPOINT":
			entry = in[1]
		case i > lastStage && in[0] == "COPY":
			copies = append(copies, in[1])
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("final USER %q: want a numeric non-root uid (Kubernetes' runAsNonRoot checks numbers)", user)
	}
	if !strings.HasPrefix(entry, "[") {
		t.Errorf("ENTRYPOINT %q: want the exec form (signals reach the process, not a shell)", entry)
	}
	script, err := os.ReadFile(filepath.Join(src, "packaging", "build.sh"))
	if err != nil {
		t.Fatal(err)
	}
	copied := strings.Join(copies, "\n")
	for _, c := range commands(t, src) {
		if !regexp.MustCompile(regexp.QuoteMeta(c) + `\b`).MatchString(build) {
			t.Errorf("the Dockerfile's go build does not build %s", c)
		}
		if !regexp.MustCompile(regexp.QuoteMeta(c) + `\b`).MatchString(string(script)) {
			t.Errorf("packaging/build.sh does not build %s", c)
		}
		bin := filepath.Base(c)
		if !strings.Contains(copied, "/out/bin/"+bin+" ") {
			t.Errorf("the runtime stage does not copy %s", bin)
		}
		if strings.HasPrefix(bin, "transport-") && !regexp.MustCompile(`/out/bin/`+bin+` .*/usr/lib/custos/`).MatchString(copied) {
			t.Errorf("the plugin %s is not copied to /usr/lib/custos/", bin)
		}
	}
	if p, err := exec.LookPath("hadolint"); err == nil {
		out, err := exec.Command(p, filepath.Join(src, "Dockerfile")).CombinedOutput()
		if err != nil {
			t.Errorf("hadolint Dockerfile: %v\n%s", err, out)
		}
	} else {
		t.Log("hadolint is not installed (no Debian package for it): not run")
	}
}
