package config

import (
	"slices"
	"strings"
)

// Reloadable reports whether a changed section (a name Diff returns) takes effect on a reload: the
// handlers, the bootstrap peers, the session and redial settings, the log level, authorization, the
// resource policy, the rotation schedule, and a transport's plugin binary with its checksum
// ("transports.NAME.plugin": only plugin and sha256 changed; that plugin alone is restarted on the new
// binary, docs/updating.md). Every other section needs a restart.
func Reloadable(section string) bool {
	switch section {
	case "bootstrap", "session", "redial", "log", "authorization", "policy", "rotation":
		return true
	}
	if strings.HasPrefix(section, "transports.") && strings.HasSuffix(section, ".plugin") {
		return true
	}
	return strings.HasPrefix(section, "handlers.")
}

// Classify splits the changed sections into those a reload applies and those that need a restart (each
// in the order given).
func Classify(changed []string) (applied, needRestart []string) {
	for _, c := range changed {
		if Reloadable(c) {
			applied = append(applied, c)
		} else {
			needRestart = append(needRestart, c)
		}
	}
	return applied, needRestart
}

// InForce is the configuration in force after a reload from old to cur: cur, except that the settings
// that need a restart keep their running values (old's), so that status stays truthful. The geo database
// of the policy is one of them; the rest of the policy applies.
func InForce(old, cur *Config) *Config {
	keep := *cur
	transports := slices.Clone(old.Transports)
	for i, o := range transports { // a plugin binary update applies (PluginUpdates)
		for _, n := range cur.Transports {
			if n.Name == o.Name && PluginOnlyChange(o, n) {
				transports[i].Plugin, transports[i].SHA256 = n.Plugin, n.SHA256
			}
		}
	}
	keep.Transports, keep.Delegation, keep.Limits, keep.Tasks, keep.Metrics, keep.Audit = transports, old.Delegation, old.Limits, old.Tasks, old.Metrics, old.Audit
	keep.Reputation, keep.Puzzles, keep.Policy.Geo.Database = old.Reputation, old.Puzzles, old.Policy.Geo.Database
	keep.Privacy = old.Privacy // address truncation and retention periods apply at a restart, as Classify says
	keep.Discovery = old.Discovery
	return &keep
}
