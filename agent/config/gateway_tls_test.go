package config

import (
	"errors"
	"strings"
	"testing"
)

// TestGatewayTLSBindAgentID: gateway.tls.bind_agent_id serves TLS without files, on any address; it is
// exclusive with cert_file/key_file, and a non-loopback address with neither is refused with one error
// naming both choices.
func TestGatewayTLSBindAgentID(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		tls      bool
		err      string // "" = accepted
	}{
		{"bound, non-loopback", "gateway: {listen: '0.0.0.0:8443', tls: {bind_agent_id: true}}\n", true, ""},
		{"bound, loopback", "gateway: {listen: '127.0.0.1:8443', tls: {bind_agent_id: true}}\n", true, ""},
		{"files", "gateway: {listen: '0.0.0.0:8443', tls: {cert_file: /c.pem, key_file: /k.pem}}\n", true, ""},
		{"plain loopback", "gateway: {listen: '127.0.0.1:8080'}\n", false, ""},
		{"both", "gateway: {listen: '0.0.0.0:8443', tls: {bind_agent_id: true, cert_file: /c.pem, key_file: /k.pem}}\n", true, "bind_agent_id and cert_file/key_file are exclusive"},
		{"neither, non-loopback", "gateway: {listen: '0.0.0.0:8443'}\n", false, "gateway.tls.bind_agent_id: true"},
		{"bound with client pins", "gateway: {listen: '0.0.0.0:8443', tls: {bind_agent_id: true, client_fingerprints: [" + strings.Repeat("ab", 32) + "]}}\n", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.in))
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.Gateway.UseTLS() != tc.tls {
					t.Fatalf("UseTLS %v, want %v", c.Gateway.UseTLS(), tc.tls)
				}
				return
			}
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err %v, want ErrConfig mentioning %q", err, tc.err)
			}
		})
	}
}
