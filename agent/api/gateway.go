package api

import (
	"context"
	"time"
)

// The HTTP gateway's API keys (agent/gateway; agentctl gateway key). A key is a name, the roles its
// requests carry, an optional expiry and rate; the agent stores only a hash of its token.

// GatewayKeyCreateArgs are OpGatewayKeyCreate's arguments.
type GatewayKeyCreateArgs struct {
	Name  string   `json:"name"`
	Roles []string `json:"roles"`
	// ExpiresSeconds is the key's lifetime (0: it does not expire).
	ExpiresSeconds int64 `json:"expires_seconds,omitempty"`
	// Rate is the key's requests per second (0: gateway.key_rate); its burst is twice that.
	Rate float64 `json:"rate,omitempty"`
}

// GatewayKeyArgs name a key.
type GatewayKeyArgs struct {
	Name string `json:"name"`
}

// GatewayKey is a key as the control API shows it (never its token or hash).
type GatewayKey struct {
	Name    string     `json:"name"`
	ID      string     `json:"id"`
	Roles   []string   `json:"roles"`
	Created time.Time  `json:"created"`
	Expires *time.Time `json:"expires,omitempty"`
	Rate    float64    `json:"rate,omitempty"`
	Revoked *time.Time `json:"revoked,omitempty"`
	// State is valid, expired or revoked.
	State string `json:"state"`
}

// GatewayKeyCreated is a new key and its token: the only time the token is shown.
type GatewayKeyCreated struct {
	Key   GatewayKey `json:"key"`
	Token string     `json:"token"`
}

// GatewayKeyCreate is OpGatewayKeyCreate.
func (c *Client) GatewayKeyCreate(ctx context.Context, a GatewayKeyCreateArgs) (GatewayKeyCreated, error) {
	return call[GatewayKeyCreated](ctx, c, OpGatewayKeyCreate, a)
}

// GatewayKeyList is OpGatewayKeyList.
func (c *Client) GatewayKeyList(ctx context.Context) ([]GatewayKey, error) {
	return call[[]GatewayKey](ctx, c, OpGatewayKeyList, nil)
}

// GatewayKeyRevoke is OpGatewayKeyRevoke.
func (c *Client) GatewayKeyRevoke(ctx context.Context, a GatewayKeyArgs) (GatewayKey, error) {
	return call[GatewayKey](ctx, c, OpGatewayKeyRevoke, a)
}
