package events

import (
	"strings"

	"github.com/custos-agent/custos/agent/api"
	"github.com/custos-agent/custos/audit"
)

// The agent's own lifecycle: its configuration loaded, reloaded or refused, the agent started and
// stopped.

// ConfigLoaded records the configuration the agent starts with (path, digest).
func (r *Recorder) ConfigLoaded(path, digest string) {
	r.Record(audit.ConfigLoaded, "operator", path, audit.OutcomeInfo, map[string]any{"digest": digest})
}

// ConfigRefused records a reload that changed nothing (an invalid file, or settings authorization
// refuses): digest is the running configuration's when the file did not load, else the file's.
func (r *Recorder) ConfigRefused(path, digest string, err error) {
	r.Record(audit.ConfigChanged, "operator", path, audit.OutcomeFailure, map[string]any{"digest": digest, "error": err.Error()})
	r.Log.Error("configuration reload refused; the running configuration is unchanged", "err", err)
}

// ConfigReloaded records a reload applied: the new and previous digests, what changed and what needs a
// restart.
func (r *Recorder) ConfigReloaded(path string, res *api.ReloadResult) {
	r.Record(audit.ConfigChanged, "operator", path, audit.OutcomeSuccess, map[string]any{
		"digest": res.Digest, "previous_digest": res.PreviousDigest, "changed": strings.Join(res.Changed, ","),
		"need_restart": strings.Join(res.NeedRestart, ","),
	})
	r.Log.Info("configuration reloaded", "digest", res.Digest, "previous_digest", res.PreviousDigest, "changed", res.Changed,
		"applied", res.Applied, "need_restart", res.NeedRestart, "generation", res.Generation)
}

// AgentStarted records the agent running: its version, keystore backend, generation and transports.
func (r *Recorder) AgentStarted(id, version, keystore string, generation uint64, transports []string) {
	r.Record(audit.AgentStarted, id, id, audit.OutcomeSuccess, map[string]any{
		"version": version, "keystore": keystore, "generation": generation, "transports": strings.Join(transports, ","),
	})
}

// AgentStopped records the agent stopped after a start that completed.
func (r *Recorder) AgentStopped(id string) {
	r.Record(audit.AgentStopped, id, id, audit.OutcomeSuccess, nil)
}
