package host

import (
	"context"
	"errors"
	"strings"
	"testing"

	pb "github.com/custos-agent/custos/transports/proto"
)

type recordsOnly struct{}

func (recordsOnly) ValidateRecord(context.Context, string, []byte) error        { return nil }
func (recordsOnly) SelectRecord(context.Context, string, [][]byte) (int, error) { return 0, nil }

type gossipVerdict struct {
	recordsOnly
	ignore bool
	err    error
	asked  string // from of the last question
}

func (g *gossipVerdict) ValidateGossip(_ context.Context, _, from string, _ []byte) (bool, error) {
	g.asked = from
	return g.ignore, g.err
}

// TestAnswerGossip: the host's answer to a KIND_GOSSIP question carries its judge's verdict (accept,
// reject, ignore) and the sender; a judge that judges no gossip ignores it; a malformed question is
// rejected before the judge sees it.
func TestAnswerGossip(t *testing.T) {
	q := func(from string, vals ...[]byte) *pb.Question {
		return &pb.Question{Id: 7, Kind: pb.Question_KIND_GOSSIP, Key: "/custos/v1/revocations", From: from, Values: vals}
	}
	msg := []byte("m")
	for _, tc := range []struct {
		name                string
		judge               RecordJudge
		q                   *pb.Question
		valid, ignore, seen bool
	}{
		{"accept", &gossipVerdict{}, q("12D3KooWA", msg), true, false, true},
		{"reject", &gossipVerdict{err: errors.New("bad_signature")}, q("12D3KooWA", msg), false, false, true},
		{"ignore", &gossipVerdict{ignore: true, err: errors.New("not for us")}, q("12D3KooWA", msg), false, true, true},
		{"no gossip judge", recordsOnly{}, q("12D3KooWA", msg), false, true, false},
		{"two messages", &gossipVerdict{}, q("12D3KooWA", msg, msg), false, false, false},
		{"bad sender", &gossipVerdict{}, q("12D3\nKooWA", msg), false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := answer(context.Background(), tc.judge, tc.q)
			if a.GetId() != 7 || a.GetValid() != tc.valid || a.GetIgnore() != tc.ignore {
				t.Fatalf("answer %+v, want valid=%v ignore=%v", a, tc.valid, tc.ignore)
			}
			if !tc.valid && a.GetReason() == "" {
				t.Fatal("a refusal without a reason")
			}
			if g, ok := tc.judge.(*gossipVerdict); ok && (g.asked == "12D3KooWA") != tc.seen {
				t.Fatalf("judge asked with from=%q, want asked=%v", g.asked, tc.seen)
			}
			if tc.name == "two messages" && !strings.Contains(a.GetReason(), "malformed") {
				t.Fatalf("reason %q", a.GetReason())
			}
		})
	}
}
