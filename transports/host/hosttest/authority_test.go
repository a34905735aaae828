package hosttest_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/custos-agent/custos/transports/binding"
	"github.com/custos-agent/custos/transports/host"
	"github.com/custos-agent/custos/transports/host/hosttest"
)

func TestIdentityAuthority(t *testing.T) {
	ctx := context.Background()
	a, err := hosttest.NewIdentityAuthority(hosttest.NewSigner(t), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := hosttest.NewIdentityAuthority(hosttest.NewSigner(t), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, _, _ := ed25519.GenerateKey(rand.Reader)
	key2, _, _ := ed25519.GenerateKey(rand.Reader)
	raw, notAfter, err := a.Bind(ctx, "tcp", key)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(notAfter); d < 59*time.Minute || d > time.Hour {
		t.Errorf("expiry in %v, want about 1h", d)
	}
	// Anyone verifies it with nothing but the binding: the agent ID is the signing key.
	id, err := other.Verify(ctx, "tcp", raw, key)
	if err != nil || id != a.AgentID() {
		t.Fatalf("verify: %q %v, want %s", id, err, a.AgentID())
	}

	b, err := binding.Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	tamper := func(f func(*binding.Binding)) []byte {
		c := b
		c.Proof = append([]byte(nil), b.Proof...)
		f(&c)
		return c.Encode()
	}
	tests := []struct {
		name      string
		transport string
		raw       []byte
		key       ed25519.PublicKey
		want      string
	}{
		{"other transport", "ws", raw, key, `for transport "tcp"`},
		{"other key", "tcp", raw, key2, "names another key"},
		{"re-signed for another agent ID", "tcp", tamper(func(c *binding.Binding) { c.AgentID = other.AgentID() }), key, "does not verify"},
		{"extended expiry", "tcp", tamper(func(c *binding.Binding) { c.NotAfter = c.NotAfter.Add(time.Minute) }), key, "does not verify"},
		{"flipped proof bit", "tcp", tamper(func(c *binding.Binding) { c.Proof[0] ^= 1 }), key, "does not verify"},
		{"bad agent ID", "tcp", tamper(func(c *binding.Binding) { c.AgentID = "rsa:AAAA" }), key, "agent ID"},
		{"truncated", "tcp", raw[:len(raw)-1], key, "malformed"},
		{"trailing byte", "tcp", append(append([]byte(nil), raw...), 0), key, "trailing"},
		{"empty", "tcp", nil, key, "malformed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := other.Verify(ctx, tc.transport, tc.raw, tc.key)
			if !errors.Is(err, host.ErrBadBinding) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("verify: %v, want ErrBadBinding mentioning %q", err, tc.want)
			}
		})
	}

	// Expiry is enforced.
	other.SetClock(func() time.Time { return notAfter.Add(time.Second) })
	if _, err := other.Verify(ctx, "tcp", raw, key); !errors.Is(err, host.ErrBadBinding) || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired binding: %v", err)
	}
	// So is an absurdly long lifetime.
	other.SetClock(func() time.Time { return notAfter.Add(-48 * time.Hour) })
	if _, err := other.Verify(ctx, "tcp", raw, key); !errors.Is(err, host.ErrBadBinding) || !strings.Contains(err.Error(), "ahead") {
		t.Errorf("far-future binding: %v", err)
	}
	if _, err := hosttest.NewIdentityAuthority(hosttest.NewSigner(t), 48*time.Hour); err == nil {
		t.Error("48h lifetime accepted")
	}
}
