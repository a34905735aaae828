package main

import (
	"encoding/json"
	"os"
	"time"

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
