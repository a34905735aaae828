package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/custody"

	"github.com/rogpeppe/go-internal/testscript"
	"go.etcd.io/bbolt"
)

// boltput DB BUCKET KEY VALUE: stores KEY=VALUE in BUCKET of the bbolt database DB (made 0600 if new):
// agent state for a backup to carry.
func cmdBoltPut(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 4 {
		ts.Fatalf("usage: boltput DB BUCKET KEY VALUE")
	}
	db, err := bbolt.Open(ts.MkAbs(args[0]), 0o600, &bbolt.Options{Timeout: time.Second})
	ts.Check(err)
	defer db.Close()
	ts.Check(db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(args[1]))
		if err != nil {
			return err
		}
		return b.Put([]byte(args[2]), []byte(args[3]))
	}))
}

// boltget DB BUCKET KEY: prints the value of KEY in BUCKET (stdout), failing when there is none.
func cmdBoltGet(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: boltget DB BUCKET KEY")
	}
	db, err := bbolt.Open(ts.MkAbs(args[0]), 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	ts.Check(err)
	defer db.Close()
	ts.Check(db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte(args[1]))
		if b == nil || b.Get([]byte(args[2])) == nil {
			ts.Fatalf("%s: no %s/%s", args[0], args[1], args[2])
		}
		_, err := ts.Stdout().Write(append(b.Get([]byte(args[2])), '\n'))
		return err
	}))
}

// tamperbackup IN PATH OUT: writes IN to OUT with one byte of the stored file PATH changed (the manifest
// untouched): a damaged or altered backup.
func cmdTamperBackup(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: tamperbackup IN PATH OUT")
	}
	var b backupFile
	ts.Check(json.Unmarshal([]byte(ts.ReadFile(args[0])), &b))
	found := false
	for i := range b.Files {
		if b.Files[i].Path == args[1] && len(b.Files[i].Data) > 0 {
			b.Files[i].Data[len(b.Files[i].Data)/2] ^= 0x01
			found = true
		}
	}
	if !found {
		ts.Fatalf("%s holds no file %q", args[0], args[1])
	}
	out, err := json.Marshal(b)
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[2]), out, 0o600))
}

// validBackup is a backup of a home made in-test (a real key event log and audit log).
func validBackup(t *testing.T) []byte {
	t.Helper()
	f := newAuditHome(t, 12)
	idJSON := filepath.Join(f.home, custody.IdentityFile)
	if err := os.WriteFile(idJSON, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	var b backupFile
	b.Format = backupFormat
	b.Manifest.AgentID = f.id
	b.Manifest.Created = time.Now().UTC()
	for _, p := range []string{custody.IdentityFile, custody.LogFile} {
		data, err := os.ReadFile(filepath.Join(f.home, p))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		b.Manifest.Files = append(b.Manifest.Files, backupEntry{Path: p, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])})
		b.Files = append(b.Files, backupData{Path: p, Data: data})
	}
	out, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestReadBackupRefuses: restore's checks of a backup, each refusal with its reason; nothing is written
// (readBackup writes nothing, runRestore calls it first).
func TestReadBackupRefuses(t *testing.T) {
	good := validBackup(t)
	edit := func(fn func(b *backupFile)) []byte {
		var b backupFile
		if err := json.Unmarshal(good, &b); err != nil {
			t.Fatal(err)
		}
		fn(&b)
		out, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	plant := func(path string) func(b *backupFile) {
		return func(b *backupFile) {
			data := []byte("planted")
			sum := sha256.Sum256(data)
			b.Manifest.Files = append(b.Manifest.Files, backupEntry{Path: path, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])})
			b.Files = append(b.Files, backupData{Path: path, Data: data})
		}
	}
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"not json", []byte("hello"), "is not a Custos backup"},
		{"unknown field", []byte(`{"format":"custos-backup/v1","extra":1}`), `unknown field "extra"`},
		{"other format", edit(func(b *backupFile) { b.Format = "custos-backup/v9" }), `format "custos-backup/v9"`},
		{"bad agent id", edit(func(b *backupFile) { b.Manifest.AgentID = "nobody" }), "manifest agent_id"},
		{"path outside the home", edit(plant("../evil")), `manifest names "../evil", which no backup holds`},
		{"a key file", edit(plant("keys/custos-g0-x.key")), `manifest names "keys/custos-g0-x.key", which no backup holds`},
		{"a TPM blob", edit(plant("tpm/agent-gen0")), `manifest names "tpm/agent-gen0", which no backup holds`},
		{"absolute path", edit(plant("/etc/passwd")), `which no backup holds`},
		{"listed twice", edit(func(b *backupFile) { b.Manifest.Files = append(b.Manifest.Files, b.Manifest.Files[0]) }), "twice"},
		{"file not listed", edit(func(b *backupFile) { b.Manifest.Files = b.Manifest.Files[1:] }), "is not in the manifest"},
		{"file missing", edit(func(b *backupFile) { b.Files = b.Files[1:] }), "is in the manifest but not in the backup"},
		{"changed byte", edit(func(b *backupFile) { b.Files[1].Data[0] ^= 1 }), "kel.jsonl does not match the manifest"},
		{"cut file", edit(func(b *backupFile) { b.Files[1].Data = b.Files[1].Data[:10] }), "kel.jsonl does not match the manifest"},
		{"no key event log", edit(func(b *backupFile) { b.Files, b.Manifest.Files = b.Files[:1], b.Manifest.Files[:1] }), "holds no kel.jsonl"},
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "b.json")
	if err := os.WriteFile(p, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readBackup(p); err != nil {
		t.Fatalf("the unchanged backup: %v", err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(p, tc.in, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := readBackup(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("readBackup: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// FuzzReadBackup: the backup decoder never panics, and what it accepts has only allowed paths whose
// bytes match the manifest.
func FuzzReadBackup(f *testing.F) {
	f.Add([]byte(`{"format":"custos-backup/v1","manifest":{"agent_id":"x","files":[]},"files":[]}`))
	f.Add([]byte(`{}`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, in []byte) {
		p := filepath.Join(dir, "b.json")
		if err := os.WriteFile(p, in, 0o600); err != nil {
			t.Fatal(err)
		}
		b, err := readBackup(p)
		if err != nil {
			return
		}
		for _, d := range b.Files {
			if !backupAllowed(d.Path) {
				t.Fatalf("accepted path %q", d.Path)
			}
		}
	})
}
