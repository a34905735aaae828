package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"go.etcd.io/bbolt"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/atrest"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/custody"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/cmd/internal/clisession"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/atomicfile"
	"github.com/custos-agent/custos/internal/strictjson"
)

// backupFormat names the layout of a backup file (docs/backup.md).
const backupFormat = "custos-backup/v1"

// maxBackupSize bounds a backup file read by restore.
const maxBackupSize = 1 << 30

// backupFile is the whole backup: the manifest and every file's bytes (base64 in JSON).
type backupFile struct {
	Format   string         `json:"format"`
	Manifest backupManifest `json:"manifest"`
	Files    []backupData   `json:"files"`
}

type backupManifest struct {
	AgentID       string          `json:"agent_id"`
	Created       time.Time       `json:"created"`
	CustosVersion string          `json:"custos_version"`
	Files         []backupEntry   `json:"files"`
	Excluded      []backupExclude `json:"excluded"`
}

type backupEntry struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

type backupExclude struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

type backupData struct {
	Path string `json:"path"`
	Data []byte `json:"data"`
}

// auditSegment is the name of an audit log segment (audit/segment.go: 20 digits and .jsonl).
var auditSegment = regexp.MustCompile(`^audit/[0-9]{20}\.jsonl$`)

// backupAllowed reports whether a path (slash-separated, relative to the home) is one a backup holds.
// Restore writes nothing else: a backup file cannot plant keys, sockets or files outside the home.
func backupAllowed(p string) bool {
	switch p {
	case custody.IdentityFile, custody.LogFile, "agent.yaml", "state.db", atrest.File:
		return true
	}
	return auditSegment.MatchString(p)
}

// backupExcluded says why a path of the home is left out of a backup.
func backupExcluded(p string, d fs.DirEntry) string {
	switch {
	case p == custody.KeysDir:
		return "secret: software-keystore private key files (passphrase-encrypted); keep them, or recover, see docs/backup.md"
	case p == custody.TPMDir:
		return "hardware-bound: TPM-wrapped key blobs, usable only with the TPM that made them"
	case p == "transport-keys":
		return "secret: transport private keys; the agent makes new ones when it starts"
	case p == "audit/subject-keys.key":
		return "secret: the interim data key of the audit log's subject keys (ADR 0099); without it the restored audit log's sealed fields read [erased]"
	case p == "work":
		return "transient: per-task working directories"
	case p == api.ControlFile || p == "custody.lock" || p == "audit/LOCK":
		return "transient: a socket or lock file of a running process"
	case d.IsDir():
		return "not agent state"
	default:
		return "not agent state (secret files such as PIN or passphrase files are never backed up)"
	}
}

func backupCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "backup",
		Usage:        "write everything of the agent's home except secrets and hardware-bound key blobs to one file (the agent must be stopped)",
		UsageText:    "agentctl backup --out FILE",
		Description: "Writes FILE (mode 0600, atomically; an existing FILE is refused) with identity.json, kel.jsonl,\n" +
			"agent.yaml, state.db, state.key (state.db's data key, wrapped by the identity's keystore: the backup\n" +
			"restores only where that keystore is) and the audit log segments of --home, and a manifest: the SHA-256 of every file,\n" +
			"the agent ID, the time and the Custos version. Left out, and listed in the manifest: secrets (the\n" +
			"software keystore's key files in keys/, transport keys; PIN and passphrase files are never in the home)\n" +
			"and hardware-bound blobs (tpm/: keys wrapped by this machine's TPM). Stop the agent first (agentctl\n" +
			"status shows whether it runs): a running agent holds state.db and writes the audit log, and a copy\n" +
			"taken under it would not be consistent. The key event log and the audit log are verified before\n" +
			"anything is written. See agentctl restore and docs/backup.md.",
		Flags: []cli.Flag{&cli.StringFlag{Name: "out", Usage: "the backup `FILE` to write (must not exist)", TakesFile: true}},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("backup takes no arguments (got %q): use --out FILE", c.Args().First())
			}
			if err := requireFlags(c, "out"); err != nil {
				return err
			}
			home, err := auditHome(c)
			if err != nil {
				return err
			}
			b, err := makeBackup(c, home)
			if err != nil {
				return err
			}
			data, err := json.Marshal(b)
			if err != nil {
				return err
			}
			out := c.String("out")
			if err := atomicfile.Create(out, data); err != nil {
				if errors.Is(err, fs.ErrExist) {
					return fmt.Errorf("%s exists: a backup never replaces a file; give another --out", out)
				}
				return err
			}
			w := c.App.Writer
			writeOut(w, "backed up %s of %s to %s (%d files)\n", b.Manifest.AgentID, home, out, len(b.Manifest.Files))
			for _, e := range b.Manifest.Files {
				writeOut(w, "  %s  %s\n", e.SHA256, e.Path)
			}
			for _, x := range b.Manifest.Excluded {
				writeOut(w, "  left out %s: %s\n", x.Path, x.Reason)
			}
			return nil
		},
	}
}

// makeBackup reads the home into a backup, refusing a running agent and a home that does not verify.
func makeBackup(c *cli.Context, home string) (*backupFile, error) {
	if _, err := api.ForHome(home).AuditHead(c.Context); !errors.Is(err, control.ErrNoDaemon) {
		return nil, fmt.Errorf("an agent daemon answers on %s: stop it first (a backup of a running agent would not be consistent)", filepath.Join(home, api.ControlFile))
	}
	st, err := custody.VerifyHome(home)
	if err != nil {
		return nil, fmt.Errorf("the key event log of %s does not verify, nothing backed up: %w", home, err)
	}
	kelBytes, err := os.ReadFile(filepath.Join(home, custody.LogFile))
	if err != nil {
		return nil, err
	}
	kel, err := identity.DecodeLog(kelBytes)
	if err != nil {
		return nil, err
	}
	if rep, err := audit.Verify(filepath.Join(home, "audit"), kel); err != nil {
		if rep.WriterActive {
			return nil, fmt.Errorf("the audit log of %s is being written (audit/LOCK is held): stop the agent first", home)
		}
		if !errors.Is(err, os.ErrNotExist) && !rep.Unsealed {
			return nil, fmt.Errorf("the audit log of %s does not verify, nothing backed up (run agentctl audit verify): %w", home, err)
		}
	}
	short, _ := clisession.Version("agentctl")
	b := &backupFile{Format: backupFormat, Manifest: backupManifest{AgentID: st.ID.String(), Created: time.Now().UTC(), CustosVersion: short,
		Files: []backupEntry{}, Excluded: []backupExclude{}}, Files: []backupData{}}
	err = filepath.WalkDir(home, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(home, path)
		if err != nil || rel == "." {
			return err
		}
		p := filepath.ToSlash(rel)
		if p == "audit" && d.IsDir() {
			return nil
		}
		if !backupAllowed(p) || !d.Type().IsRegular() {
			b.Manifest.Excluded = append(b.Manifest.Excluded, backupExclude{Path: p, Reason: backupExcluded(p, d)})
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		var data []byte
		if p == "state.db" {
			data, err = copyBolt(path)
		} else {
			data, err = os.ReadFile(path)
		}
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		b.Manifest.Files = append(b.Manifest.Files, backupEntry{Path: p, Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])})
		b.Files = append(b.Files, backupData{Path: p, Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", home, err)
	}
	return b, nil
}

// copyBolt is a consistent copy of a bbolt database: opened read-only (a shared lock: a running agent's
// exclusive one makes this fail) and written by one read transaction.
func copyBolt(path string) ([]byte, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open %s read-only (is the agent running? stop it first): %w", path, err)
	}
	defer db.Close()
	var buf bytes.Buffer
	if err := db.View(func(tx *bbolt.Tx) error { _, err := tx.WriteTo(&buf); return err }); err != nil {
		return nil, fmt.Errorf("copy %s: %w", path, err)
	}
	return buf.Bytes(), nil
}

func restoreCommand() *cli.Command {
	return &cli.Command{
		OnUsageError: onUsageError,
		Name:         "restore",
		Usage:        "make a new agent home from a backup, verified before anything is written",
		UsageText:    "agentctl --home NEW_HOME restore --in FILE",
		Description: "Checks the manifest and the SHA-256 of every file in FILE before writing anything, refuses a\n" +
			"--home that exists and is not empty, writes the files into a new directory beside it (dirs 0700,\n" +
			"files 0600), checks the key event log (as agentctl log verify) and the audit log (as agentctl audit\n" +
			"verify), and only then moves it into place. The backup holds no key: to sign again, the restored\n" +
			"home needs the keys its identity.json names (agentctl keys lists them), at the same URIs: the same\n" +
			"PKCS#11 token (and its PIN file at the path the URI names); the same TPM and its blob files (not in\n" +
			"the backup: copy <home>/tpm yourself; a new machine's TPM cannot unwrap them); or the software key\n" +
			"files at the paths their file: URIs name. Without them, recover the identity with the offline\n" +
			"recovery key committed at init: agentctl recover --recovery URI (docs/backup.md, docs/tpm.md part 5).",
		Flags: []cli.Flag{&cli.StringFlag{Name: "in", Usage: "the backup `FILE` that agentctl backup wrote", TakesFile: true}},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("restore takes no arguments (got %q): use --in FILE", c.Args().First())
			}
			if err := requireFlags(c, "in"); err != nil {
				return err
			}
			home, err := auditHome(c)
			if err != nil {
				return err
			}
			return runRestore(c, c.String("in"), home)
		},
	}
}

// readBackup reads and checks a backup file: its format, the manifest's paths, and every file's size
// and digest against the manifest.
func readBackup(path string) (*backupFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxBackupSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var b backupFile
	if err := strictjson.Decode(raw, &b, maxBackupSize); err != nil {
		return nil, fmt.Errorf("%s is not a Custos backup (%s): %w", path, backupFormat, err)
	}
	if b.Format != backupFormat {
		return nil, fmt.Errorf("%s: format %q, want %q (made by another version of agentctl?)", path, b.Format, backupFormat)
	}
	if _, err := identity.ParseID(b.Manifest.AgentID); err != nil {
		return nil, fmt.Errorf("%s: manifest agent_id: %w", path, err)
	}
	want := make(map[string]backupEntry, len(b.Manifest.Files))
	for _, e := range b.Manifest.Files {
		if !backupAllowed(e.Path) {
			return nil, fmt.Errorf("%s: manifest names %q, which no backup holds", path, e.Path)
		}
		if _, dup := want[e.Path]; dup {
			return nil, fmt.Errorf("%s: manifest names %q twice", path, e.Path)
		}
		want[e.Path] = e
	}
	seen := make(map[string]bool, len(b.Files))
	for _, d := range b.Files {
		e, ok := want[d.Path]
		if !ok || seen[d.Path] {
			return nil, fmt.Errorf("%s: file %q is not in the manifest (or is there twice)", path, d.Path)
		}
		seen[d.Path] = true
		sum := sha256.Sum256(d.Data)
		if int64(len(d.Data)) != e.Size || hex.EncodeToString(sum[:]) != e.SHA256 {
			return nil, fmt.Errorf("%s: %s does not match the manifest (sha256 %s, %d bytes; manifest: %s, %d bytes): the backup is damaged or was changed; nothing restored",
				path, d.Path, hex.EncodeToString(sum[:]), len(d.Data), e.SHA256, e.Size)
		}
	}
	for p := range want {
		if !seen[p] {
			return nil, fmt.Errorf("%s: %s is in the manifest but not in the backup; nothing restored", path, p)
		}
	}
	for _, p := range []string{custody.IdentityFile, custody.LogFile} {
		if !seen[p] {
			return nil, fmt.Errorf("%s: the backup holds no %s; nothing restored", path, p)
		}
	}
	return &b, nil
}

func runRestore(c *cli.Context, in, home string) error {
	b, err := readBackup(in)
	if err != nil {
		return err
	}
	ents, err := os.ReadDir(home)
	switch {
	case err == nil && len(ents) > 0:
		return fmt.Errorf("%s is not empty: restore makes a new home; give an empty or new --home (nothing restored)", home)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return err
	}
	parent := filepath.Dir(home)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(home)+".restore-")
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			_ = os.RemoveAll(tmp)
		}
	}()
	files := append([]backupData(nil), b.Files...)
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	for _, d := range files {
		dst := filepath.Join(tmp, filepath.FromSlash(d.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		if err := atomicfile.Create(dst, d.Data); err != nil {
			return err
		}
	}
	// The same checks as agentctl log verify and agentctl audit verify, on the restored files.
	st, err := custody.VerifyHome(tmp)
	if err != nil {
		return fmt.Errorf("the restored key event log does not verify, nothing restored: %w", err)
	}
	if st.ID.String() != b.Manifest.AgentID {
		return fmt.Errorf("the restored key event log is of %s, the manifest says %s; nothing restored", st.ID, b.Manifest.AgentID)
	}
	kelBytes, err := os.ReadFile(filepath.Join(tmp, custody.LogFile))
	if err != nil {
		return err
	}
	kel, err := identity.DecodeLog(kelBytes)
	if err != nil {
		return err
	}
	auditNote := "no audit log"
	if _, err := os.Stat(filepath.Join(tmp, "audit")); err == nil {
		rep, err := audit.Verify(filepath.Join(tmp, "audit"), kel)
		switch {
		case err != nil && rep.Unsealed:
			fmt.Fprintf(c.App.ErrWriter, "warning: the restored audit log is not sealed (the agent was killed before the backup): %v\n", err)
			auditNote = fmt.Sprintf("audit log verifies up to its unsealed tail: %d records", rep.Records)
		case err != nil:
			return fmt.Errorf("the restored audit log does not verify, nothing restored: %w", err)
		default:
			auditNote = fmt.Sprintf("audit log verifies: %d records, head seq %d hash %s", rep.Records, rep.LastSeq, rep.Head)
		}
	}
	if err := os.Remove(home); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("replace the empty %s: %w", home, err)
	}
	if err := os.Rename(tmp, home); err != nil {
		return fmt.Errorf("move the restored home into place: %w", err)
	}
	done = true
	if err := atomicfile.SyncDir(parent); err != nil {
		return err
	}
	w := c.App.Writer
	writeOut(w, "restored %s into %s from the backup of %s (%d files)\n", st.ID, home, b.Manifest.Created.Format(time.RFC3339), len(files))
	writeOut(w, "  key event log verifies: %d events, generation %d\n", st.Generation+1, st.Generation)
	writeOut(w, "  %s\n", auditNote)
	writeOut(w, "the backup holds no key: %s\n", strings.ReplaceAll(restoreKeyAdvice, "\n", " "))
	return nil
}

const restoreKeyAdvice = "to sign, this home needs the keystore identity.json names (agentctl keys): the same token, the same TPM,\n" +
	"or the software key files at the paths its file: URIs name; otherwise run agentctl recover with the offline recovery key (docs/backup.md)."
