package discovery

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/delegation"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/suite"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/internal/vectors"
	"github.com/custos-agent/custos/keystore"
)

const goldenFile = "testdata/record-vector.txt"

func fixedSigner(t *testing.T, b byte) keystore.Signer {
	t.Helper()
	s, err := keystore.NewMemorySigner(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func wrapHex(b []byte) string {
	h := hex.EncodeToString(b)
	var out strings.Builder
	for len(h) > 96 {
		out.WriteString("    " + h[:96] + "\n")
		h = h[96:]
	}
	out.WriteString("    " + h + "\n")
	return out.String()
}

// TestGoldenRecord: one agent record made with fixed keys and times (docs/protocol.md "Agent records"
// quotes it). Everything in it is deterministic (Ed25519 signatures, a fixed X25519 encryption key), so
// the file must come out byte for byte the same, and it must verify.
func TestGoldenRecord(t *testing.T) {
	now := time.Unix(1767225600, 0) // 2026-01-01T00:00:00Z
	idKey, next, op := fixedSigner(t, 0xa0), fixedSigner(t, 0xa1), fixedSigner(t, 0xa2)
	ev, err := identity.Incept(ctx, idKey, next.Public(), keystore.PublicKey{}, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	log := identity.Log{Events: []identity.Event{ev}}
	st, err := log.Verify()
	if err != nil {
		t.Fatal(err)
	}
	x, err := ecdh.X25519().NewPrivateKey(bytes.Repeat([]byte{0xa3}, 32))
	if err != nil {
		t.Fatal(err)
	}
	d, err := delegation.Issue(ctx, idKey, st, delegation.Delegated, op.Public(), suite.KEMX25519, x.PublicKey().Bytes(), now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	peerID := "12D3KooWBmwkafWE2fqfzS96VoTZGCHB9apZyBKqmLKrCUFyRaDP"
	r := &Record{AgentID: st.ID.String(), Generation: st.Generation, Head: st.Head, PeerID: peerID,
		Addrs: []Addr{{"libp2p", "/ip4/127.0.0.1/tcp/4001/p2p/" + peerID}, {"tcp", "127.0.0.1:7000"}},
		Seq:   uint64(now.UnixMilli()), Expires: now.Add(time.Hour).Unix(), KeyLog: log.Encode()}
	if err := Sign(ctx, op, d.Encode(), r); err != nil {
		t.Fatal(err)
	}
	cache, err := peers.Open(t.TempDir() + "/peers.db")
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	if _, err := Verify(r.Encode(), Key(r.AgentID), cache, now); err != nil {
		t.Fatalf("the golden record does not verify: %v", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "time: %d (2026-01-01T00:00:00Z)\n", now.Unix())
	fmt.Fprintf(&b, "identity key: Ed25519 seed a0 x 32; next key seed a1 x 32; operational key seed a2 x 32; X25519 encryption key a3 x 32\n")
	fmt.Fprintf(&b, "agent ID: %s\nDHT key: %s\n", r.AgentID, Key(r.AgentID))
	fmt.Fprintf(&b, "key event log (kel.jsonl): %s", log.Encode())
	fmt.Fprintf(&b, "delegation (%d bytes):\n%s", len(r.Delegation), wrapHex(r.Delegation))
	fmt.Fprintf(&b, "record signing input (%d bytes):\n%s", len(r.SigningInput()), wrapHex(r.SigningInput()))
	fmt.Fprintf(&b, "record (%d bytes):\n%s", len(r.Encode()), wrapHex(r.Encode()))
	checkGolden(t, goldenFile, "record", b.String())
}

// checkGolden compares got with the golden file (rewriting it first under CUSTOS_UPDATE_VECTORS=1)
// and returns the file's text; what names the vector in the failure.
func checkGolden(t *testing.T, file, what, got string) []byte {
	t.Helper()
	if vectors.Update() {
		if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	golden, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if string(golden) != got {
		t.Errorf("the golden %s changed; if on purpose, regenerate with CUSTOS_UPDATE_VECTORS=1 and update docs/protocol.md:\n%s", what, got)
	}
	return golden
}
