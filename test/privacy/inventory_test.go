// Package privacy_test checks that docs/privacy.md, the data inventory, lists every store and every audit
// field the code writes: a new state.db bucket, audit record field, audit event type or audit details key
// that the inventory does not name (in backticks) fails here.
package privacy_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

const root = "../.."

// sources returns the non-test Go files under the given directories of the module (testdata excluded).
func sources(t *testing.T, dirs ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, d := range dirs {
		err := filepath.WalkDir(filepath.Join(root, d), func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if e.IsDir() && (e.Name() == "testdata" || strings.HasPrefix(e.Name(), ".")) {
				return filepath.SkipDir
			}
			if e.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[p] = string(b)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(out) == 0 {
		t.Fatalf("no Go sources under %v: is the test running in test/privacy?", dirs)
	}
	return out
}

// inventory returns the backticked names of docs/privacy.md.
func inventory(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "docs", "privacy.md"))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile("`([^`\n]+)`").FindAllStringSubmatch(string(b), -1) {
		names[m[1]] = true
	}
	return names
}

func collect(srcs map[string]string, re *regexp.Regexp) map[string][]string {
	found := map[string][]string{}
	for p, s := range srcs {
		for _, m := range re.FindAllStringSubmatch(s, -1) {
			found[m[1]] = append(found[m[1]], p)
		}
	}
	return found
}

func missing(t *testing.T, what string, found map[string][]string, inv map[string]bool, atLeast int) {
	t.Helper()
	if len(found) < atLeast {
		t.Fatalf("found only %d %s in the sources (want at least %d): the scan is broken", len(found), what, atLeast)
	}
	var names []string
	for n := range found {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !inv[n] {
			t.Errorf("%s %q (in %s) is not in docs/privacy.md: add it to the inventory (what personal data, why, retention, erasure)",
				what, n, strings.Join(found[n], ", "))
		}
	}
}

var (
	// bucketRe: a bbolt bucket name declared as bucketX = []byte("name").
	bucketRe = regexp.MustCompile(`(?m)\bbucket\w*\s*=\s*\[\]byte\("([^"]+)"\)`)
	// eventRe: an audit event type constant.
	eventRe = regexp.MustCompile(`EventType\s*=\s*"([a-z_.]+)"`)
	// mapRe: a map[string]any literal (audit details are written as these); keyRe its keys.
	mapRe = regexp.MustCompile(`(?s)map\[string\]any\{(.*?)\}`)
	keyRe = regexp.MustCompile(`"([a-z_0-9]+)"\s*:`)
	// setRe: a details key set by assignment (details["key"] = ...).
	setRe = regexp.MustCompile(`details\["([a-z_0-9]+)"\]\s*=`)
	// wireRe: the JSON tags of the audit record's wire struct.
	wireRe = regexp.MustCompile("(?s)type wire struct \\{(.*?)\n\\}")
	tagRe  = regexp.MustCompile("json:\"([a-z_]+)")
)

func TestInventoryListsEveryBucket(t *testing.T) {
	inv := inventory(t)
	srcs := sources(t, "agent", "audit", "cmd", "transports", "keystore", "identity", "internal")
	found := collect(srcs, bucketRe)
	// Every CreateBucket call must be in a file that declares its bucket names as above, so that a bucket
	// named another way is not missed.
	for p, s := range srcs {
		if strings.Contains(s, "CreateBucket") && !bucketRe.MatchString(s) {
			t.Errorf("%s creates a bbolt bucket whose name is not declared as bucketX = []byte(\"name\"): declare it so, and list it in docs/privacy.md", p)
		}
	}
	missing(t, "state.db bucket", found, inv, 10)
}

func TestInventoryListsEveryAuditField(t *testing.T) {
	inv := inventory(t)
	rec, err := os.ReadFile(filepath.Join(root, "audit", "record.go"))
	if err != nil {
		t.Fatal(err)
	}
	w := wireRe.FindStringSubmatch(string(rec))
	if w == nil {
		t.Fatal("audit/record.go has no wire struct: update this test with the record's new form")
	}
	fields := map[string][]string{}
	for _, m := range tagRe.FindAllStringSubmatch(w[1], -1) {
		fields[m[1]] = []string{"audit/record.go"}
	}
	missing(t, "audit record field", fields, inv, 10)

	srcs := sources(t, "agent", "audit", "cmd", "transports")
	missing(t, "audit event type", collect(srcs, eventRe), inv, 30)

	keys := map[string][]string{}
	for p, s := range srcs {
		for _, m := range mapRe.FindAllStringSubmatch(s, -1) {
			for _, k := range keyRe.FindAllStringSubmatch(m[1], -1) {
				keys[k[1]] = append(keys[k[1]], p)
			}
		}
		for _, m := range setRe.FindAllStringSubmatch(s, -1) {
			keys[m[1]] = append(keys[m[1]], p)
		}
	}
	missing(t, "audit details key", keys, inv, 20)
}
