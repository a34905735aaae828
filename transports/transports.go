// Package transports holds what the agent host and its transport plugins share: the frame limits, the
// go-plugin handshake constants, the possession proof of a transport key, and a length-prefixed frame
// codec for byte-stream transports. The plugin protocol itself is in transports/proto; the host side
// (launch, supervise, verify) in transports/host; the plugin side in transports/plugin; each transport in
// its own package (tcp, ws, libp2p, and memory in process), each passing the conformance suite of
// transports/transporttest. See docs/adr/0015 to 0018.
package transports

import (
	"bufio"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/custos-agent/custos/signature"
)

// Limits of what crosses the plugin boundary and the network.
const (
	// MaxFrameSize is the largest frame, in bytes, a connection carries (4 MiB).
	MaxFrameSize = 4 << 20
	// MaxBindingSize is the largest encoded transport binding accepted anywhere.
	MaxBindingSize = 8 << 10
	// MaxRecordSize is the largest DHT record (an agent record, ADR 0070) that crosses the plugin boundary.
	MaxRecordSize = 64 << 10
	// MaxRecordKeyLen is the longest DHT key.
	MaxRecordKeyLen = 256
	// MaxSelectValues is the most records one select question carries.
	MaxSelectValues = 64
	// MaxGossipSize is the largest gossip message (ADR 0091) that crosses the plugin boundary or a
	// gossipsub topic.
	MaxGossipSize = 64 << 10
	// Catch-up of revocations when a session comes up (ADR 0096; docs/protocol.md "Catch-up of
	// revocations"). MaxCatchupOffer bounds the (grant, issuer) entries of one offer (an agent holding
	// more offers the newest); MaxCatchupWant the grants of one want and the revocations of one batch;
	// MaxCatchupRounds the wants one side sends, and answers, per session; MaxCatchupMessage the payload
	// of one revocation_sync message (offer, want or batch), under the envelope's data limit.
	// MaxCatchupServed is the wants one side answers per peer and session (twice the rounds: the
	// wants of an offer from a replaced session may still arrive); MaxCatchupQueued the grants queued
	// or asked for over all peers; MaxCatchupPeers the peers with catch-up state (emptied when full).
	MaxCatchupOffer   = 4096
	MaxCatchupWant    = 256
	MaxCatchupRounds  = 16
	MaxCatchupMessage = 960 << 10
	MaxCatchupServed  = 2 * MaxCatchupRounds
	MaxCatchupQueued  = 16 * MaxCatchupOffer
	MaxCatchupPeers   = 4096
	// MaxCatchupBlocks bounds the block notices one side sends in catch-up per session (ADR 0101): the
	// newest it holds that have not ended, in one message.
	MaxCatchupBlocks = 64
	// MaxAddrLen is the largest address string accepted from a plugin.
	MaxAddrLen = 1024
	// MaxAddrs is the most addresses a listener may report.
	MaxAddrs = 32
	// FrameCost is the flow-control cost of a frame beyond its length, so empty frames still use credit.
	FrameCost = 64
	// MaxGRPCMessage is the gRPC message limit on both sides: one full frame plus protobuf overhead.
	MaxGRPCMessage = MaxFrameSize + 16<<10
	// GRPCStreamWindow and GRPCConnWindow are the HTTP/2 flow-control windows of the plugin connection
	// (fixed, so that a 64 KiB frame never waits for a window update; what bounds memory is the
	// explicit credit of each frame stream).
	GRPCStreamWindow = 4 << 20
	GRPCConnWindow   = 16 << 20
)

// go-plugin handshake between the host and its transport plugins. A binary that is not a Custos transport
// plugin (or speaks another protocol version) fails the handshake and is not used.
const (
	MagicCookieKey   = "CUSTOS_TRANSPORT_PLUGIN"
	MagicCookieValue = "4d1b0b3e-custos-transport-v1"
	ProtocolVersion  = 1
	// PluginName is the go-plugin plugin-set key under which every transport plugin serves.
	PluginName = "transport"
)

// Errors shared by both sides.
var (
	// ErrFrameTooLarge: a frame exceeds MaxFrameSize.
	ErrFrameTooLarge = errors.New("frame too large")
	// ErrClosed: the connection or listener was closed locally.
	ErrClosed = errors.New("closed")
	// ErrPeerMismatch: a dial reached a peer whose (valid) binding names another agent than the one
	// the dial expected. Every transport's Dial wraps it then (transports/host, transports/memory).
	ErrPeerMismatch = errors.New("peer is not the expected agent")
)

// KeyProofInput is what a plugin signs to prove it holds the private half of its transport key: the
// context "custos/v1/transport-key-proof\x00", then the transport name, the host's nonce and the raw key.
func KeyProofInput(transport string, nonce []byte, pub ed25519.PublicKey) []byte {
	return signature.NewInput(signature.TransportKeyProof).String(transport).Bytes(nonce).Bytes(pub).Message()
}

// ValidName reports whether s is an acceptable transport name: 1 to 32 of [a-z0-9-], starting with a letter.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 32 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// CheckText refuses strings a plugin or peer could use to smuggle content into logs or policies: empty,
// longer than max, invalid UTF-8, or containing control characters.
func CheckText(what, s string, max int) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is empty", what)
	case len(s) > max:
		return fmt.Errorf("%s is %d bytes long (limit %d)", what, len(s), max)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s is not valid UTF-8", what)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%s %q contains a control character", what, s)
		}
	}
	return nil
}

// WriteFrame writes one frame as a 4-byte big-endian length followed by its bytes.
func WriteFrame(w io.Writer, frame []byte) error {
	if len(frame) > MaxFrameSize {
		return fmt.Errorf("write frame of %d bytes: %w (limit %d)", len(frame), ErrFrameTooLarge, MaxFrameSize)
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(frame)))
	if bw, ok := w.(*bufio.Writer); ok {
		if _, err := bw.Write(hdr[:]); err != nil {
			return err
		}
		if _, err := bw.Write(frame); err != nil {
			return err
		}
		return bw.Flush()
	}
	_, err := w.Write(append(hdr[:], frame...))
	return err
}

// ReadFrame reads one frame written by WriteFrame. A length above MaxFrameSize is refused before anything
// is allocated. A clean end of stream before the length is io.EOF; inside a frame, io.ErrUnexpectedEOF.
func ReadFrame(r io.Reader) ([]byte, error) { return ReadFrameLimit(r, MaxFrameSize) }

// ReadFrameLimit is ReadFrame with a smaller limit (e.g. MaxBindingSize for a binding preamble).
func ReadFrameLimit(r io.Reader, limit int) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if uint64(n) > uint64(limit) {
		return nil, fmt.Errorf("peer announced a frame of %d bytes: %w (limit %d)", n, ErrFrameTooLarge, limit)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return buf, nil
}

// TopicRevocations is the gossipsub topic of grant revocations (ADR 0091); TopicKeyLogs that of key
// event logs: rotation notices and compromise evidence (ADR 0097). docs/protocol.md, "Gossip topics".
const (
	TopicRevocations = "/custos/v1/revocations"
	TopicKeyLogs     = "/custos/v1/key-logs"
	// TopicBlocks: administrators' block and unblock notices (ADR 0101).
	TopicBlocks = "/custos/v1/blocks"
)

// GossipTopics lists the topics plugins join (and the only ones they publish on).
func GossipTopics() []string { return []string{TopicRevocations, TopicKeyLogs, TopicBlocks} }
