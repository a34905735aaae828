package custody

import (
	"strings"
	"time"

	"github.com/custos-agent/custos/audit"
	"github.com/custos-agent/custos/identity"
)

// Sources of key event records (Details "source").
const (
	SourceAgentctl = "agentctl" // written by the command that made the change (no daemon was running)
	SourceDaemon   = "daemon"   // written by the running daemon when it picked the change up
)

// KeyEventRecords returns the audit records for what changed in an identity between two views of it:
// before is identity.json's list of generations as it was (nil for a new identity), after the list as it
// is now and kel the key event log now. Every event of kel past before's active generation gives one
// record (inception: key.init, rotation: key.rotate, recovery: key.recover), then every generation that
// became destroyed gives key.destroy. Subject is the agent ID; Details carry "generation", "key_uri"
// (the key's URI without its query, so no module path or secret source), "algorithm" and "source". The
// result is empty when nothing changed.
func KeyEventRecords(before, after []Generation, kel identity.Log, actor, source string) []audit.Record {
	if len(kel.Events) == 0 {
		return nil
	}
	agent := kel.Events[0].ID
	seen := int64(-1)
	prev := map[uint64]Generation{}
	for _, g := range before {
		prev[g.Generation] = g
		if g.State == Active {
			seen = int64(g.Generation)
		}
	}
	now := map[uint64]Generation{}
	for _, g := range after {
		now[g.Generation] = g
	}
	var out []audit.Record
	for _, ev := range kel.Events {
		if int64(ev.Generation) <= seen {
			continue
		}
		g := now[ev.Generation]
		d := map[string]any{"generation": ev.Generation, "key_uri": keyRef(g.Key), "algorithm": string(ev.Algorithm), "source": source}
		var typ audit.EventType
		switch ev.Type {
		case identity.Inception:
			typ = audit.KeyInit
			d["recovery"] = ev.Recovery != ""
		case identity.Rotation:
			typ = audit.KeyRotate
			d["previous_generation"] = ev.Generation - 1
			if old, ok := now[ev.Generation-1]; ok && old.RetiredUntil != nil {
				d["previous_retired_until"] = old.RetiredUntil.UTC().Format(time.RFC3339)
			}
		case identity.Recovery:
			typ = audit.KeyRecover
			d["replaced_generation"] = ev.Generation - 1
		default:
			continue
		}
		if nx, ok := now[ev.Generation+1]; ok {
			d["next_key_uri"] = keyRef(nx.Key)
		}
		out = append(out, audit.Record{Type: typ, Actor: actor, Subject: agent, Outcome: audit.OutcomeSuccess, Details: d})
	}
	for _, g := range after {
		if g.State != Destroyed {
			continue
		}
		if p, ok := prev[g.Generation]; ok && p.State == Destroyed {
			continue
		}
		d := map[string]any{"generation": g.Generation, "key_uri": keyRef(g.Key), "algorithm": string(g.Algorithm), "source": source}
		if g.DestroyedAt != nil {
			d["destroyed_at"] = g.DestroyedAt.UTC().Format(time.RFC3339)
		}
		if g.Note != "" {
			d["note"] = g.Note
		}
		out = append(out, audit.Record{Type: audit.KeyDestroy, Actor: actor, Subject: agent, Outcome: audit.OutcomeSuccess, Details: d})
	}
	return out
}

// keyRef is a key URI without its query (module path, PIN or passphrase source).
func keyRef(uri string) string {
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		return uri[:i]
	}
	return uri
}
