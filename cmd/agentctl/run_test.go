package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLocateDaemon: agentctl run finds custosd beside the agentctl executable first, then in $PATH, and
// otherwise fails naming both places.
func TestLocateDaemon(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "agentctl")
	beside := filepath.Join(dir, daemonBinary)
	inPath := filepath.Join(t.TempDir(), daemonBinary)
	noPath := func(string) (string, error) {
		return "", errors.New(`exec: "custosd": executable file not found in $PATH`)
	}
	yesPath := func(string) (string, error) { return inPath, nil }

	if _, err := locateDaemon(exe, noPath); err == nil || !strings.Contains(err.Error(), beside) || !strings.Contains(err.Error(), "$PATH") {
		t.Fatalf("missing daemon: %v, want an error naming %s and $PATH", err, beside)
	}
	if got, err := locateDaemon(exe, yesPath); err != nil || got != inPath {
		t.Fatalf("daemon only in $PATH: %q %v", got, err)
	}
	// A file that is not executable beside agentctl is not the daemon.
	if err := os.WriteFile(beside, []byte("#!/bin/sh\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := locateDaemon(exe, yesPath); err != nil || got != inPath {
		t.Fatalf("non-executable file beside: %q %v", got, err)
	}
	if err := os.Chmod(beside, 0o700); err != nil {
		t.Fatal(err)
	}
	if got, err := locateDaemon(exe, yesPath); err != nil || got != beside {
		t.Fatalf("daemon beside agentctl: %q %v, want %s", got, err, beside)
	}
}
