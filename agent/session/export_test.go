package session

import (
	"encoding/base64"

	"github.com/custos-agent/custos/agent/handshake"
)

func decodeChallengeForTest(f []byte) (*handshake.Challenge, error) {
	return handshake.DecodeChallenge(f)
}
func decodeResponseForTest(f []byte) (*handshake.Response, error) { return handshake.DecodeResponse(f) }

func base64URL(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
