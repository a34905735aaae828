package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/config"
	"github.com/custos-agent/custos/agent/events"
	"github.com/custos-agent/custos/agent/gateway"
	"github.com/custos-agent/custos/agent/gateway/gatewaytest"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
	"github.com/custos-agent/custos/test/testenv"
)

// gwClient is a program that is not an agent: plain net/http with an API key. Every response it gets is
// validated against docs/openapi.yaml (gatewaytest).
type gwClient struct {
	t    *testing.T
	base string
	v    *gatewaytest.Validator
	hc   *http.Client
}

func (c *gwClient) do(method, path, token string, body []byte) (*http.Response, []byte) {
	c.t.Helper()
	var rd *bytes.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, nil)
	if rd != nil {
		req, err = http.NewRequest(method, c.base+path, rd)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.v.Do(c.t, c.hc, req)
}

// gatewayAgent makes agent A: every transport, bootstrapped to each executor over its own transport, with
// the gateway on a loopback port (max_body_bytes 4096; no address limit in the way of the test).
func gatewayAgent(t testing.TB, execs map[string]*agent, extra string) (*agent, string) {
	t.Helper()
	a, base := gatewayConfig(t, execs, "", extra)
	a.start()
	return a, base
}

// gatewayConfig makes agent A's home and configuration (gatewayAgent) without starting it; gw is added
// to the gateway section (", tls: {...}": the address is https).
func gatewayConfig(t testing.TB, execs map[string]*agent, gw, extra string) (*agent, string) {
	t.Helper()
	a := newAgent(t, "gateway", false)
	var tns []string
	var boot []config.PeerConfig
	for _, tn := range []string{"tcp", "ws", "libp2p"} {
		if x := execs[tn]; x != nil {
			tns = append(tns, tn)
			boot = append(boot, a.bootstrapTo(x, tn))
		}
	}
	port := freePort(t)
	a.writeConfig(agentConfig{Transports: tns, Bootstrap: boot,
		Extra: fmt.Sprintf("gateway: {listen: \"127.0.0.1:%d\", max_body_bytes: 4096, address_rate: 10000%s}\n", port, gw) + extra})
	scheme := "http"
	if gw != "" {
		scheme = "https"
	}
	return a, fmt.Sprintf("%s://127.0.0.1:%d", scheme, port)
}

// gwKey makes an API key over the control socket (agentctl gateway key create) and returns its token.
func gwKey(a *agent, name, roles string, more ...string) string {
	a.t.Helper()
	var k api.GatewayKeyCreated
	a.ctlJSON(&k, append([]string{"gateway", "key", "create", "--name", name, "--role", roles}, more...)...)
	if !strings.HasPrefix(k.Token, "cgw_") || k.Key.Name != name || k.Key.State != "valid" {
		a.t.Fatalf("gateway key create: %+v", k.Key)
	}
	return k.Token
}

// TestGatewayEndToEnd: a program with an API key submits a task through agent A's HTTP gateway to a
// remote agent over each transport (one executor per transport, listening on that transport only) and
// gets the verified result; then every refusal of the gateway through the real daemon, each with its
// status and problem type, audited in A's audit log with the key's name (never its token), and nothing
// stored changed (A's tasks and keys as they were). Every response is validated against
// docs/openapi.yaml.
func TestGatewayEndToEnd(t *testing.T) {
	execs := map[string]*agent{}
	for _, tn := range []string{"tcp", "ws", "libp2p"} {
		if bins.plugins[tn] == "" {
			t.Logf("cmd/transport-%s is not in this tree", tn)
			continue
		}
		x := newAgent(t, "executor-"+tn, false)
		x.writeConfig(agentConfig{Transports: []string{tn}})
		x.start()
		execs[tn] = x
	}
	a, base := gatewayAgent(t, execs, "")
	c := &gwClient{t: t, base: base, v: gatewaytest.New(t), hc: &http.Client{Timeout: 60 * time.Second}}
	app := gwKey(a, "app", "gateway_service,task_submitter,agent_operator", "--rate", "1000")
	other := gwKey(a, "other", "gateway_service,task_submitter", "--rate", "1000")

	if resp, body := c.do("GET", "/v1/healthz", "", nil); resp.StatusCode != 200 || !strings.Contains(string(body), a.id) {
		t.Fatalf("healthz: %d %s", resp.StatusCode, body)
	}
	for tn, x := range execs {
		t.Run(tn, func(t *testing.T) {
			c := *c
			c.t = t
			eventually(t, 20*time.Second, "A's session with the "+tn+" executor", func() bool { return a.sessionWith(x.id) != nil })
			if s := a.sessionWith(x.id); s.Transport != tn {
				t.Fatalf("A's session with the %s executor is over %s", tn, s.Transport)
			}
			in := randomInput(t, 1024)
			req, _ := json.Marshal(gateway.SubmitRequest{To: x.id, Handler: "sha256", Input: in})
			resp, body := c.do("POST", "/v1/tasks", app, req)
			var v api.TaskView
			if err := json.Unmarshal(body, &v); err != nil || resp.StatusCode != 202 || v.State != "pending" || v.To != x.id ||
				resp.Header.Get("Location") != "/v1/tasks/"+v.TaskID || v.InputSHA256 != hexSHA256(in) {
				t.Fatalf("submit: %d %s", resp.StatusCode, body)
			}
			if tn == "tcp" { // the events of the task, as a stream that ends with its result
				resp, body = c.do("GET", "/v1/tasks/"+v.TaskID+"/events", app, nil)
				i := bytes.LastIndex(body, []byte("event: result\ndata: "))
				if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" || i < 0 {
					t.Fatalf("events: %d %q", resp.StatusCode, body)
				}
				var last api.TaskView
				if err := json.Unmarshal(bytes.TrimSpace(body[i+len("event: result\ndata: "):]), &last); err != nil {
					t.Fatalf("the result event: %v\n%s", err, body)
				}
				checkResult(t, &last, x.id, hexSHA256(in))
			}
			resp, body = c.do("GET", "/v1/tasks/"+v.TaskID+"?wait=30", app, nil)
			v = api.TaskView{}
			if err := json.Unmarshal(body, &v); err != nil || resp.StatusCode != 200 {
				t.Fatalf("get: %d %s", resp.StatusCode, body)
			}
			checkResult(t, &v, x.id, hexSHA256(in))
			// ADR 0100: the request carried the key's name, signed; the executor audited it with the task.
			if v.OnBehalfOf != "app" {
				t.Fatalf("task view on_behalf_of %q, want app", v.OnBehalfOf)
			}
			for _, typ := range []audit.EventType{events.TaskAccepted, events.TaskFinished} {
				if !auditHas(t, x, typ, func(e audit.Entry) bool {
					return e.Actor == a.id && e.Subject == v.TaskID && e.Details["on_behalf_of"] == "app"
				}) {
					t.Fatalf("the executor's %s record of task %s does not name on_behalf_of app", typ, v.TaskID)
				}
			}
			// Another key does not see the task (404, as for an unknown one); the key's own reads are above.
			if resp, body := c.do("GET", "/v1/tasks/"+v.TaskID, other, nil); resp.StatusCode != 404 ||
				!strings.Contains(string(body), "urn:custos:reason:not_found") {
				t.Fatalf("another key reading app's task: %d %s", resp.StatusCode, body)
			}
			// A third party checks the evidence through the gateway; altered evidence does not verify.
			ev, _ := json.Marshal(v.Result.Evidence)
			var vr gateway.VerifyResult
			resp, body = c.do("POST", "/v1/evidence/verify", app, ev)
			if err := json.Unmarshal(body, &vr); err != nil || resp.StatusCode != 200 || !vr.Verified || vr.Executor != x.id ||
				vr.Requester != a.id || vr.TaskID != v.TaskID || vr.OutputSHA256 != hexSHA256([]byte(hexSHA256(in))) {
				t.Fatalf("verify: %d %s", resp.StatusCode, body)
			}
			bad := bytes.Replace(ev, []byte(`task_result`), []byte(`task_respons`), 1)
			resp, body = c.do("POST", "/v1/evidence/verify", app, bad)
			vr = gateway.VerifyResult{}
			if err := json.Unmarshal(body, &vr); err != nil || resp.StatusCode != 200 || vr.Verified || vr.Error == "" {
				t.Fatalf("altered evidence: %d %s", resp.StatusCode, body)
			}
			resp, body = c.do("GET", "/v1/agents/"+x.id, app, nil)
			var ps api.PeerStatus
			if err := json.Unmarshal(body, &ps); err != nil || resp.StatusCode != 200 || ps.ID != x.id || !ps.Connected {
				t.Fatalf("agent: %d %s", resp.StatusCode, body)
			}
			if !auditHas(t, a, gateway.Request, func(e audit.Entry) bool {
				return e.Actor == "key:app" && e.Subject == "POST /v1/tasks" && e.Details["task_id"] == v.TaskID && e.Outcome == audit.OutcomeSuccess
			}) {
				t.Fatal("no gateway.request audit record of the submission, by key:app")
			}
		})
	}
	if t.Failed() {
		return
	}
	if x := execs["tcp"]; x != nil {
		t.Run("python", func(t *testing.T) { gatewayPython(t, base, a, x, app) })
	}
	t.Run("refusals", func(t *testing.T) { gatewayRefusals(t, c, a, app, execs) })
}

// gatewayRefusals: the refusals of issue 15 through the real daemon.
func gatewayRefusals(t *testing.T, c *gwClient, a *agent, app string, execs map[string]*agent) {
	c2 := *c
	c = &c2
	c.t = t
	var x *agent
	for _, e := range execs {
		x = e
	}
	noAPI := gwKey(a, "no-api", "task_submitter")
	noSubmit := gwKey(a, "no-submit", "gateway_service")
	revoked := gwKey(a, "revoked", "gateway_service,task_submitter")
	slow := gwKey(a, "slow", "gateway_service,task_submitter", "--rate", "1") // burst 2
	if out, code := a.run("gateway", "key", "revoke", "--name", "revoked"); code != 0 {
		t.Fatalf("revoke: %s", out)
	}
	var tasksBefore []api.TaskView
	a.ctlJSON(&tasksBefore, "task", "list")
	var keysBefore []api.GatewayKey
	a.ctlJSON(&keysBefore, "gateway", "key", "list")
	good := []byte(`{"to":"` + x.id + `","handler":"echo","input":"aGk"}`)
	unknown := unknownAgentID(t)

	type refusal struct {
		name, method, path, token string
		body                      []byte
		status                    int
		code, field, actor        string
	}
	cases := []refusal{
		{"no key", "POST", "/v1/tasks", "", good, 401, "unauthenticated", "", "anonymous"},
		{"not a token", "POST", "/v1/tasks", "cgw_0000000000000000_" + strings.Repeat("A", 43), good, 401, "unauthenticated", "", "anonymous"},
		{"revoked key", "POST", "/v1/tasks", revoked, good, 401, "key_revoked", "", "anonymous"},
		{"no api_access", "POST", "/v1/tasks", noAPI, good, 403, "permission_denied", "", "key:no-api"},
		{"no submit_tasks", "POST", "/v1/tasks", noSubmit, good, 403, "permission_denied", "", "key:no-submit"},
		{"no view_status", "GET", "/v1/agents/" + x.id, noSubmit, nil, 403, "permission_denied", "", "key:no-submit"},
		{"oversized body", "POST", "/v1/tasks", app, bytes.Repeat([]byte(" "), 8192), 413, "too_large", "", "key:app"},
		{"malformed JSON", "POST", "/v1/tasks", app, []byte(`{"to":`), 400, "bad_request", "", "key:app"},
		{"unknown field", "POST", "/v1/tasks", app, []byte(`{"to":"` + x.id + `","handler":"echo","input":"","colour":"red"}`), 400, "bad_request", "colour", "key:app"},
		{"wrong type", "POST", "/v1/tasks", app, []byte(`{"to":"` + x.id + `","handler":7,"input":""}`), 400, "bad_request", "handler", "key:app"},
		{"unknown agent", "GET", "/v1/agents/" + unknown, app, nil, 404, "not_found", "", "key:app"},
	}
	// Over the rate: the slow key's burst is 2 (served), then 429 with Retry-After. The requests before
	// the refused one go out back to back (a slow machine may refill a token meanwhile: up to 5 tries).
	cases = append(cases, refusal{"over the rate", "GET", "/v1/tasks/" + tasksBefore[0].TaskID, slow, nil, 429, "rate_limited", "", "key:slow"})

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := *c
			c.t = t
			n := countGatewayRecords(t, a)
			resp, body := c.do(tc.method, tc.path, tc.token, tc.body)
			// Served, the slow key's reads are 404: the task is app's, not its own (ADR 0100).
			for try := 1; tc.status == 429 && resp.StatusCode == 404 && try < 5; try++ {
				n++ // the served request's record
				resp, body = c.do(tc.method, tc.path, tc.token, tc.body)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if tc.code != "" {
				var p gateway.Problem
				if err := json.Unmarshal(body, &p); err != nil {
					t.Fatalf("not a problem: %v: %s", err, body)
				}
				if p.Type != gateway.ProblemTypePrefix+tc.code || p.Reason != tc.code || p.Status != tc.status || p.Field != tc.field || p.Detail == "" {
					t.Fatalf("problem %+v, want type %s%s, field %q", p, gateway.ProblemTypePrefix, tc.code, tc.field)
				}
				if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
					t.Fatalf("Content-Type %q", ct)
				}
				if tc.status == 429 {
					if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 || p.RetryAfter != s {
						t.Fatalf("429: Retry-After %q, retry_after %d", resp.Header.Get("Retry-After"), p.RetryAfter)
					}
				}
				if tc.status == 401 && resp.Header.Get("WWW-Authenticate") == "" {
					t.Fatal("401 without WWW-Authenticate")
				}
			}
			// Audited: one more gateway.request record, with the key's name and the reason, never the token.
			var rec *audit.Entry
			eventually(t, 5*time.Second, "the request's audit record", func() bool {
				rec = lastGatewayRecord(t, a, n)
				return rec != nil
			})
			if rec.Actor != tc.actor || fmt.Sprint(rec.Details["status"]) != strconv.Itoa(tc.status) || rec.Details["path"] != strings.SplitN(tc.path, "?", 2)[0] {
				t.Fatalf("audit record %s: actor %s, details %v; want actor %s, status %d", rec.Raw, rec.Actor, rec.Details, tc.actor, tc.status)
			}
			if tc.code != "" && (rec.Details["reason"] != tc.code || rec.Outcome == audit.OutcomeSuccess) {
				t.Fatalf("audit record %s: want reason %s and not a success", rec.Raw, tc.code)
			}
			if tc.token != "" && bytes.Contains(rec.Raw, []byte(tc.token[len(tc.token)-43:])) {
				t.Fatal("the audit record holds the token's secret")
			}
		})
	}
	// Nothing stored changed: A's tasks and keys are as they were.
	var tasksAfter []api.TaskView
	a.ctlJSON(&tasksAfter, "task", "list")
	var keysAfter []api.GatewayKey
	a.ctlJSON(&keysAfter, "gateway", "key", "list")
	if !sameJSON(tasksBefore, tasksAfter) {
		t.Fatalf("the refusals changed A's tasks:\n%v\n%v", tasksBefore, tasksAfter)
	}
	if !sameJSON(keysBefore, keysAfter) {
		t.Fatalf("the refusals changed A's keys:\n%v\n%v", keysBefore, keysAfter)
	}
	// Counted per route and status: at least the refusals above (the Python run before them adds a 401).
	m := scrape(t, a.status().Metrics)
	for series, least := range map[string]int{
		`custos_gateway_requests_total{route="POST /v1/tasks",status="401"}`:      3,
		`custos_gateway_requests_total{route="POST /v1/tasks",status="403"}`:      2,
		`custos_gateway_requests_total{route="POST /v1/tasks",status="413"}`:      1,
		`custos_gateway_requests_total{route="POST /v1/tasks",status="400"}`:      3,
		`custos_gateway_requests_total{route="GET /v1/agents/{id}",status="403"}`: 1,
		`custos_gateway_requests_total{route="GET /v1/agents/{id}",status="404"}`: 1,
		`custos_gateway_requests_total{route="GET /v1/tasks/{id}",status="429"}`:  1,
	} {
		_, after, ok := strings.Cut(m, "\n"+series+" ")
		n, err := strconv.Atoi(strings.SplitN(after, "\n", 2)[0])
		if !ok || err != nil || n < least {
			t.Errorf("metric %s: want at least %d:\n%s", series, least, grepLines(m, "custos_gateway_requests_total"))
		}
	}
	// The refused submission with a key that may: accepted (the refusals were for their reasons).
	resp, body := c.do("POST", "/v1/tasks", app, good)
	if resp.StatusCode != 202 {
		t.Fatalf("the good submission: %d %s", resp.StatusCode, body)
	}
}

// unknownAgentID is a well-formed agent ID that no agent of the test has.
func unknownAgentID(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := keystore.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return identity.NewID(pk).String()
}

func gatewayRecords(t *testing.T, a *agent) []audit.Entry {
	t.Helper()
	var out []audit.Entry
	err := audit.Query(t.Context(), filepath.Join(a.home, "audit"), audit.Filter{Types: []string{string(gateway.Request)}}, func(e audit.Entry) error {
		out = append(out, e)
		return nil
	})
	if err != nil {
		t.Fatalf("%s: audit query: %v", a.name, err)
	}
	return out
}

func countGatewayRecords(t *testing.T, a *agent) int { return len(gatewayRecords(t, a)) }

// lastGatewayRecord is the gateway record after the first n, when there is exactly one more.
func lastGatewayRecord(t *testing.T, a *agent, n int) *audit.Entry {
	all := gatewayRecords(t, a)
	if len(all) != n+1 {
		if len(all) > n+1 {
			t.Fatalf("%d gateway.request records for one request", len(all)-n)
		}
		return nil
	}
	return &all[n]
}

func sameJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// gatewayPython runs the Python example (examples/python/custos_gateway.py, standard library only) with
// python3 against the real gateway: it submits a sha256 task to x, waits by the event stream (then by
// polling), checks the output against its signed digest and has the evidence verified. With a revoked
// key it prints the refusal's status and reason and exits 1.
func gatewayPython(t *testing.T, base string, a, x *agent, token string, tlsArgs ...string) {
	py := testenv.LookTool(t, "python3", "python3")
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "examples", "python", "custos_gateway.py")
	in := randomInput(t, 1000)
	file := filepath.Join(t.TempDir(), "input.bin")
	if err := os.WriteFile(file, in, 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(token string, extra ...string) (string, string, int) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		defer cancel()
		args := append([]string{"-B", script, "--url", base, "--to", x.id, "--handler", "sha256", "--input", file}, tlsArgs...)
		cmd := exec.CommandContext(ctx, py, append(args, extra...)...)
		cmd.Env = append(os.Environ(), "CUSTOS_GATEWAY_TOKEN="+token) // the token is never on argv
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		code := 0
		if err != nil {
			ee, ok := err.(*exec.ExitError)
			if !ok {
				t.Fatalf("python3 %s: %v", script, err)
			}
			code = ee.ExitCode()
		}
		return o.String(), e.String(), code
	}
	want := hexSHA256(in)
	for _, mode := range [][]string{nil, {"--poll"}} {
		out, errOut, code := run(token, mode...)
		if code != 0 {
			t.Fatalf("custos_gateway.py %v: exit %d\nstdout:\n%s\nstderr:\n%s", mode, code, out, errOut)
		}
		for _, line := range []string{
			"submitted task ", " to " + x.id + " (input sha256 " + want + ")",
			"\nstate done\n", "\nexecutor " + x.id + "\n", "\noutput " + want + "\n",
			"\noutput_sha256 " + hexSHA256([]byte(want)) + " (matches the output)\n",
			" run by " + x.id + " for " + a.id + "\n",
		} {
			if !strings.Contains(out, line) {
				t.Fatalf("custos_gateway.py %v: output lacks %q:\n%s", mode, line, out)
			}
		}
		if !strings.Contains(out, "\nevidence verified: task ") {
			t.Fatalf("custos_gateway.py %v: no verified evidence:\n%s", mode, out)
		}
	}
	// An unknown key: exit 1, the status and the reason code, nothing submitted.
	var before []api.TaskView
	a.ctlJSON(&before, "task", "list")
	out, errOut, code := run("cgw_0000000000000000_" + strings.Repeat("A", 43))
	if code != 1 || !strings.Contains(errOut, "refused: 401 unauthenticated: ") || !strings.Contains(errOut, "[urn:custos:reason:unauthenticated]") || out != "" {
		t.Fatalf("custos_gateway.py with an unknown key: exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	var after []api.TaskView
	a.ctlJSON(&after, "task", "list")
	if len(after) != len(before) {
		t.Fatalf("a refused submission stored a task: %d tasks, then %d", len(before), len(after))
	}
}

// TestGatewayTLS: the gateway on TLS 1.3 with mutual TLS (gateway.tls: a certificate from files, client
// certificates pinned by fingerprint), through the real daemon: a client with the pinned certificate
// gets a verified result over TLS 1.3 (plain net/http, then the Python example with --ca-file,
// --cert-file and --key-file); a client limited to TLS 1.2, one without a certificate and one with
// another certificate are refused in the handshake.
func TestGatewayTLS(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey := tlsCA(t)
	serverPEM, serverKey := tlsLeaf(t, caCert, caKey, x509.ExtKeyUsageServerAuth)
	pinnedPEM, pinnedKey := tlsLeaf(t, caCert, caKey, x509.ExtKeyUsageClientAuth)
	otherPEM, otherKey := tlsLeaf(t, caCert, caKey, x509.ExtKeyUsageClientAuth)
	files := map[string][]byte{"ca.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw}),
		"server.pem": serverPEM, "server.key": serverKey, "client.pem": pinnedPEM, "client.key": pinnedKey}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	blk, _ := pem.Decode(pinnedPEM)
	pin := sha256.Sum256(blk.Bytes)

	x := newAgent(t, "executor", false)
	x.writeConfig(agentConfig{Transports: []string{"tcp"}})
	x.start()
	a, base := gatewayConfig(t, map[string]*agent{"tcp": x}, fmt.Sprintf(", tls: {cert_file: %q, key_file: %q, client_fingerprints: [%q]}",
		filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"), hex.EncodeToString(pin[:])), "")
	a.start()
	token := gwKey(a, "tls-app", "gateway_service,task_submitter")
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	client := func(certPEM, keyPEM []byte, maxVersion uint16) *http.Client {
		tc := &tls.Config{RootCAs: roots, MaxVersion: maxVersion}
		if certPEM != nil {
			c, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			tc.Certificates = []tls.Certificate{c}
		}
		return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	}

	c := &gwClient{t: t, base: base, v: gatewaytest.New(t), hc: client(pinnedPEM, pinnedKey, 0)}
	eventually(t, 20*time.Second, "A's session with the executor", func() bool { return a.sessionWith(x.id) != nil })
	in := randomInput(t, 512)
	req, _ := json.Marshal(gateway.SubmitRequest{To: x.id, Handler: "sha256", Input: in})
	resp, body := c.do("POST", "/v1/tasks", token, req)
	var v api.TaskView
	if err := json.Unmarshal(body, &v); err != nil || resp.StatusCode != 202 {
		t.Fatalf("submit over TLS: %d %s", resp.StatusCode, body)
	}
	if resp.TLS == nil || resp.TLS.Version != tls.VersionTLS13 {
		t.Fatalf("the gateway answered without TLS 1.3: %+v", resp.TLS)
	}
	resp, body = c.do("GET", "/v1/tasks/"+v.TaskID+"?wait=30", token, nil)
	v = api.TaskView{}
	if err := json.Unmarshal(body, &v); err != nil || resp.StatusCode != 200 {
		t.Fatalf("get over TLS: %d %s", resp.StatusCode, body)
	}
	checkResult(t, &v, x.id, hexSHA256(in))

	for _, tc := range []struct {
		name   string
		client *http.Client
		want   string // in the client's error
	}{
		{"TLS 1.2", client(pinnedPEM, pinnedKey, tls.VersionTLS12), "protocol version"},
		{"no client certificate", client(nil, nil, 0), "certificate required"},
		{"another client certificate", client(otherPEM, otherKey, 0), "bad certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := tc.client.Get(base + "/v1/healthz")
			if err == nil {
				resp.Body.Close()
				t.Fatalf("served (%d), want a refused handshake", resp.StatusCode)
			}
			// In TLS 1.3 the server checks the client's certificate after the client's handshake is done:
			// the client may see the server's alert, or the reset of its request on the closed connection.
			if msg := err.Error(); !strings.Contains(msg, tc.want) && !strings.Contains(msg, "connection reset by peer") {
				t.Fatalf("error %q, want it to say %q", err, tc.want)
			}
		})
	}
	t.Run("python", func(t *testing.T) {
		gatewayPython(t, base, a, x, token, "--ca-file", filepath.Join(dir, "ca.pem"),
			"--cert-file", filepath.Join(dir, "client.pem"), "--key-file", filepath.Join(dir, "client.key"))
	})
}

// tlsCA makes a test certificate authority (ECDSA P-256).
func tlsCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "custos e2e gateway CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// tlsLeaf makes a certificate for 127.0.0.1 signed by the CA, and its key, in PEM.
func tlsLeaf(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})
}
