package tasks

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/custos-agent/custos/agent/envelope"
)

type eventLog struct {
	mu  sync.Mutex
	evs []Event
}

func (l *eventLog) add(ev Event) {
	l.mu.Lock()
	l.evs = append(l.evs, ev)
	l.mu.Unlock()
}

func (l *eventLog) find(kind, id string) *Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range l.evs {
		if l.evs[i].Kind == kind && l.evs[i].TaskID == id {
			ev := l.evs[i]
			return &ev
		}
	}
	return nil
}

// TestTimeoutCancelAndServed: a submitted task whose result never arrives fails with code timeout after
// Config.Timeout ("timed_out", naming its executor), and a result that comes later is acknowledged and
// dropped; a pending task can be cancelled (once); a verified result reports what its executor served.
func TestTimeoutCancelAndServed(t *testing.T) {
	n := newNet()
	a, b := newAgent(t, n), newAgent(t, n)
	a.knows(b)
	b.knows(a)
	var evs eventLog
	a.cfg = func(c *Config) { c.Timeout = 400 * time.Millisecond; c.OnEvent = evs.add }
	a.start(t, nil, 50*time.Millisecond)
	b.start(t, Registry{"echo": Echo()}, 50*time.Millisecond)

	// The result of one task is lost on the way until the task timed out.
	var mu sync.Mutex
	dropping := true
	n.mu.Lock()
	n.drop = func(m msg, to string) bool {
		mu.Lock()
		defer mu.Unlock()
		return dropping && m.t == envelope.TaskResult
	}
	n.mu.Unlock()
	o, err := a.eng.Submit(context.Background(), b.id, "echo", []byte("lost"))
	if err != nil {
		t.Fatal(err)
	}
	got := wait(t, a.eng, o.TaskID)
	if got.State != OutFailed || got.ErrorCode != CodeTimeout {
		t.Fatalf("a task without a result: state %s code %q (%s), want failed timeout", got.State, got.ErrorCode, got.Error)
	}
	if ev := evs.find("timed_out", o.TaskID); ev == nil || ev.Peer != b.id || ev.Status != CodeTimeout {
		t.Fatalf("timed_out event: %+v", ev)
	}
	mu.Lock()
	dropping = false
	mu.Unlock()
	eventually(t, "the late result acknowledged (the executor forgets the task)", func() bool {
		in, _ := b.store.Inbound(a.id, o.TaskID)
		return in == nil
	})
	if got, _ := a.eng.Get(o.TaskID); got.State != OutFailed || got.ErrorCode != CodeTimeout || len(got.Evidence) != 0 {
		t.Fatalf("after the late result: state %s code %q evidence %d bytes, want still failed timeout", got.State, got.ErrorCode, len(got.Evidence))
	}

	// Cancel: a task pending for an unreachable peer.
	n.setDown(b.id, true)
	p, err := a.eng.Submit(context.Background(), b.id, "echo", []byte("never mind"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := a.eng.Cancel(p.TaskID)
	if err != nil || c.State != OutFailed || c.ErrorCode != CodeCancelled {
		t.Fatalf("Cancel: %v %+v", err, c)
	}
	if ev := evs.find("cancelled", p.TaskID); ev == nil || ev.Peer != b.id {
		t.Fatalf("cancelled event: %+v", ev)
	}
	if _, err := a.eng.Cancel(p.TaskID); !errors.Is(err, ErrFinal) {
		t.Fatalf("cancel twice: %v, want ErrFinal", err)
	}
	if _, err := a.eng.Cancel(NewTaskID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cancel an unknown task: %v, want ErrNotFound", err)
	}
	if evs.find("timed_out", p.TaskID) != nil {
		t.Fatal("a cancelled task also timed out")
	}

	// Served: a delivered result reports the bytes of input and output and a run time within the wait.
	n.setDown(b.id, false)
	a.eng.PeerUp(b.id)
	in := []byte("served input")
	s, err := a.eng.Submit(context.Background(), b.id, "echo", in)
	if err != nil {
		t.Fatal(err)
	}
	if got := wait(t, a.eng, s.TaskID); got.State != OutDone {
		t.Fatalf("state %s (%s)", got.State, got.Error)
	}
	ev := evs.find("result", s.TaskID)
	if ev == nil || ev.Served == nil || ev.Served.Bytes != int64(2*len(in)) || ev.Served.Seconds < 0 || ev.Served.Seconds > 10 {
		t.Fatalf("result event's Served: %+v", ev)
	}
}

func TestServedBounded(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	o := &Outbound{Submitted: now.Add(-3 * time.Second), Input: make([]byte, 10)}
	// An executor claiming an hour of work for a task answered in 3 s is credited 3 s.
	got := served(o, &ResultDoc{Started: now.Unix() - 3600, Finished: now.Unix(), Output: make([]byte, 5)}, now)
	if got.Seconds != 3 || got.Bytes != 15 {
		t.Fatalf("served %+v, want 3 s and 15 bytes", got)
	}
	// Finished before started: nothing.
	if got := served(o, &ResultDoc{Started: now.Unix(), Finished: now.Unix() - 5}, now); got.Seconds != 0 {
		t.Fatalf("served %+v", got)
	}
}
