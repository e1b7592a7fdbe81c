package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// InstallCRDs installs (or updates) the CustomResourceDefinitions in the YAML files at
// paths (files or directories) into the control plane rc points at, and waits until
// the API server serves them. CRDs are cluster-wide: they stay for the rest of the
// test process, like the control plane.
func InstallCRDs(t testing.TB, rc *rest.Config, paths ...string) {
	t.Helper()
	if _, err := envtest.InstallCRDs(rc, envtest.CRDInstallOptions{Paths: paths, ErrorIfPathMissing: true}); err != nil {
		t.Fatalf("installing CRDs from %v: %v", paths, err)
	}
}

// ModulesEnv names a directory that holds, by module path, copies of the modules
// whose files tests read: the VM has no Go toolchain or module cache, so
// hack/vm/run-tests.sh ships them (its vm_modules) and sets it.
const ModulesEnv = "KUBEROUTERD_MODULES"

// ModuleDir returns the directory of a module the build uses (in the module cache),
// for the files a Go package of it does not embed, such as its CRDs.
func ModuleDir(t testing.TB, module string) string {
	t.Helper()
	if dir := os.Getenv(ModulesEnv); dir != "" {
		return filepath.Join(dir, module)
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", module).Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		t.Fatalf("finding module %s: %v", module, err)
	}
	return dir
}
