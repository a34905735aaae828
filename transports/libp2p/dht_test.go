package libp2p_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	record "github.com/libp2p/go-libp2p-record"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/custos-agent/custos/transports/host/hosttest"
)

// testJudge stands in for the core's record verification (agent/discovery has its own tests): a record
// is "v<seq>|<key>", valid when it names its key; the highest sequence wins. It counts what it refused.
type testJudge struct {
	mu      sync.Mutex
	refused map[string]int // value -> times refused
}

func (j *testJudge) parse(key string, v []byte) (int, error) {
	seq, k, ok := strings.Cut(string(v), "|")
	n, err := strconv.Atoi(strings.TrimPrefix(seq, "v"))
	if !ok || err != nil || k != key || !strings.HasPrefix(seq, "v") {
		return 0, fmt.Errorf("record_key_mismatch: %q is not a record for %s", v, key)
	}
	return n, nil
}

func (j *testJudge) ValidateRecord(_ context.Context, key string, v []byte) error {
	_, err := j.parse(key, v)
	if err != nil {
		j.mu.Lock()
		j.refused[string(v)]++
		j.mu.Unlock()
	}
	return err
}

func (j *testJudge) SelectRecord(_ context.Context, key string, vs [][]byte) (int, error) {
	best, bestSeq := -1, -1
	for i, v := range vs {
		if n, err := j.parse(key, v); err == nil && n > bestSeq {
			best, bestSeq = i, n
		}
	}
	if best < 0 {
		return 0, errors.New("none valid")
	}
	return best, nil
}

func (j *testJudge) refusals(v string) int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.refused[v]
}

// TestDHTRecords: three libp2p plugins (real processes) linked by agent connections form the private DHT;
// a record put at one is found from another, a newer one replaces it, the host refuses to put an invalid
// one, and a forged record pushed into the plugins by a raw DHT node with a permissive validator is
// refused by every plugin's validator (its host judge is asked) and never returned by a lookup.
func TestDHTRecords(t *testing.T) {
	const key = "/custos/agent-x"
	judges := make([]*testJudge, 3)
	hosts := make([]*hosttest.Host, 3)
	for i := range hosts {
		judges[i] = &testJudge{refused: map[string]int{}}
		cfg := hosttest.Config(t, "libp2p", bins["transport-libp2p"])
		cfg.Judge = judges[i]
		hosts[i] = hosttest.Start(t, cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	l, err := hosts[0].T.Listen(ctx, "/ip4/127.0.0.1/tcp/0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, h := range hosts[1:] { // 1 and 2 know only 0, as agents given one bootstrap address
		c, err := h.T.Dial(ctx, l.Addrs()[0], hosts[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// Put at 1 (retrying while the DHT's routing table fills through identify), find at 2.
	put := func(v string) {
		t.Helper()
		var err error
		for range 50 {
			if err = hosts[1].T.PutRecord(ctx, key, []byte(v)); err == nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("put %s: %v", v, err)
	}
	find := func(at int) (string, error) {
		v, err := hosts[at].T.FindRecord(ctx, key, 5*time.Second)
		return string(v), err
	}
	put("v1|" + key)
	if v, err := find(2); err != nil || v != "v1|"+key {
		t.Fatalf("find at 2: %q, %v", v, err)
	}
	put("v2|" + key)
	if v, err := find(2); err != nil || v != "v2|"+key {
		t.Fatalf("after the newer record, find at 2: %q, %v", v, err)
	}
	if err := hosts[1].T.PutRecord(ctx, key, []byte("v9|/custos/agent-y")); err == nil {
		t.Fatal("the host's plugin stored a record its judge refuses")
	}
	// A raw DHT node with a permissive validator pushes a forged record to every plugin.
	raw, _ := rawPeer(t, "noise")
	rd, err := dht.New(raw, dht.Mode(dht.ModeServer), dht.ProtocolPrefix("/custos"), dht.DisableProviders(),
		dht.Validator(record.NamespacedValidator{"custos": permissive{}}))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	const forgedKey = "/custos/agent-z"
	forged := "v100|/custos/agent-other"
	for _, h := range hosts {
		ls, err := h.T.Listen(ctx, "/ip4/127.0.0.1/tcp/0")
		if err != nil {
			t.Fatal(err)
		}
		defer ls.Close()
		ai, err := peer.AddrInfoFromString(ls.Addrs()[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := raw.Connect(ctx, *ai); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for rd.RoutingTable().Size() < 3 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if err := rd.PutValue(ctx, forgedKey, []byte(forged)); err != nil {
		t.Fatalf("raw put: %v", err)
	}
	for i, j := range judges {
		if j.refusals(forged) == 0 {
			t.Errorf("plugin %d's host was never asked about (or accepted) the forged record", i)
		}
	}
	for i := range hosts {
		v, err := hosts[i].T.FindRecord(ctx, forgedKey, 3*time.Second)
		if err == nil {
			t.Errorf("plugin %d returned %q for the forged key", i, v)
		}
	}
}

type permissive struct{}

func (permissive) Validate(string, []byte) error        { return nil }
func (permissive) Select(string, [][]byte) (int, error) { return 0, nil }

// TestRecordsRefusedWithoutJudge: a plugin whose host answers no record questions (no Judge) refuses
// every record: it fails closed, never storing what nobody verified.
func TestRecordsRefusedWithoutJudge(t *testing.T) {
	a := hosttest.Start(t, hosttest.Config(t, "libp2p", bins["transport-libp2p"]))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := a.T.PutRecord(ctx, "/custos/x", []byte("v1|/custos/x"))
	if err == nil || !strings.Contains(err.Error(), "no host answers record questions") {
		t.Errorf("put without a judge: %v, want a refusal saying no host answers", err)
	}
	if _, err := a.T.FindRecord(ctx, "/custos/x", time.Second); err == nil {
		t.Error("found a record nobody stored")
	}
}

// TestDHTClientModeAnswersNoLookup: a plugin whose host says it may not answer lookups (AnswerLookups
// false: the agent lacks discover_peers, ADR 0094 amendment) runs its DHT in client mode: identify does not
// advertise /custos/kad/1.0.0 and a raw libp2p peer's FIND_NODE stream is refused; one told server mode
// answers. Both report their mode to the host.
func TestDHTClientModeAnswersNoLookup(t *testing.T) {
	const kad = protocol.ID("/custos/kad/1.0.0")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	raw, _ := rawPeer(t, "noise")
	for _, tc := range []struct {
		name   string
		answer bool
	}{{"server", true}, {"client", false}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := hosttest.Config(t, "libp2p", bins["transport-libp2p"])
			cfg.Judge = &testJudge{refused: map[string]int{}}
			cfg.AnswerLookups = func(context.Context) bool { return tc.answer }
			h := hosttest.Start(t, cfg)
			if got := h.T.DHTMode(); got != tc.name {
				t.Fatalf("plugin reports DHT mode %q, want %q", got, tc.name)
			}
			l, err := h.T.Listen(ctx, "/ip4/127.0.0.1/tcp/0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			ai, err := peer.AddrInfoFromString(l.Addrs()[0])
			if err != nil {
				t.Fatal(err)
			}
			if err := raw.Connect(ctx, *ai); err != nil {
				t.Fatal(err)
			}
			var protos []protocol.ID
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				if protos, _ = raw.Peerstore().GetProtocols(ai.ID); len(protos) > 0 { // identify done
					break
				}
			}
			if len(protos) == 0 {
				t.Fatal("identify never told the raw peer the plugin's protocols")
			}
			advertised := slices.Contains(protos, kad)
			s, err := raw.NewStream(ctx, ai.ID, kad)
			if err == nil {
				_ = s.Close()
			}
			if tc.answer && (!advertised || err != nil) {
				t.Errorf("server mode: advertised %v, stream error %v: want the DHT protocol served", advertised, err)
			}
			if !tc.answer && (advertised || err == nil) {
				t.Errorf("client mode: advertised %v (protocols %v), stream error %v: the plugin answers DHT lookups", advertised, protos, err)
			}
		})
	}
}

// TestDHTModeJudgedAtEveryStart: the host asks AnswerLookups at every start of a plugin process, so a
// change of the agent's own roles applies at the next start (here a crash restart): not before, since a
// running plugin is not reconfigured.
func TestDHTModeJudgedAtEveryStart(t *testing.T) {
	var answer atomic.Bool
	answer.Store(true)
	cfg := hosttest.Config(t, "libp2p", bins["transport-libp2p"])
	cfg.Judge = &testJudge{refused: map[string]int{}}
	cfg.AnswerLookups = func(context.Context) bool { return answer.Load() }
	h := hosttest.Start(t, cfg)
	if got := h.T.DHTMode(); got != "server" {
		t.Fatalf("first start: DHT mode %q, want server", got)
	}
	answer.Store(false) // discover_peers withdrawn
	if got := h.T.DHTMode(); got != "server" {
		t.Fatalf("running plugin: DHT mode %q changed without a restart", got)
	}
	pid := h.T.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for (h.T.Restarts() < 1 || h.T.PID() == 0 || h.T.PID() == pid) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := h.T.DHTMode(); got != "client" {
		t.Fatalf("after the restart: DHT mode %q, want client (restarts %d)", got, h.T.Restarts())
	}
}
