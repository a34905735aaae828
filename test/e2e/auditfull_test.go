package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/test/testenv"
)

// mountSmallAudit puts the agent's audit directory on a tmpfs of size bytes, keeping the records agentctl
// init wrote there. Unmounted in t.Cleanup (after the daemon is stopped). Outside CI a failure to mount
// (not root, no CAP_SYS_ADMIN) skips the test; under CI=true it fails.
func mountSmallAudit(t *testing.T, a *agent, size int) string {
	t.Helper()
	dir := filepath.Join(a.home, "audit")
	held := filepath.Join(a.home, "audit.init")
	if err := os.Rename(dir, held); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		testenv.Missing(t, "mounting a tmpfs ("+err.Error()+")", "run the end-to-end tests as root (make test does)")
	}
	t.Cleanup(func() {
		a.kill()
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
			_ = syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	ents, err := os.ReadDir(held)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(held, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.RemoveAll(held); err != nil {
		t.Fatal(err)
	}
	return dir
}

// fill writes path until the file system is full and returns how many bytes it took.
func fill(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	var n int64
	for {
		w, err := f.Write(buf)
		n += int64(w)
		if errors.Is(err, syscall.ENOSPC) {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// auditLogBytes is the audit log as it is on disk: every segment, in order, complete lines only.
func auditLogBytes(t *testing.T, dir string) []byte {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	var all []byte
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	if i := bytes.LastIndexByte(all, '\n'); i >= 0 {
		return all[:i+1]
	}
	return nil
}

type auditLine struct {
	Seq     uint64         `json:"seq"`
	Type    string         `json:"type"`
	Subject string         `json:"subject"`
	Details map[string]any `json:"details"`
}

func auditLines(t *testing.T, b []byte) []auditLine {
	t.Helper()
	var out []auditLine
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

func metricValue(t *testing.T, text, series string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("metric %s not exported", series)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestAuditDiskFull: the executor's audit directory is a small tmpfs. Filled up, the audit log cannot
// write: with audit.on_failure refuse (the default) the agent refuses a peer's new task with
// audit_unavailable, a mutating control operation, and an inbound session; status and the metrics say
// why, read-only operations keep working. Once space returns the agent writes and serves again by
// itself; after a clean stop `agentctl audit verify` passes over the whole log, whose every record from
// before the failure is still there byte for byte, with an audit.recovered record that says what
// happened.
func TestAuditDiskFull(t *testing.T) {
	x := newAgent(t, "x", false)
	dir := mountSmallAudit(t, x, 1<<20)
	x.writeConfig(agentConfig{Transports: []string{"tcp"}})
	x.start()
	s := newAgent(t, "s", false)
	s.writeConfig(agentConfig{Transports: []string{"tcp"}, Bootstrap: []config.PeerConfig{s.bootstrapTo(x, "tcp")}})
	s.start()

	var v api.TaskView
	s.ctlJSON(&v, "task", "submit", "--to", x.id, "--handler", "echo", "--data", "before", "--wait", "--timeout", "60s")
	checkResult(t, &v, x.id, "before")
	if st := x.status().AuditWriting; !st.Writing || st.OnFailure != "refuse" {
		t.Fatalf("audit state of a healthy agent: %+v", st)
	}
	before := auditLogBytes(t, dir)
	filler := filepath.Join(dir, "filler")
	t.Logf("filled the audit tmpfs with %d bytes", fill(t, filler))

	// The disk is full: the executor's next records do not fit. Tasks go on until the log's last page
	// is used up; from then on new tasks are refused with the reason.
	var refused string
	for i := 0; i < 200 && refused == ""; i++ {
		out, stderr, code := s.run2("task", "submit", "--to", x.id, "--handler", "echo", "--data", fmt.Sprintf("fill %d", i), "--wait", "--timeout", "60s")
		switch {
		case code == 0:
			continue
		case strings.Contains(stderr, "audit_unavailable"):
			refused = stderr
		default:
			t.Fatalf("task %d: exit %d\n%s%s\nexecutor log:\n%s", i, code, out, stderr, x.logTail())
		}
	}
	if refused == "" {
		t.Fatalf("no task was refused for the audit log; executor status %+v", x.status().AuditWriting)
	}
	if !strings.Contains(refused, "audit log cannot write") || !strings.Contains(refused, "disk_full") {
		t.Fatalf("the refusal does not say why: %s", refused)
	}
	st := x.status() // read-only: still served
	aw := st.AuditWriting
	if aw.Writing || aw.Cause != "disk_full" || aw.Refusing != "audit_unavailable" || !strings.Contains(aw.Error, "no space left on device") || aw.RecordsLost == 0 {
		t.Fatalf("status while the disk is full: %+v", aw)
	}
	if out, code := x.run("status"); code != 0 || !strings.Contains(out, "NOT WRITING: disk_full") || !strings.Contains(out, "refusing new work (audit_unavailable)") {
		t.Fatalf("agentctl status while the disk is full: exit %d\n%s", code, out)
	}
	m := scrape(t, st.Metrics)
	if metricValue(t, m, "custos_audit_failing") != 1 || metricValue(t, m, "custos_audit_records_lost_total") < 1 || metricValue(t, m, "custos_audit_write_failures_total") != 1 {
		t.Fatalf("metrics while the disk is full:\n%s", grepLines(m, "custos_audit"))
	}
	// A mutating control operation is refused; the executor starts no task of its own.
	if _, stderr, code := x.run2("task", "submit", "--to", s.id, "--handler", "echo", "--data", "out"); code == 0 || !strings.Contains(stderr, "audit_unavailable") {
		t.Fatalf("task submit on the failing agent: exit %d %s", code, stderr)
	}
	// An inbound session is refused (the executor logs why; the initiator sees validator_refused).
	c := newAgent(t, "c", false)
	c.writeConfig(agentConfig{Transports: []string{"tcp"}, Bootstrap: []config.PeerConfig{c.bootstrapTo(x, "tcp")}})
	c.start()
	eventually(t, 30*time.Second, "the executor refuses c's handshake for its audit log", func() bool {
		return regexp.MustCompile(`handshake failed.*peer=` + regexp.QuoteMeta(c.id) + `.*audit_unavailable`).MatchString(x.logText())
	})
	if c.sessionWith(x.id) != nil {
		t.Fatal("c has a session with the failing agent")
	}

	// Space returns: the agent writes again by itself, and serves.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the audit log writes again", func() bool { return x.status().AuditWriting.Writing })
	if aw := x.status().AuditWriting; aw.Refusing != "" || aw.Cause != "" {
		t.Fatalf("status after recovery: %+v", aw)
	}
	s.ctlJSON(&v, "task", "submit", "--to", x.id, "--handler", "echo", "--data", "after", "--wait", "--timeout", "60s")
	checkResult(t, &v, x.id, "after")
	afterTask := v.TaskID
	x.ctlJSON(&v, "task", "submit", "--to", s.id, "--handler", "echo", "--data", "out", "--wait", "--timeout", "60s")
	checkResult(t, &v, s.id, "out")
	eventually(t, 30*time.Second, "c connects once the executor writes again", func() bool { return c.sessionWith(x.id) != nil })
	m = scrape(t, x.status().Metrics)
	lost := metricValue(t, m, "custos_audit_records_lost_total")
	if metricValue(t, m, "custos_audit_failing") != 0 {
		t.Fatalf("custos_audit_failing after recovery:\n%s", grepLines(m, "custos_audit"))
	}

	// A clean stop, then the whole log verifies; nothing written before the failure is gone.
	x.signal(syscall.SIGTERM)
	if code := x.waitExit(30 * time.Second); code != 0 {
		t.Fatalf("executor exit %d\n%s", code, x.logTail())
	}
	if out, code := x.run("audit", "verify"); code != 0 {
		t.Fatalf("audit verify after the disk was full: exit %d\n%s", code, out)
	}
	after := auditLogBytes(t, dir)
	if !bytes.HasPrefix(after, before) {
		t.Fatalf("the log no longer starts with the %d bytes it held before the disk filled", len(before))
	}
	lines := auditLines(t, after)
	var recovered []auditLine
	accepted := false
	for i, l := range lines {
		if l.Seq != lines[0].Seq+uint64(i) {
			t.Fatalf("record %d has seq %d: a gap", i, l.Seq)
		}
		if l.Type == "audit.recovered" && l.Details["cause"] == "disk_full" {
			recovered = append(recovered, l)
		}
		if l.Type == "task.accepted" && l.Subject == afterTask {
			accepted = true
		}
	}
	if len(recovered) != 1 || !accepted {
		t.Fatalf("%d audit.recovered records for the full disk (want 1); the task after recovery audited: %v", len(recovered), accepted)
	}
	n, _ := recovered[0].Details["records_lost"].(float64)
	if n < 1 || n > lost {
		t.Fatalf("audit.recovered says %v records were lost; the metric counted %v", n, lost)
	}
	t.Logf("%d records in the log (%d before the disk filled); %v refused while it was full", len(lines), len(auditLines(t, before)), n)
}
