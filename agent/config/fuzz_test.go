package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParseConfig: the strict configuration decoder never panics, and what it accepts validates again.
func FuzzParseConfig(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("..", "..", "configs", "agent.example.yaml")); err == nil {
		f.Add(b)
	}
	f.Add([]byte("transports:\n  - {name: tcp, plugin: /opt/t, sha256: " + validSum + ", listen: [\"127.0.0.1:0\"]}\n"))
	f.Add([]byte("session: {reauth_interval: 1s}\nredial: {min: 1s, max: 2s}\n"))
	f.Add([]byte("handlers: {x: {builtin: echo}}\n---\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := ParseConfig(in)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted config does not validate again: %v", err)
		}
	})
}
