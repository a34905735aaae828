package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestGatewayMailbox: gateway.mailbox parses, zero means the defaults, and each bad value is refused
// naming its key.
func TestGatewayMailbox(t *testing.T) {
	c, err := ParseConfig([]byte("gateway: {mailbox: {max_message_bytes: 4096, per_recipient: 5, total: 50, retention: 2h}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m := c.Gateway.Mailbox; m.MaxMessageBytes != 4096 || m.PerRecipient != 5 || m.Total != 50 || m.Retention != 2*time.Hour {
		t.Fatalf("parsed %+v", m)
	}
	if c, err = ParseConfig(nil); err != nil || c.Gateway.Mailbox != (GatewayMailbox{}) {
		t.Fatalf("default: %+v %v", c.Gateway.Mailbox, err)
	}
	for in, want := range map[string]string{
		"gateway: {mailbox: {max_message_bytes: 2000000}}\n":       "gateway.mailbox.max_message_bytes",
		"gateway: {mailbox: {max_message_bytes: -1}}\n":            "gateway.mailbox.max_message_bytes",
		"gateway: {mailbox: {total: -1}}\n":                        "gateway.mailbox",
		"gateway: {mailbox: {per_recipient: 20, total: 10}}\n":     "per_recipient at most total",
		"gateway: {mailbox: {retention: 10s}}\n":                   "gateway.mailbox.retention",
		"gateway: {mailbox: {colour: red}}\n":                      "unknown key",
		"gateway: {mailbox: {retention: 60}}\n":                    "not a duration",
		"gateway: {mailbox: {per_recipient: 20000, total: 0}}\n":   "per_recipient at most total",
		"gateway: {mailbox: {total: 2000000, per_recipient: 1}}\n": "total at most 1000000",
	} {
		if _, err := ParseConfig([]byte(in)); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want ErrConfig mentioning %q", strings.TrimSpace(in), err, want)
		}
	}
}
