package config

import "strings"

// Reloadable reports whether a changed section (a name Diff returns) takes effect on a reload: the
// handlers, the bootstrap peers, the session and redial settings, the log level, authorization, the
// resource policy and the rotation schedule. Every other section needs a restart.
func Reloadable(section string) bool {
	switch section {
	case "bootstrap", "session", "redial", "log", "authorization", "policy", "rotation":
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
	keep.Transports, keep.Delegation, keep.Limits, keep.Tasks, keep.Metrics, keep.Audit = old.Transports, old.Delegation, old.Limits, old.Tasks, old.Metrics, old.Audit
	keep.Reputation, keep.Puzzles, keep.Policy.Geo.Database = old.Reputation, old.Puzzles, old.Policy.Geo.Database
	keep.Privacy = old.Privacy // address truncation and retention periods apply at a restart, as Classify says
	keep.Discovery = old.Discovery
	return &keep
}
