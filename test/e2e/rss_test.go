//go:build network || soak

package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// rssKiB is the resident set size of process pid (/proc/<pid>/status VmRSS), 0 when unknown.
func rssKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}
