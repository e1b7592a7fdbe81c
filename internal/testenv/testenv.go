// Package testenv gives tests the real parts kube-routerd runs against: a real
// kube-apiserver (through envtest), helpers to create the API objects a node sees, and
// the skip-or-fail rule for tests whose real part is missing.
//
// The rule: a test that cannot get its real part (root, a control plane, a kernel
// feature) calls Unavailable, which skips it in a developer's `go test ./...` and fails
// it under CI=true, so CI never passes by skipping.
package testenv

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// InCI reports whether the tests run in CI (CI=true), where nothing may skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Unavailable ends the test because a real part it needs is missing: it skips, or
// fails under CI=true.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("unavailable under CI=true (must not skip): %s", msg)
		return
	}
	t.Skipf("unavailable: %s", msg)
}

// RequireRoot ends the test through Unavailable unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root (run the integration tier with sudo or as root)")
	}
}

// Eventually polls cond until it holds, failing the test after timeout. The timeout
// bounds a wait for convergence; it is not a performance assertion.
func Eventually(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// LastLines returns the last n lines of s, to show the end of a long log in a failure.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
