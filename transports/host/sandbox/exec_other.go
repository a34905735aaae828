//go:build !linux

package sandbox

// WorkFD is the descriptor of the handler's work directory in the child (Linux only).
const WorkFD = 4

// WorkPath is the work directory's path inside the handler's root (Linux only).
const WorkPath = "/work"

// Limits are a handler's resource limits (Linux only).
type Limits struct {
	CPUSeconds, DataBytes, Processes, FileBytes, OpenFiles uint64
}

// ExecConfinement is what Options.Exec adds for a task handler (Linux only).
type ExecConfinement struct {
	WorkDir   string
	Args      []string
	Network   bool
	ReadPaths []string
	Limits    Limits
}
