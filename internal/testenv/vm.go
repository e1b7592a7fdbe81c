package testenv

import (
	"os"
	"testing"
)

// VMEnv names the environment variable hack/vm/run-tests.sh sets to 1 inside the test
// VM, whose Debian kernel has IPVS, dummy and ipip (the host kernel has none of them).
const VMEnv = "KUBEROUTERD_VM"

// InVM reports whether the test runs inside the test VM.
func InVM() bool { return os.Getenv(VMEnv) == "1" }

// RequireVM ends the test through Unavailable unless it runs inside the test VM. Tests
// built with `-tags vm` call it first; hack/vm/run-tests.sh runs them there.
func RequireVM(t testing.TB) {
	t.Helper()
	if !InVM() {
		Unavailable(t, "needs the test VM (IPVS, dummy, ipip): run hack/vm/run-tests.sh")
	}
	RequireRoot(t)
}
