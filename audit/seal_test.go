package audit

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/sealbox"
	"github.com/custos-agent/custos/keystore"
)

// memKeys is a SubjectKeys and KeyLookup in memory; destroy forgets a subject's key.
type memKeys struct {
	mu    sync.Mutex
	refs  map[string]string // subject -> ref
	boxes map[string]*sealbox.Box
	made  int
}

func newMemKeys() *memKeys {
	return &memKeys{refs: map[string]string{}, boxes: map[string]*sealbox.Box{}}
}

func (m *memKeys) Key(_ context.Context, subject string) (string, *sealbox.Box, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ref, ok := m.refs[subject]; ok {
		return ref, m.boxes[ref], nil
	}
	var id [16]byte
	_, _ = rand.Read(id[:])
	ref := RefPrefix + b64.EncodeToString(id[:])
	box, err := sealbox.New(sealbox.NewKey())
	if err != nil {
		return "", nil, err
	}
	m.refs[subject], m.boxes[ref] = ref, box
	m.made++
	return ref, box, nil
}

func (m *memKeys) Lookup(ref string) (*sealbox.Box, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.boxes[ref]
	return b, ok, nil
}

func (m *memKeys) destroy(subject string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.boxes, m.refs[subject])
	delete(m.refs, subject)
}

func peerID(t testing.TB) string {
	t.Helper()
	s, err := keystore.GenerateMemorySigner(keystore.Ed25519)
	if err != nil {
		t.Fatal(err)
	}
	return identity.NewID(s.Public()).String()
}

func rawLog(t testing.TB, dir string) string {
	t.Helper()
	var raw strings.Builder
	for _, p := range segPaths(t, dir) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		raw.Write(b)
	}
	return raw.String()
}

// TestSealedFields (ADR 0099): a record naming another agent reaches the file with that agent's ID, its
// address and the details naming it sealed under its key; records naming nobody else stay version 2;
// the log verifies without any key; Query with the keys opens the fields, and once the subject's key is
// destroyed they read Erased while the other subject's still open.
func TestSealedFields(t *testing.T) {
	ctx := context.Background()
	id := newIdent(t, keystore.Ed25519, 0)
	dir := filepath.Join(t.TempDir(), "audit")
	keys := newMemKeys()
	o := id.opts(0)
	o.SubjectKeys = keys
	l := open(t, dir, o)
	alice, bob := peerID(t), peerID(t)
	recs := []Record{
		{Type: AuthSuccess, Actor: alice, Subject: alice, Outcome: OutcomeSuccess,
			Details: map[string]any{"transport": "tcp", "remote": "192.0.2.77:7400", "roles": "worker"}},
		{Type: GrantIssued, Actor: id.id, Subject: bob, Outcome: OutcomeSuccess,
			Details: map[string]any{"roles": []string{"worker"}, "note": "for " + bob}},
		{Type: AccessDenied, Actor: alice, Subject: "task.submit", Outcome: OutcomeDenied,
			Details: map[string]any{"reason": "no_role", "error": "peer " + alice + " has no role", "n": 3}},
		{Type: ConfigLoaded, Actor: "agent", Subject: "/etc/custos.yaml", Details: map[string]any{"digest": "abc"}},
	}
	for _, r := range recs {
		if _, err := l.Append(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	closeLog(t, l)
	mustVerify(t, dir, id.kel)
	raw := rawLog(t, dir)
	for _, secret := range []string{alice, bob, "192.0.2.77"} {
		if strings.Contains(raw, secret) {
			t.Errorf("%q is in the raw log", secret)
		}
	}
	if keys.made != 2 {
		t.Errorf("%d subject keys made, want 2 (one per peer)", keys.made)
	}
	versions := map[EventType]string{}
	for _, e := range all(t, dir) {
		if i := strings.Index(string(e.Raw), `"v":`); i >= 0 {
			versions[e.Type] = string(e.Raw[i+4 : i+5])
		}
	}
	for typ, want := range map[EventType]string{AuthSuccess: "3", GrantIssued: "3", AccessDenied: "3", ConfigLoaded: "2", LogCreated: "2", LogCheckpoint: "2"} {
		if versions[typ] != want {
			t.Errorf("%s: version %s, want %s", typ, versions[typ], want)
		}
	}

	read := func() map[EventType]Record {
		out := map[EventType]Record{}
		if err := Query(ctx, dir, Filter{Keys: keys}, func(e Entry) error { out[e.Type] = e.Record; return nil }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	got := read()
	if r := got[AuthSuccess]; r.Actor != alice || r.Subject != alice || r.Details["remote"] != "192.0.2.77:7400" || r.Details["transport"] != "tcp" {
		t.Errorf("auth.success opened: %+v", r)
	}
	if r := got[GrantIssued]; r.Actor != id.id || r.Subject != bob || r.Details["note"] != "for "+bob || !slices.Equal(r.Sealed, []string{"details.note", "subject"}) {
		t.Errorf("grant.issued opened: %+v", r)
	}
	if r := got[AccessDenied]; r.Subject != "task.submit" || r.Details["reason"] != "no_role" || !strings.Contains(r.Details["error"].(string), alice) {
		t.Errorf("access.denied opened: %+v", r)
	}

	keys.destroy(alice)
	got = read()
	if r := got[AuthSuccess]; r.Actor != Erased || r.Subject != Erased || r.Details["remote"] != Erased || r.Details["transport"] != "tcp" {
		t.Errorf("auth.success after erasure: %+v", r)
	}
	if r := got[AccessDenied]; r.Actor != Erased || r.Details["error"] != Erased || r.Details["reason"] != "no_role" {
		t.Errorf("access.denied after erasure: %+v", r)
	}
	if r := got[GrantIssued]; r.Subject != bob {
		t.Errorf("bob's grant after alice's erasure: %+v", r)
	}
	// Filtering by actor sees the opened actor.
	n := 0
	if err := Query(ctx, dir, Filter{Keys: keys, Actor: id.id, Types: []string{string(GrantIssued)}}, func(Entry) error { n++; return nil }); err != nil || n != 1 {
		t.Errorf("query by actor: %d records, %v", n, err)
	}
	mustVerify(t, dir, id.kel) // and still verifies
}

// TestSealedValueBoundToPlace: a sealed value moved to another seq or another field does not open.
func TestSealedValueBoundToPlace(t *testing.T) {
	keys := newMemKeys()
	ref, box, _ := keys.Key(context.Background(), "ed25519:x")
	v := ref + ":" + b64.EncodeToString(box.Seal(sealPlace(7, "actor", ref), []byte("secret")))
	tests := []struct {
		name string
		r    Record
		want string
	}{
		{"its place", Record{Seq: 7, Actor: v, Sealed: []string{"actor"}}, "secret"},
		{"another seq", Record{Seq: 8, Actor: v, Sealed: []string{"actor"}}, Unreadable},
		{"another field", Record{Seq: 7, Subject: v, Sealed: []string{"subject"}}, Unreadable},
		{"not sealed", Record{Seq: 7, Actor: "plain", Sealed: []string{"actor"}}, Unreadable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.r
			if _, err := r.Unseal(keys); err != nil {
				t.Fatal(err)
			}
			got := r.Actor
			if r.Sealed[0] == "subject" {
				got = r.Subject
			}
			if got != tc.want {
				t.Errorf("opened %q, want %q", got, tc.want)
			}
		})
	}
}

// TestSealedRecordTooLarge: the size of the sealed record is checked when it is appended.
func TestSealedRecordTooLarge(t *testing.T) {
	id := newIdent(t, keystore.Ed25519, 0)
	o := id.opts(0)
	o.SubjectKeys = newMemKeys()
	l := open(t, filepath.Join(t.TempDir(), "audit"), o)
	defer closeLog(t, l)
	p := peerID(t)
	big := strings.Repeat("a", 50000) // fits in the clear, not once sealed (base64 of the ciphertext)
	if _, err := l.Append(context.Background(), Record{Type: AuthSuccess, Actor: p, Details: map[string]any{"remote": big}}); err == nil {
		t.Fatal("a record too large once sealed was accepted")
	}
	if _, err := l.Append(context.Background(), Record{Type: AuthSuccess, Actor: p, Details: map[string]any{"remote": "192.0.2.1:1"}}); err != nil {
		t.Fatal(err)
	}
}

// FuzzParseSealed: the sealed value parser never panics, and what it accepts re-encodes to its input.
func FuzzParseSealed(f *testing.F) {
	keys := newMemKeys()
	ref, box, _ := keys.Key(context.Background(), "ed25519:x")
	f.Add(ref + ":" + b64.EncodeToString(box.Seal(sealPlace(1, "actor", ref), []byte("x"))))
	f.Add("sk1:AAAAAAAAAAAAAAAAAAAAAA:")
	f.Add("sk1::")
	f.Add("sk2:x:y")
	f.Fuzz(func(t *testing.T, v string) {
		r, ct, err := ParseSealed(v)
		if err != nil {
			return
		}
		if again := r + ":" + b64.EncodeToString(ct); again != v {
			t.Fatalf("accepted %q, re-encodes to %q", v, again)
		}
	})
}
