// Package proddeps_test checks that no production binary links test support: a package of this module
// whose last path element ends in "test" (transports/transporttest, transports/host/hosttest,
// agent/session/sessiontest, keystore/keystoretest, ...) or that lives under test/ is for _test.go files
// only. A production package must therefore not be named *test.
package proddeps_test

import (
	"bytes"
	"fmt"
	"os/exec"
	"path"
	"slices"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/custos-agent/custos"

// binaries are the production binaries: every main package under cmd/ (a main package missing here fails
// TestBinariesListed).
var binaries = []string{"cmd/agentctl", "cmd/custosd", "cmd/transport-libp2p", "cmd/transport-tcp", "cmd/transport-ws"}

// pkg is one package of the build graph.
type pkg struct {
	name    string
	imports []string
}

// load runs go list -deps over the binaries (from the module root) and returns every package they build
// with its direct imports, and the main packages under cmd/.
func load(t *testing.T) (graph map[string]pkg, mains []string) {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is not on PATH: %v", err)
	}
	args := []string{"list", "-deps", "-f", "{{.ImportPath}}\t{{.Name}}\t{{join .Imports \" \"}}", "./cmd/..."}
	cmd := exec.Command(goBin, args...)
	cmd.Dir = "../.."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	graph = map[string]pkg{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 3 {
			t.Fatalf("unexpected go list line %q", line)
		}
		graph[f[0]] = pkg{name: f[1], imports: strings.Fields(f[2])}
		if f[1] == "main" && strings.HasPrefix(f[0], module+"/cmd/") {
			mains = append(mains, strings.TrimPrefix(f[0], module+"/"))
		}
	}
	sort.Strings(mains)
	return graph, mains
}

// testSupport reports whether the package at import path p is test support of this module.
func testSupport(p string) bool {
	rel, ok := strings.CutPrefix(p, module+"/")
	if !ok {
		return false
	}
	return rel == "test" || strings.HasPrefix(rel, "test/") || strings.HasSuffix(path.Base(rel), "test")
}

// testDeps returns, for each test-support package root builds with, the import chain that brings it in
// (breadth first: a shortest one), sorted.
func testDeps(graph map[string]pkg, root string) []string {
	from := map[string]string{root: ""}
	queue := []string{root}
	var found []string
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if testSupport(p) {
			chain := []string{p}
			for q := from[p]; q != ""; q = from[q] {
				chain = append(chain, q)
			}
			slices.Reverse(chain)
			found = append(found, strings.Join(chain, " -> "))
		}
		for _, imp := range graph[p].imports {
			if _, seen := from[imp]; !seen {
				from[imp] = p
				queue = append(queue, imp)
			}
		}
	}
	sort.Strings(found)
	return found
}

func TestNoTestSupportInBinaries(t *testing.T) {
	graph, _ := load(t)
	for _, b := range binaries {
		t.Run(path.Base(b), func(t *testing.T) {
			root := module + "/" + b
			if _, ok := graph[root]; !ok {
				t.Fatalf("%s is not among the packages go list built", root)
			}
			for _, chain := range testDeps(graph, root) {
				t.Errorf("%s links test support: %s\n(move what production needs out of the test package, or the use into a _test.go file)", b, chain)
			}
		})
	}
}

func TestBinariesListed(t *testing.T) {
	_, mains := load(t)
	if !slices.Equal(mains, binaries) {
		t.Errorf("main packages under cmd/: %v; the table here lists %v (add the new binary to binaries)", mains, binaries)
	}
}

// The check finds a test package however deep it is, and only test packages.
func TestTestDepsFinds(t *testing.T) {
	m := func(s string) string { return module + "/" + s }
	graph := map[string]pkg{
		m("cmd/x"):                 {imports: []string{"fmt", m("agent/a"), m("agent/attestation")}},
		m("agent/a"):               {imports: []string{m("transports/host"), "testing"}},
		m("transports/host"):       {imports: []string{m("transports/host/hosttest")}},
		m("agent/attestation"):     {imports: []string{m("test/testenv")}},
		"golang.org/x/foo/footest": {},
	}
	got := testDeps(graph, m("cmd/x"))
	want := []string{
		fmt.Sprintf("%s -> %s -> %s -> %s", m("cmd/x"), m("agent/a"), m("transports/host"), m("transports/host/hosttest")),
		fmt.Sprintf("%s -> %s -> %s", m("cmd/x"), m("agent/attestation"), m("test/testenv")),
	}
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("found %q\nwant  %q", got, want)
	}
	for p, want := range map[string]bool{
		m("agent/session/sessiontest"): true, m("transports/transporttest"): true, m("test/e2e"): true,
		m("agent/session"): false, m("testdata/x"): false, "net/http/httptest": false, m("cmd/custosd"): false,
	} {
		if testSupport(p) != want {
			t.Errorf("testSupport(%s) = %v, want %v", p, !want, want)
		}
	}
}
