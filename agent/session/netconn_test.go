package session

import "github.com/custos-agent/custos/agent/session/sessiontest"

// The tests here run handshakes and sessions over net.Pipe and loopback TCP, framed by the test framing of
// sessiontest, under the names they use.
var NewNetConn = sessiontest.NewNetConn

const DefaultMaxFrame = sessiontest.DefaultMaxFrame

var _ FrameConn = (*sessiontest.NetConn)(nil)
