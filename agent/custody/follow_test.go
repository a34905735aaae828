package custody

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
	"github.com/custos-agent/custos/keystore"
)

func TestFollowerReload(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("boom")
	cases := []struct {
		name        string
		rotate      bool
		failSwitch  int // index of the Switch that fails, -1 none
		wantRotated bool
		wantCalls   []string
		wantErr     error
	}{
		{"no change", false, -1, false, nil, nil},
		{"rotation switches every part, in order, then Switched", true, -1, true, []string{"audit:1", "delegation:1", "switched:1<-0"}, nil},
		{"a failing switch stops the rest", true, 0, false, []string{"audit:1"}, boom},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			_ = e.init(false).Close()
			daemon, cli := e.open(), e.open()
			if c.rotate {
				if _, err := cli.Rotate(ctx, RotateRequest{Grace: time.Hour}); err != nil {
					t.Fatal(err)
				}
			}
			var calls []string
			var events int
			sw := func(name string, i int) func(context.Context, keystore.Signer, uint64, identity.State) error {
				return func(_ context.Context, s keystore.Signer, g uint64, st identity.State) error {
					calls = append(calls, name+":"+string(rune('0'+g)))
					if !s.Public().Equal(st.Current) {
						t.Errorf("%s was handed a signer that is not the current key", name)
					}
					if i == c.failSwitch {
						return boom
					}
					return nil
				}
			}
			f := &Follower{Custody: daemon,
				KeyEvents: func(before, after []Generation, _ identity.Log, actor, source string) []audit.Record {
					events++
					if actor != "operator" || source != SourceDaemon {
						t.Errorf("actor %q, source %q", actor, source)
					}
					return KeyEventRecords(before, after, identity.Log{}, actor, source)
				},
				Switch: []func(context.Context, keystore.Signer, uint64, identity.State) error{sw("audit", 0), sw("delegation", 1)},
				Switched: func(_ context.Context, g, prev uint64) {
					calls = append(calls, "switched:"+string(rune('0'+g))+"<-"+string(rune('0'+prev)))
				},
			}
			rotated, _, err := f.Reload(ctx, "operator")
			if rotated != c.wantRotated || !errors.Is(err, c.wantErr) || (c.wantErr == nil && err != nil) {
				t.Fatalf("Reload = %v, %v; want %v, %v", rotated, err, c.wantRotated, c.wantErr)
			}
			if !slices.Equal(calls, c.wantCalls) {
				t.Fatalf("calls %v, want %v", calls, c.wantCalls)
			}
			if events != 1 {
				t.Fatalf("key events asked %d times, want once", events)
			}
		})
	}
}

// Change: the holder's own change (the schedule's rotation) is recorded with its source; its error is
// returned alone when it changed nothing, and beside the switch when it changed something first.
func TestFollowerChange(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("boom")
	cases := []struct {
		name        string
		rotate      bool
		wantRotated bool
		wantRecs    bool
		wantSwitch  int
	}{
		{"fails before changing anything", false, false, false, 0},
		{"rotates, then fails", true, true, true, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			_ = e.init(false).Close()
			h := e.open()
			switched := 0
			var sources []string
			f := &Follower{Custody: h,
				KeyEvents: func(before, after []Generation, kel identity.Log, actor, source string) []audit.Record {
					sources = append(sources, source)
					return KeyEventRecords(before, after, kel, actor, source)
				},
				Switch: []func(context.Context, keystore.Signer, uint64, identity.State) error{
					func(context.Context, keystore.Signer, uint64, identity.State) error { switched++; return nil }},
			}
			rotated, recs, err := f.Change(ctx, "agent", SourceSchedule, func(ctx context.Context) error {
				if c.rotate {
					if _, err := h.Rotate(ctx, RotateRequest{Grace: time.Hour}); err != nil {
						t.Fatal(err)
					}
				}
				return boom
			})
			if !errors.Is(err, boom) || rotated != c.wantRotated || (len(recs) > 0) != c.wantRecs || switched != c.wantSwitch {
				t.Fatalf("Change = %v, %d records, %v; switched %d", rotated, len(recs), err, switched)
			}
			if !slices.Equal(sources, []string{SourceSchedule}) {
				t.Fatalf("key events recorded with sources %v", sources)
			}
		})
	}
}
