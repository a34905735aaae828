// Package erasure is subject access and erasure on request (docs/privacy.md, ADR 0092): for one agent
// ID, what every store holds about it (data.export) and its removal from every store (data.erase),
// except what is kept as security evidence or under legal obligation, which both say, with the reason.
// An erasure is audited with a data.erased record that carries the counts per store and nothing about
// the subject but its ID. Its dependencies are explicit: each store is a small interface with the two
// methods it needs (what it holds about a subject, its erasure).
package erasure

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/agent/consensus"
	"github.com/custos-agent/custos/agent/control"
	"github.com/custos-agent/custos/agent/peers"
	"github.com/custos-agent/custos/agent/rbac"
	"github.com/custos-agent/custos/agent/reputation"
	"github.com/custos-agent/custos/agent/tasks"
	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
)

// Store names, as docs/privacy.md names the stores (the keys of DataExport.Held and DataErased.Removed).
const (
	StorePeers      = "peers"              // peers.kel, peers.kel.used, peers.delegations
	StoreCompromise = "peers.compromised"  // kept
	StoreReputation = "reputation/peers"   // an operator's block is kept
	StoreGrants     = "rbac/grants"        // grants about the subject
	StoreEvidence   = "consensus/evidence" // signed results of the subject that lost a vote
	StoreTasks      = "tasks"              // tasks.in, tasks.out and their inputs
	StoreHeld       = "authz/own-grants"   // kept: grants the subject issued to this agent
	StoreAudit      = "audit"              // kept: records naming the subject in the clear (before ADR 0099)
	// StoreAuditKeys is the subject's audit key (audit/subjectkeys): erasure destroys it, which
	// crypto-shreds every audit field sealed under it (ADR 0099). In an export, the audit records whose
	// fields are sealed under it are held under StoreAudit (opened).
	StoreAuditKeys = "audit/subject-keys"
)

// Why each kept store is kept (shown in an export and in the result of an erasure).
const (
	WhyCompromise = "security evidence: the agent's key event log forked; the mark and the log are kept so that the identity stays refused (legitimate interest of every peer)"
	WhyBlock      = "security decision: an operator blocked the agent; kept until unblocked (agentctl peers unblock)"
	WhyHeld       = "grants the subject issued to this agent: this agent's own authorization, kept until they expire or are removed (agentctl grant remove)"
	WhyAudit      = "audit records written before per-subject sealing (record version 2) name the subject in the clear; they are kept under legitimate interest and legal obligation (accountability; the log is hash-chained and signed), until audit retention removes their segment (privacy.retention.audit)"
)

// Peers is the peer cache (agent/peers).
type Peers interface {
	Subject(id string) (peers.Subject, error)
	EraseSubject(id string) (removed int, kept bool, err error)
}

// Reputation is the reputation store (agent/reputation).
type Reputation interface {
	Subject(identity.ID) *reputation.Report
	EraseSubject(ctx context.Context, id identity.ID) (removed int, kept bool, err error)
}

// Grants is the authorizer's grants (agent/rbac).
type Grants interface {
	Grants(subject identity.ID) []rbac.Grant
	EraseSubject(ctx context.Context, subject identity.ID) (int, error)
}

// Held is the grants this agent holds (agent/rbac.HeldGrants).
type Held interface {
	List() ([]rbac.Grant, error)
}

// Evidence is the consensus evidence store (agent/consensus).
type Evidence interface {
	ByPeer(identity.ID) ([]consensus.Evidence, error)
	EraseSubject(identity.ID) (int, error)
}

// Tasks is the task store (agent/tasks).
type Tasks interface {
	Subject(id string) (tasks.Subject, error)
	EraseSubject(id string) (int, error)
}

// AuditLog is the running audit log: the data.erased record, then a checkpoint that signs it.
type AuditLog interface {
	Append(ctx context.Context, r audit.Record) (uint64, error)
	Checkpoint(ctx context.Context) error
}

// AuditKeys is the audit log's subject key store (audit/subjectkeys).
type AuditKeys interface {
	audit.KeyLookup
	Ref(subject string) (ref string, ok bool, err error)
	Destroy(subject string) (ref string, ok bool, err error)
}

// Deps are the stores and the audit log.
type Deps struct {
	Self       identity.ID
	Peers      Peers
	Reputation Reputation
	Grants     Grants
	Held       Held
	Evidence   Evidence
	Tasks      Tasks
	Audit      AuditLog
	AuditDir   string           // the audit segments, read for the records naming the subject
	AuditKeys  AuditKeys        // the subject keys of the audit log's sealed fields (nil: none)
	Now        func() time.Time // default time.Now
}

// Service is the control API's data.export and data.erase (permission manage_security).
func Service(d Deps) api.Service {
	return api.Handlers{
		api.OpDataExport: func(ctx context.Context, _ rbac.Cred, raw json.RawMessage) (any, error) {
			id, err := d.subject(raw)
			if err != nil {
				return nil, err
			}
			return d.Export(ctx, id)
		},
		api.OpDataErase: func(ctx context.Context, c rbac.Cred, raw json.RawMessage) (any, error) {
			id, err := d.subject(raw)
			if err != nil {
				return nil, err
			}
			return d.Erase(ctx, fmt.Sprintf("uid:%d", c.UID), id)
		},
	}
}

func (d Deps) subject(raw json.RawMessage) (identity.ID, error) {
	var a api.DataSubjectArgs
	if err := control.DecodeArgs(raw, &a); err != nil {
		return identity.ID{}, err
	}
	id, err := identity.ParseID(a.Subject)
	if err != nil {
		return identity.ID{}, control.Errorf(control.CodeBadRequest, "subject %q: %v: give the agent ID (as agentctl peers shows it)", a.Subject, err)
	}
	if id.Equal(d.Self) {
		return identity.ID{}, control.Errorf(control.CodeBadRequest, "%s is this agent: its own data is the operator's (its home directory), not a subject's", id)
	}
	return id, nil
}

func (d Deps) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

// Export returns everything the stores hold about id: Held (what an erasure removes) and Kept.
func (d Deps) Export(ctx context.Context, id identity.ID) (api.DataExport, error) {
	out := api.DataExport{Subject: id.String(), Generated: d.now().UTC(), Held: map[string]json.RawMessage{}, Kept: []api.DataKept{}}
	s := id.String()
	add := func(store string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("export %s: %w", store, err)
		}
		out.Held[store] = b
		return nil
	}
	keep := func(store, why string, n int, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("export %s: %w", store, err)
		}
		out.Kept = append(out.Kept, api.DataKept{Store: store, Count: n, Reason: why, Items: b})
		return nil
	}
	p, err := d.Peers.Subject(s)
	if err != nil {
		return out, err
	}
	if p.Compromise != nil {
		if err := keep(StoreCompromise, WhyCompromise, 1, p); err != nil {
			return out, err
		}
	} else if !p.Empty() {
		if err := add(StorePeers, p); err != nil {
			return out, err
		}
	}
	if r := d.Reputation.Subject(id); r != nil {
		if r.Manual {
			err = keep(StoreReputation, WhyBlock, 1, r)
		} else {
			err = add(StoreReputation, r)
		}
		if err != nil {
			return out, err
		}
	}
	if g := d.Grants.Grants(id); len(g) > 0 {
		if err := add(StoreGrants, encodeGrants(g)); err != nil {
			return out, err
		}
	}
	ev, err := d.Evidence.ByPeer(id)
	if err != nil {
		return out, err
	}
	if len(ev) > 0 {
		if err := add(StoreEvidence, ev); err != nil {
			return out, err
		}
	}
	ts, err := d.Tasks.Subject(s)
	if err != nil {
		return out, err
	}
	if len(ts.Inbound)+len(ts.Outbound) > 0 {
		if err := add(StoreTasks, ts); err != nil {
			return out, err
		}
	}
	if held, err := d.heldFrom(s); err != nil {
		return out, err
	} else if len(held) > 0 {
		if err := keep(StoreHeld, WhyHeld, len(held), encodeGrants(held)); err != nil {
			return out, err
		}
	}
	sealed, clearRecs, err := d.auditRecords(ctx, s)
	if err != nil {
		return out, err
	}
	if len(sealed) > 0 {
		if err := add(StoreAudit, sealed); err != nil {
			return out, err
		}
	}
	if len(clearRecs) > 0 {
		if err := keep(StoreAudit, WhyAudit, len(clearRecs), clearRecs); err != nil {
			return out, err
		}
	}
	return out, nil
}

func encodeGrants(gs []rbac.Grant) []string {
	out := make([]string, len(gs))
	for i, g := range gs {
		out[i] = string(g.Encode())
	}
	return out
}

func (d Deps) heldFrom(issuer string) ([]rbac.Grant, error) {
	if d.Held == nil {
		return nil, nil
	}
	all, err := d.Held.List()
	if err != nil {
		return nil, err
	}
	var out []rbac.Grant
	for _, g := range all {
		if g.Issuer == issuer {
			out = append(out, g)
		}
	}
	return out, nil
}

// SealedRecord is an audit record with fields sealed under the subject's key, opened for an export.
type SealedRecord struct {
	Seq     uint64         `json:"seq"`
	Time    time.Time      `json:"time"`
	Type    string         `json:"type"`
	Actor   string         `json:"actor"`
	Subject string         `json:"subject"`
	Outcome string         `json:"outcome"`
	Details map[string]any `json:"details"`
	Sealed  []string       `json:"sealed"`
}

// auditRecords returns the audit records that name s: those with fields sealed under s's key, opened
// (an erasure shreds them), and the stored lines of those that name it in the clear (actor, subject or
// any string in their details: records written before sealing, or without a key store).
func (d Deps) auditRecords(ctx context.Context, s string) (sealed []SealedRecord, clearRecs []json.RawMessage, err error) {
	ref := ""
	if d.AuditKeys != nil {
		r, ok, err := d.AuditKeys.Ref(s)
		if err != nil {
			return nil, nil, fmt.Errorf("audit key of %s: %w", s, err)
		}
		if ok {
			ref = r
		}
	}
	err = audit.Query(ctx, d.AuditDir, audit.Filter{}, func(e audit.Entry) error {
		if ref != "" && slices.Contains(e.Refs(), ref) {
			r := e.Record
			if _, err := r.Unseal(d.AuditKeys); err != nil {
				return err
			}
			sealed = append(sealed, SealedRecord{Seq: r.Seq, Time: r.Time, Type: string(r.Type), Actor: r.Actor, Subject: r.Subject,
				Outcome: string(r.Outcome), Details: r.Details, Sealed: r.Sealed})
			return nil
		}
		if e.Actor == s || e.Subject == s || mentions(e.Details, s) {
			clearRecs = append(clearRecs, append(json.RawMessage(nil), e.Raw...))
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("audit records of %s (%s): %w", s, filepath.Base(d.AuditDir), err)
	}
	return sealed, clearRecs, nil
}

func mentions(v any, s string) bool {
	switch x := v.(type) {
	case string:
		return strings.Contains(x, s)
	case map[string]any:
		for _, e := range x {
			if mentions(e, s) {
				return true
			}
		}
	case []any:
		for _, e := range x {
			if mentions(e, s) {
				return true
			}
		}
	case []string:
		for _, e := range x {
			if strings.Contains(e, s) {
				return true
			}
		}
	}
	return false
}

// Erase removes what the stores hold about id, except what is kept (Kept, with the reason), and writes
// the data.erased audit record (actor: who asked) and a checkpoint that signs it. A store that fails
// stops the erasure with erasure_incomplete, naming what was removed so far (running it again finishes
// it); the audit record is written either way.
func (d Deps) Erase(ctx context.Context, actor string, id identity.ID) (api.DataErased, error) {
	s := id.String()
	res := api.DataErased{Subject: s, Removed: map[string]int{}, Kept: []api.DataKept{}}
	kept := map[string]int{}
	var failed string
	var ferr error
	step := func(store string, f func() (int, error)) {
		if ferr != nil {
			return
		}
		n, err := f()
		if err != nil {
			failed, ferr = store, err
		}
		if n > 0 {
			res.Removed[store] = n
		}
	}
	step(StoreTasks, func() (int, error) { return d.Tasks.EraseSubject(s) })
	step(StoreEvidence, func() (int, error) { return d.Evidence.EraseSubject(id) })
	step(StoreGrants, func() (int, error) { return d.Grants.EraseSubject(ctx, id) })
	step(StoreReputation, func() (int, error) {
		n, k, err := d.Reputation.EraseSubject(ctx, id)
		if k {
			kept[StoreReputation] = 1
			res.Kept = append(res.Kept, api.DataKept{Store: StoreReputation, Count: 1, Reason: WhyBlock})
		}
		return n, err
	})
	step(StorePeers, func() (int, error) {
		n, k, err := d.Peers.EraseSubject(s)
		if k {
			kept[StoreCompromise] = 1
			res.Kept = append(res.Kept, api.DataKept{Store: StoreCompromise, Count: 1, Reason: WhyCompromise})
		}
		return n, err
	})
	if ferr == nil {
		if held, err := d.heldFrom(s); err == nil && len(held) > 0 {
			kept[StoreHeld] = len(held)
			res.Kept = append(res.Kept, api.DataKept{Store: StoreHeld, Count: len(held), Reason: WhyHeld})
		}
	}
	subjectField := s
	if ferr == nil && d.AuditKeys != nil {
		// Last, once every store is done: destroy the subject's audit key. The data.erased record then
		// names the destroyed key's reference, not the subject (its own key would be made again).
		sealed, _, _ := d.auditRecords(ctx, s)
		ref, ok, err := d.AuditKeys.Destroy(s)
		switch {
		case err != nil:
			failed, ferr = StoreAuditKeys, err
		case ok:
			res.Removed[StoreAuditKeys] = 1
			res.Shredded = len(sealed)
			res.SubjectRef, subjectField = ref, ref
		default:
			subjectField = ""
		}
	}
	if ferr == nil {
		if _, recs, err := d.auditRecords(ctx, s); err == nil && len(recs) > 0 {
			kept[StoreAudit] = len(recs)
			res.Kept = append(res.Kept, api.DataKept{Store: StoreAudit, Count: len(recs), Reason: WhyAudit})
		}
	}
	removed := map[string]any{}
	for k, v := range res.Removed {
		removed[k] = v
	}
	details := map[string]any{"removed": removed}
	if d.AuditKeys != nil && ferr == nil {
		details["subject_key"], details["shredded"] = "destroyed", map[string]any{StoreAudit: res.Shredded}
		if res.SubjectRef == "" {
			details["subject_key"] = "none"
		}
	}
	if len(kept) > 0 {
		k := map[string]any{}
		for s, n := range kept {
			k[s] = n
		}
		details["kept"] = k
	}
	outcome := audit.OutcomeSuccess
	if ferr != nil {
		outcome = audit.OutcomeFailure
		details["failed_at"] = failed
	}
	seq, aerr := d.Audit.Append(ctx, audit.Record{Type: audit.DataErased, Actor: actor, Subject: subjectField, Outcome: outcome, Details: details})
	if aerr == nil {
		aerr = d.Audit.Checkpoint(ctx)
	}
	res.AuditSeq = seq
	if ferr != nil {
		return res, control.Errorf(control.CodeErasureIncomplete, "erasure of %s failed at %s (removed so far: %v): %v; run it again", s, failed, res.Removed, ferr)
	}
	if aerr != nil {
		return res, control.Errorf(control.CodeFailed, "%s was erased (%v) but the data.erased audit record was not written: %v", s, res.Removed, aerr)
	}
	return res, nil
}
