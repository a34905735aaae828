package keystore

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadSecretFileHardening (issue 20.9): a secret file named by a relative path is refused (it would
// depend on the directory the agent happens to run in); one larger than MaxSecretSize is refused (it is
// not a PIN or passphrase: a wrong path such as a log or a device must not be read without bound); one
// that group or others may read is read, with a warning naming the file and its mode.
func TestReadSecretFileHardening(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ok := write("ok", "1234\n", 0o600)
	atMax := write("max", strings.Repeat("x", MaxSecretSize), 0o600)
	tooBig := write("big", strings.Repeat("x", MaxSecretSize+1), 0o600)
	loose := write("loose", "5678\n", 0o644)
	groupOnly := write("group", "9012\n", 0o640)
	t.Chdir(dir)

	for _, tc := range []struct {
		name, source string
		want         string // the secret, or "" for a refusal
		words        []string
		warn         bool
	}{
		{"absolute 0600", "file:" + ok, "1234", nil, false},
		{"absolute, three slashes", "file://" + ok, "1234", nil, false},
		{"exactly the limit", "file:" + atMax, strings.Repeat("x", MaxSecretSize), nil, false},
		{"relative", "file:ok", "", []string{`secret file "ok" is a relative path`, "file:/absolute/path"}, false},
		{"relative with dot", "file:./ok", "", []string{"relative path"}, false},
		{"too large", "file:" + tooBig, "", []string{tooBig, "larger than 4096 bytes", "not a PIN or passphrase"}, false},
		// Issue 18, defect 9: a secret other users may read is refused, naming the chmod; its group: a warning.
		{"others may read", "file:" + loose, "", []string{"secret file readable by other users", "mode 0644", "run 'chmod 600 " + loose + "'"}, false},
		{"group may read", "file:" + groupOnly, "9012", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logBuf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logBuf, nil))
			b, err := ReadSecretLog(tc.source, log)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("ReadSecret(%q) returned %d bytes, want a refusal", tc.source, len(b))
				}
				for _, w := range tc.words {
					if !strings.Contains(err.Error(), w) {
						t.Fatalf("error %q does not say %q", err, w)
					}
				}
				return
			}
			if err != nil || string(b) != tc.want {
				t.Fatalf("ReadSecret(%q) = %q, %v", tc.source, b, err)
			}
			warned := strings.Contains(logBuf.String(), "level=WARN") && strings.Contains(logBuf.String(), "chmod 600")
			if warned != tc.warn {
				t.Fatalf("warning logged: %v, want %v; log: %s", warned, tc.warn, logBuf.String())
			}
			if strings.Contains(logBuf.String(), tc.want) {
				t.Fatal("the secret itself went into the log")
			}
		})
	}
}
