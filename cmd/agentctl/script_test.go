package main

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/custos-agent/custos/pkcs11/softhsmtest"
	"github.com/custos-agent/custos/test/testenv"
	"github.com/custos-agent/custos/tpm/swtpmtest"
)

// TestMain registers agentctl with testscript: "exec agentctl ..." in a script runs run() in a copy of
// this test binary, with the script's environment.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"agentctl": func() { os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr)) },
	})
}

// TestScripts runs testdata/script/*.txtar. Scripts named softhsm_* get a fresh SoftHSM token:
// $TOKEN_URI (keystore URI with module-path and pin-source), $TOKEN_LABEL, $TOKEN_PIN_FILE,
// $SOFTHSM_MODULE. Scripts named swtpm_* get a private swtpm: $TPM_DEVICE (unix:///...), and the
// command tpmclear (TPM2_Clear: every key wrapped by the TPM is lost). Every script gets $CUSTOS_HOME=$WORK/home and a cheap scrypt work factor.
func TestScripts(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil && testenv.InCI() {
		t.Fatal("openssl is missing and CI=true requires it: install the Debian package openssl")
	}
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		Setup: func(env *testscript.Env) error {
			env.Setenv("CUSTOS_HOME", filepath.Join(env.WorkDir, "home"))
			env.Setenv(envWorkFactor, "10")
			// A race-enabled binary sleeps a second at exit by default (to catch late reports); every
			// agentctl in a script is one, so do not.
			env.Setenv("GORACE", "atexit_sleep_ms=0")
			tb, ok := env.T().(testing.TB)
			if !ok {
				return fmt.Errorf("testscript.T is not a testing.TB")
			}
			if strings.Contains(tb.Name(), "softhsm") {
				tok := softhsmtest.New(tb) // skips (fails under CI=true) without SoftHSM
				env.Setenv("TOKEN_URI", tok.URI)
				env.Setenv("TOKEN_LABEL", tok.Label)
				env.Setenv("TOKEN_PIN_FILE", tok.PINFile)
				env.Setenv("SOFTHSM_MODULE", tok.ModulePath)
				for _, kv := range softhsmtest.Env(tb) {
					k, v, _ := strings.Cut(kv, "=")
					env.Setenv(k, v)
				}
			}
			if strings.Contains(tb.Name(), "swtpm") {
				sw := swtpmtest.Start(tb) // skips (fails under CI=true) without swtpm
				env.Setenv("TPM_DEVICE", sw.Device())
				env.Values[swtpmKey{}] = sw
			}
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"digest":       cmdDigest,
			"corruptkeys":  cmdCorruptKeys,
			"jsonget":      cmdJSONGet,
			"envfile":      cmdEnvFile,
			"halve":        cmdHalve,
			"jsonset":      cmdJSONSet,
			"tpmclear":     cmdTPMClear,
			"boltput":      cmdBoltPut,
			"boltget":      cmdBoltGet,
			"tamperbackup": cmdTamperBackup,
		},
	})
}

// digest DIR OUT: writes a digest of every path, mode and content under DIR to OUT, so that a script
// can show a refused command left the state directory exactly as it was (cmp before after).
func cmdDigest(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: digest DIR OUTFILE")
	}
	root := ts.MkAbs(args[0])
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) && p == root {
				lines = append(lines, "(absent)")
				return nil
			}
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		line := fmt.Sprintf("%s %v", rel, fi.Mode())
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		lines = append(lines, line)
		return nil
	})
	ts.Check(err)
	sort.Strings(lines)
	ts.Check(os.WriteFile(ts.MkAbs(args[1]), []byte(strings.Join(lines, "\n")+"\n"), 0o600))
}

// corruptkeys DIR: truncates every *.key file in DIR to half its size.
func cmdCorruptKeys(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: corruptkeys DIR")
	}
	matches, err := filepath.Glob(filepath.Join(ts.MkAbs(args[0]), "*.key"))
	ts.Check(err)
	if len(matches) == 0 {
		ts.Fatalf("no *.key files in %s", args[0])
	}
	for _, m := range matches {
		b, err := os.ReadFile(m)
		ts.Check(err)
		ts.Check(os.WriteFile(m, b[:len(b)/2], 0o600))
	}
}

// jsonget FILE FIELD OUT: writes the string value of a top-level JSON field to OUT.
func cmdJSONGet(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: jsonget FILE FIELD OUTFILE")
	}
	var m map[string]any
	ts.Check(json.Unmarshal([]byte(ts.ReadFile(args[0])), &m))
	v, ok := m[args[1]]
	if !ok {
		ts.Fatalf("%s has no field %q", args[0], args[1])
	}
	s, ok := v.(string)
	if !ok {
		s = fmt.Sprint(v)
	}
	ts.Check(os.WriteFile(ts.MkAbs(args[2]), []byte(s), 0o600))
}

// jsonset FILE PATH VALUE OUT: writes FILE to OUT with the field at the dotted PATH (objects only) set to
// the JSON value VALUE (an altered copy of a file).
func cmdJSONSet(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 4 {
		ts.Fatalf("usage: jsonset FILE PATH VALUE OUTFILE")
	}
	var m map[string]any
	ts.Check(json.Unmarshal([]byte(ts.ReadFile(args[0])), &m))
	var val any
	ts.Check(json.Unmarshal([]byte(args[2]), &val))
	keys := strings.Split(args[1], ".")
	obj := m
	for _, k := range keys[:len(keys)-1] {
		next, ok := obj[k].(map[string]any)
		if !ok {
			ts.Fatalf("%s: %q is not an object", args[0], k)
		}
		obj = next
	}
	if _, ok := obj[keys[len(keys)-1]]; !ok {
		ts.Fatalf("%s has no field %q", args[0], args[1])
	}
	obj[keys[len(keys)-1]] = val
	b, err := json.Marshal(m)
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[3]), b, 0o600))
}

// envfile NAME FILE: sets the environment variable NAME to the content of FILE (trailing newline dropped).
func cmdEnvFile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: envfile NAME FILE")
	}
	ts.Setenv(args[0], strings.TrimSuffix(ts.ReadFile(args[1]), "\n"))
}

// halve FILE: truncates FILE to half its size (a torn or damaged file).
func cmdHalve(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: halve FILE")
	}
	b, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[0]), b[:len(b)/2], 0o600))
}

type swtpmKey struct{}

// tpmclear: clears the script's swtpm (TPM2_Clear), as an administrator clearing the TPM would.
func cmdTPMClear(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: tpmclear")
	}
	sw, ok := ts.Value(swtpmKey{}).(*swtpmtest.TPM)
	if !ok {
		ts.Fatalf("tpmclear: this script has no swtpm (name it swtpm_*)")
	}
	sw.Clear()
}
