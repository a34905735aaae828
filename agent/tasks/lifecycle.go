package tasks

import (
	"errors"
	"fmt"
	"time"
)

// expire fails every submitted task that has had no result for Config.Timeout since it was submitted
// (CodeTimeout) and reports it ("timed_out"): the agent stops sending it, and its executor is charged
// with a failure (agent/events). A result that comes later is acknowledged and dropped.
func (e *Engine) expire() {
	outs, err := e.store.ListOutbound()
	if err != nil {
		e.cfg.Logger.Warn("task store", "err", err)
		return
	}
	now := e.cfg.Clock().UTC()
	for _, o := range outs {
		if Final(o.State) || now.Sub(o.Submitted) < e.cfg.Timeout {
			continue
		}
		var changed bool
		_, err := e.store.UpdateOutbound(o.TaskID, func(r *Outbound) error {
			if Final(r.State) {
				return nil
			}
			r.State, r.ErrorCode, r.Updated = OutFailed, CodeTimeout, now
			r.Error = fmt.Sprintf("no result within %v (tasks.timeout); the task was %s after %d attempts", e.cfg.Timeout, o.State, o.Attempts)
			changed = true
			return nil
		})
		if err != nil {
			e.cfg.Logger.Warn("task timeout not recorded", "task", o.TaskID, "err", err)
			continue
		}
		if changed {
			e.cfg.Logger.Warn("submitted task timed out", "task", o.TaskID, "to", o.To, "state", o.State, "timeout", e.cfg.Timeout)
			e.event(Event{Kind: "timed_out", TaskID: o.TaskID, Peer: o.To, Handler: o.Handler, Status: CodeTimeout,
				Err: fmt.Errorf("no result within %v", e.cfg.Timeout)})
			e.changed(o.TaskID) // after the event: a Wait that returns the failure finds it reported
		}
	}
}

// ErrFinal: the task already has its outcome (Cancel).
var ErrFinal = errors.New("the task already has its outcome")

// Cancel gives up the submitted task id: it fails with CodeCancelled, is no longer sent, and a result that
// comes later is acknowledged and dropped. The executor is not charged. A task that is already done or
// failed is refused (ErrFinal); an unknown one is ErrNotFound.
func (e *Engine) Cancel(id string) (*Outbound, error) {
	var prior string
	o, err := e.store.UpdateOutbound(id, func(r *Outbound) error {
		if Final(r.State) {
			return fmt.Errorf("%w: task %s is %s", ErrFinal, id, r.State)
		}
		prior = r.State
		r.State, r.ErrorCode, r.Error, r.Updated = OutFailed, CodeCancelled, "cancelled by the submitter (agentctl task cancel) while "+r.State, e.cfg.Clock().UTC()
		return nil
	})
	if err != nil {
		return nil, err
	}
	e.event(Event{Kind: "cancelled", TaskID: id, Peer: o.To, Handler: o.Handler, Status: CodeCancelled, Err: fmt.Errorf("cancelled while %s", prior)})
	e.changed(id)
	return o, nil
}

// served is what the executor contributed to a result: its signed run time (finished - started, whole
// seconds as signed), never more than this agent waited for the result, and the bytes of input and output.
func served(o *Outbound, doc *ResultDoc, now time.Time) *Served {
	secs := float64(doc.Finished - doc.Started)
	waited := now.Sub(o.Submitted).Seconds()
	secs = max(0, min(secs, waited))
	return &Served{Seconds: secs, Bytes: int64(len(o.Input)) + int64(len(doc.Output))}
}
