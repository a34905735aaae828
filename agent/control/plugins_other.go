//go:build !linux

package control

import "github.com/custos-agent/custos/agent/rbac"

// RefusePluginProcesses is only implemented on Linux (/proc). Elsewhere rbac.PeerCred fails, so the
// control socket refuses every caller before this would be asked.
func RefusePluginProcesses(plugins func() []int) func(rbac.Cred) (bool, string) {
	return func(rbac.Cred) (bool, string) { return false, "" }
}
