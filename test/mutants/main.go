// Command mutants applies each security-check mutant listed in test/mutants/*.txt to a scratch copy of the
// tree, runs the tests named for it, and prints a kill table. A mutant that the named tests do not kill is a
// security check that no test guards. Run it with `make mutants` (not part of `make test`).
//
// The list format, one block per mutant, blank line between blocks:
//
//	id: AREA-n
//	check: the check, in words
//	file: path/from/the/repo/root.go
//	find: exact text that occurs exactly once in that file
//	replace: the text that turns the check off
//	test: ./package/path ^(TestA|TestB)$
//
// A mutant that needs more than one change (two layers that each cover the other) repeats find/replace, and
// may name another file before its next find; every change is applied before the tests run.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"
)

type mutant struct {
	ID, Check, File, Pkg, Run string
	Edits                     []edit
	Source                    string // list file and line, for error messages
}

// files are the files the mutant changes, in order, each once.
func (m mutant) files() []string {
	var out []string
	for _, e := range m.Edits {
		if !slices.Contains(out, e.File) {
			out = append(out, e.File)
		}
	}
	return out
}

// edit is one change of a mutant: in File, the text Find (exactly once) becomes Replace.
type edit struct{ File, Find, Replace string }

type result struct {
	m       mutant
	verdict string // killed, SURVIVED, invalid
	detail  string
	took    time.Duration
}

func main() {
	only := flag.String("only", "", "run only the mutants whose id matches this regular expression")
	list := flag.Bool("list", false, "print the mutants and exit")
	timeout := flag.Duration("timeout", 10*time.Minute, "time limit for one mutant's tests")
	dir := flag.String("dir", "test/mutants", "folder of the mutant lists (*.txt)")
	flag.Parse()
	if err := run(*dir, *only, *list, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "mutants:", err)
		os.Exit(2)
	}
}

func run(dir, only string, list bool, timeout time.Duration) error {
	ms, err := load(dir)
	if err != nil {
		return err
	}
	if only != "" {
		re, err := regexp.Compile(only)
		if err != nil {
			return fmt.Errorf("-only: %w", err)
		}
		var keep []mutant
		for _, m := range ms {
			if re.MatchString(m.ID) {
				keep = append(keep, m)
			}
		}
		ms = keep
	}
	if list {
		for _, m := range ms {
			fmt.Printf("%-14s %-40s %s\n", m.ID, strings.Join(m.files(), ","), m.Check)
		}
		return nil
	}
	if len(ms) == 0 {
		return errors.New("no mutants selected")
	}
	scratch, err := copyTree()
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)

	// Every named test must pass on the unmutated tree, or a "kill" means nothing.
	baseline := map[string]string{}
	for _, m := range ms {
		key := m.Pkg + " " + m.Run
		if _, done := baseline[key]; done {
			continue
		}
		out, err := goTest(scratch, m, timeout)
		if err != nil {
			baseline[key] = firstLines(out, 6)
			fmt.Fprintf(os.Stderr, "baseline FAILED for %s -run %q:\n%s\n", m.Pkg, m.Run, baseline[key])
		} else {
			baseline[key] = ""
		}
	}

	var results []result
	for _, m := range ms {
		r := result{m: m}
		start := time.Now()
		if b := baseline[m.Pkg+" "+m.Run]; b != "" {
			r.verdict, r.detail = "invalid", "named tests fail without the mutant"
		} else {
			r.verdict, r.detail = apply(scratch, m, timeout)
		}
		r.took = time.Since(start)
		results = append(results, r)
		fmt.Fprintf(os.Stderr, "%-14s %-8s %s\n", m.ID, r.verdict, r.detail)
	}
	return report(os.Stdout, results)
}

// apply mutates the scratch tree, runs the mutant's tests and restores every file it changed.
func apply(scratch string, m mutant, timeout time.Duration) (verdict, detail string) {
	originals := map[string][]byte{}
	defer func() {
		for path, orig := range originals {
			_ = os.WriteFile(path, orig, 0o600) // the scratch tree is deleted at the end anyway
		}
	}()
	for _, e := range m.Edits {
		path := filepath.Join(scratch, e.File)
		cur, err := os.ReadFile(path)
		if err != nil {
			return "invalid", err.Error()
		}
		if _, saved := originals[path]; !saved {
			originals[path] = cur
		}
		if n := strings.Count(string(cur), e.Find); n != 1 {
			return "invalid", fmt.Sprintf("find text %q occurs %d times in %s (want exactly once)", e.Find, n, e.File)
		}
		if err := os.WriteFile(path, []byte(strings.Replace(string(cur), e.Find, e.Replace, 1)), 0o600); err != nil {
			return "invalid", err.Error()
		}
	}
	out, err := goTest(scratch, m, timeout)
	switch {
	case err == nil:
		return "SURVIVED", "the named tests pass with the check turned off"
	case strings.Contains(out, "[build failed]") || strings.Contains(out, "[setup failed]"):
		return "invalid", "the mutant does not compile: " + firstLines(out, 3)
	default:
		return "killed", failedTests(out)
	}
}

func goTest(root string, m mutant, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "test", "-count=1", "-run", m.Run, m.Pkg)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out) + "\n(timed out)", ctx.Err()
	}
	return string(out), err
}

var failRE = regexp.MustCompile(`(?m)^\s*--- FAIL: (\S+)`)

func failedTests(out string) string {
	var names []string
	for _, g := range failRE.FindAllStringSubmatch(out, 5) {
		names = append(names, g[1])
	}
	if len(names) == 0 {
		return firstLines(out, 2)
	}
	return "failed: " + strings.Join(names, ", ")
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, " | ")
}

func report(w io.Writer, results []result) error {
	killed, survived, invalid := 0, 0, 0
	fmt.Fprintf(w, "\n| mutant | check | file | tests | verdict |\n|---|---|---|---|---|\n")
	for _, r := range results {
		switch r.verdict {
		case "killed":
			killed++
		case "SURVIVED":
			survived++
		default:
			invalid++
		}
		fmt.Fprintf(w, "| %s | %s | %s | `%s %s` | %s |\n", r.m.ID, r.m.Check, strings.Join(r.m.files(), ", "), r.m.Pkg, r.m.Run, r.verdict)
	}
	fmt.Fprintf(w, "\n%d mutants: %d killed, %d survived, %d invalid\n", len(results), killed, survived, invalid)
	if survived+invalid > 0 {
		return fmt.Errorf("%d mutants survived, %d invalid", survived, invalid)
	}
	return nil
}

// load reads every *.txt list in dir.
func load(dir string) ([]mutant, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.txt"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var all []mutant
	seen := map[string]string{}
	for _, f := range files {
		ms, err := parse(f)
		if err != nil {
			return nil, err
		}
		for _, m := range ms {
			if prev, dup := seen[m.ID]; dup {
				return nil, fmt.Errorf("%s: mutant id %q already used at %s", m.Source, m.ID, prev)
			}
			seen[m.ID] = m.Source
			all = append(all, m)
		}
	}
	return all, nil
}

func parse(path string) ([]mutant, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mutant
	var cur *mutant
	finish := func() error {
		if cur == nil {
			return nil
		}
		m := *cur
		cur = nil
		if m.ID == "" || len(m.Edits) == 0 || m.Pkg == "" || m.Run == "" {
			return fmt.Errorf("%s: mutant block needs id, file, find, replace and test (package and -run regex)", m.Source)
		}
		for _, e := range m.Edits {
			if e.File == "" || e.Find == "" {
				return fmt.Errorf("%s: every find needs a file before it", m.Source)
			}
		}
		out = append(out, m)
		return nil
	}
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			if err := finish(); err != nil {
				return nil, err
			}
			continue
		}
		if strings.HasPrefix(strings.TrimSpace(text), "#") {
			continue
		}
		key, val, ok := strings.Cut(text, ":")
		if !ok {
			return nil, fmt.Errorf("%s:%d: want 'key: value', got %q", path, line, text)
		}
		if cur == nil {
			cur = &mutant{Source: fmt.Sprintf("%s:%d", path, line)}
		}
		val = strings.TrimPrefix(val, " ")
		switch strings.TrimSpace(key) {
		case "id":
			cur.ID = strings.TrimSpace(val)
		case "check":
			cur.Check = strings.TrimSpace(val)
		case "file":
			cur.File = strings.TrimSpace(val)
		case "find":
			cur.Edits = append(cur.Edits, edit{File: cur.File, Find: strings.TrimSpace(val)})
		case "replace":
			if len(cur.Edits) == 0 {
				return nil, fmt.Errorf("%s:%d: replace before any find", path, line)
			}
			cur.Edits[len(cur.Edits)-1].Replace = strings.TrimSpace(val)
		case "test":
			pkg, re, ok := strings.Cut(strings.TrimSpace(val), " ")
			if !ok {
				return nil, fmt.Errorf("%s:%d: test wants '<package> <-run regex>'", path, line)
			}
			cur.Pkg, cur.Run = pkg, strings.TrimSpace(re)
		default:
			return nil, fmt.Errorf("%s:%d: unknown key %q (id, check, file, find, replace, test)", path, line, key)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if err := finish(); err != nil {
		return nil, err
	}
	return out, nil
}

// copyTree copies the files git knows (tracked, and untracked but not ignored) into a scratch folder, so that a
// mutant never touches the working tree, even when the run is interrupted.
func copyTree() (string, error) {
	out, err := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		return "", fmt.Errorf("git ls-files: %w", err)
	}
	scratch, err := os.MkdirTemp("", "custos-mutants-")
	if err != nil {
		return "", err
	}
	for _, name := range strings.Split(string(out), "\x00") {
		if name == "" {
			continue
		}
		st, err := os.Lstat(name)
		if err != nil || !st.Mode().IsRegular() {
			continue // deleted in the work tree, or a link
		}
		data, err := os.ReadFile(name)
		if err != nil {
			return "", err
		}
		dst := filepath.Join(scratch, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return "", err
		}
		if err := os.WriteFile(dst, data, st.Mode().Perm()); err != nil {
			return "", err
		}
	}
	return scratch, nil
}
