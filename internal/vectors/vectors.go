// Package vectors reads and writes the negative test vectors: data files, one case each, that say what
// input a verifier is given and which failure code (reason's registry) it must refuse it with. A
// second implementation of the protocol runs the same files (docs/protocol.md, "Negative vectors").
//
// A vector file (<name>.txt) is lines of "key: value":
//
//	# a comment (what was changed, and why it must fail)
//	expect: <code>[: <text the error must contain>]
//	<key>: <value>         context the verifier needs (e.g. now: <unix seconds>, message: hello)
//	<key>-hex: <hex>       bytes, in hex (a key may repeat: the values are concatenated)
//	<key>-lines: <line>    text lines (a key may repeat: each value is one line, newline-terminated)
//	input...               the bytes under test, under one of the three forms (input, input-hex, input-lines)
//
// Tests regenerate the files when CUSTOS_UPDATE_VECTORS=1 is set.
package vectors

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Vector is one case.
type Vector struct {
	Name    string            // file name without .txt
	Comment string            // the "#" lines, joined
	Expect  string            // a registered failure code, or "ok"
	Text    string            // what the error must contain ("" for anything)
	fields  map[string][]byte // decoded values by key (without -hex / -lines)
	order   []string
}

// New starts a vector.
func New(name, comment, expect, text string) *Vector {
	return &Vector{Name: name, Comment: comment, Expect: expect, Text: text, fields: map[string][]byte{}}
}

// Set stores a field as it will be written: plain (one line of text), hex (bytes) or lines (text).
func (v *Vector) Set(key string, value []byte) *Vector {
	if _, ok := v.fields[key]; !ok {
		v.order = append(v.order, key)
	}
	v.fields[key] = value
	return v
}

// Get returns a field's bytes and whether it is present.
func (v *Vector) Get(key string) ([]byte, bool) {
	b, ok := v.fields[key]
	return b, ok
}

// String returns a field as text ("" when absent).
func (v *Vector) String(key string) string { return string(v.fields[key]) }

// Input is the bytes under test.
func (v *Vector) Input() []byte { return v.fields["input"] }

// Update reports whether the tests are asked to regenerate their vectors.
func Update() bool { return os.Getenv("CUSTOS_UPDATE_VECTORS") == "1" }

// Load reads every *.txt vector in dir, sorted by name.
func Load(dir string) ([]*Vector, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.txt"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var out []*Vector
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		v, err := Parse(strings.TrimSuffix(filepath.Base(f), ".txt"), b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no vectors in %s", dir)
	}
	return out, nil
}

// Parse reads one vector file.
func Parse(name string, b []byte) (*Vector, error) {
	v := New(name, "", "", "")
	var comments []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 8<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		if c, ok := strings.CutPrefix(line, "#"); ok {
			comments = append(comments, strings.TrimSpace(c))
			continue
		}
		key, val, ok := strings.Cut(line, ": ")
		if !ok {
			key, val, ok = strings.Cut(line, ":")
			if !ok || val != "" {
				return nil, fmt.Errorf("line %d: want \"key: value\"", n)
			}
		}
		switch {
		case key == "expect":
			v.Expect, v.Text, _ = strings.Cut(val, ": ")
		case strings.HasSuffix(key, "-hex"):
			d, err := hex.DecodeString(val)
			if err != nil {
				return nil, fmt.Errorf("line %d: %s: %v", n, key, err)
			}
			k := strings.TrimSuffix(key, "-hex")
			v.Set(k, append(v.fields[k], d...))
		case strings.HasSuffix(key, "-lines"):
			k := strings.TrimSuffix(key, "-lines")
			v.Set(k, append(append(v.fields[k], val...), '\n'))
		default:
			if _, dup := v.fields[key]; dup {
				return nil, fmt.Errorf("line %d: %s given twice", n, key)
			}
			v.Set(key, []byte(val))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if v.Expect == "" {
		return nil, fmt.Errorf("no expect: line")
	}
	v.Comment = strings.Join(comments, " ")
	return v, nil
}

// Encode writes the vector in the file format: each field as one text line when it is printable and has
// no newline, as lines when it is newline-terminated printable text, and in hex otherwise.
func (v *Vector) Encode() []byte {
	var b bytes.Buffer
	for _, c := range strings.Split(v.Comment, "\n") {
		fmt.Fprintf(&b, "# %s\n", c)
	}
	if v.Text != "" {
		fmt.Fprintf(&b, "expect: %s: %s\n", v.Expect, v.Text)
	} else {
		fmt.Fprintf(&b, "expect: %s\n", v.Expect)
	}
	for _, k := range v.order {
		val := v.fields[k]
		switch {
		case printable(val) && !bytes.Contains(val, []byte("\n")):
			fmt.Fprintf(&b, "%s: %s\n", k, val)
		case len(val) > 0 && val[len(val)-1] == '\n' && printable(bytes.ReplaceAll(val, []byte("\n"), nil)) && !bytes.Contains(val, []byte("\n\n")):
			for _, l := range strings.SplitAfter(string(val[:len(val)-1]), "\n") {
				fmt.Fprintf(&b, "%s-lines: %s\n", k, strings.TrimSuffix(l, "\n"))
			}
		default:
			const w = 64
			h := hex.EncodeToString(val)
			for len(h) > w {
				fmt.Fprintf(&b, "%s-hex: %s\n", k, h[:w])
				h = h[w:]
			}
			fmt.Fprintf(&b, "%s-hex: %s\n", k, h)
		}
	}
	return b.Bytes()
}

// printable: non-empty, and only printable ASCII with no leading or trailing space (so that a line of
// the file gives back the same bytes).
func printable(b []byte) bool {
	if len(b) == 0 || b[0] == ' ' || b[len(b)-1] == ' ' {
		return false
	}
	for _, c := range b {
		if (c < 0x20 || c > 0x7e) && c != '\n' {
			return false
		}
	}
	return true
}

// WriteAll replaces the vectors of dir (every *.txt) with vs.
func WriteAll(dir string, vs []*Vector) error {
	old, _ := filepath.Glob(filepath.Join(dir, "*.txt"))
	for _, f := range old {
		if err := os.Remove(f); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, v := range vs {
		back, err := Parse(v.Name, v.Encode())
		if err != nil {
			return fmt.Errorf("vector %s does not read back: %w", v.Name, err)
		}
		for _, k := range v.order {
			if !bytes.Equal(back.fields[k], v.fields[k]) {
				return fmt.Errorf("vector %s: field %s does not read back", v.Name, k)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, v.Name+".txt"), v.Encode(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Check compares an outcome with the vector: nil for "ok", or the failure code (computed by the caller
// from err) equal to Expect and err's text containing Text.
func (v *Vector) Check(err error, code string) error {
	if v.Expect == "ok" {
		if err != nil {
			return fmt.Errorf("%s: got %v, want success", v.Name, err)
		}
		return nil
	}
	if err == nil {
		return fmt.Errorf("%s: accepted, want %s", v.Name, v.Expect)
	}
	if code != v.Expect || !strings.Contains(err.Error(), v.Text) {
		return fmt.Errorf("%s: got %s (%v), want %s saying %q", v.Name, code, err, v.Expect, v.Text)
	}
	return nil
}

// Run is the one test of a vector directory: with CUSTOS_UPDATE_VECTORS=1 it first regenerates dir with
// write, then runs every vector as a subtest, check giving the outcome's code and error.
func Run(t *testing.T, dir string, write func(t *testing.T), check func(v *Vector) (code string, err error)) {
	t.Helper()
	if Update() {
		write(t)
	}
	vs, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			code, err := check(v)
			if err := v.Check(err, code); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Seed adds to a fuzz corpus the inputs of the vectors in dir that keep selects (nil: every one).
func Seed(f *testing.F, dir string, keep func(v *Vector) bool) {
	f.Helper()
	vs, err := Load(dir)
	if err != nil {
		f.Fatal(err)
	}
	for _, v := range vs {
		if keep == nil || keep(v) {
			f.Add(v.Input())
		}
	}
}
