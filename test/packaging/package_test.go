//go:build integration

// Package packaging_test builds the .deb and .rpm with `make package` and checks
// what they install, and verifies the systemd unit with systemd-analyze.
package packaging_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// dist holds the packages this test process builds, one subdirectory per version, so
// the tree's own bin/ and dist/ are never touched.
var dist string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kube-routerd-packaging-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dist = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildPackages runs `make package` for version (once per process) and returns the
// .deb and the .rpm.
func buildPackages(t *testing.T, version string) (deb, rpm string) {
	t.Helper()
	dir := filepath.Join(dist, version)
	deb = filepath.Join(dir, "kube-routerd_"+version+"-1_amd64.deb")
	rpm = filepath.Join(dir, "kube-routerd-"+version+"-1.x86_64.rpm")
	if _, err := os.Stat(rpm); err == nil {
		return deb, rpm
	}
	run(t, repoRoot(t), "make", "-s", "package", "VERSION="+version, "ARCH=amd64", "BIN="+filepath.Join(dir, "kube-routerd"), "DIST="+dir)
	for _, f := range []string{deb, rpm} {
		if _, err := os.Stat(f); err != nil {
			entries, _ := os.ReadDir(dir)
			t.Fatalf("make package did not write %s; %s has %v", f, dir, entries)
		}
	}
	return deb, rpm
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func need(t *testing.T, tool string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required in CI: %v", tool, err)
		}
		t.Skipf("%s not installed", tool)
	}
}

func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestPackagesContentsAndMetadata(t *testing.T) {
	need(t, "dpkg-deb")
	need(t, "rpm")
	root := repoRoot(t)
	deb, rpm := buildPackages(t, "1.2.3")

	wantFiles := []string{
		"/usr/bin/kube-routerd",
		"/usr/lib/systemd/system/kube-routerd.service",
		"/etc/kube-router/config.toml",
		"/usr/share/kube-routerd/rbac.yaml",
		"/usr/share/doc/kube-routerd/README.md",
	}

	contents := run(t, root, "dpkg-deb", "-c", deb)
	for _, f := range wantFiles {
		if !strings.Contains(contents, "."+f) {
			t.Errorf(".deb lacks %s:\n%s", f, contents)
		}
	}
	if !regexp.MustCompile(`-rwxr-xr-x root/root .* \./usr/bin/kube-routerd`).MatchString(contents) {
		t.Errorf("binary is not root-owned 0755:\n%s", contents)
	}
	info := run(t, root, "dpkg-deb", "-I", deb)
	for _, want := range []string{"Package: kube-routerd", "Version: 1.2.3-1", "Architecture: amd64", "Depends: iptables, ipset", "postinst", "prerm", "conffiles"} {
		if !strings.Contains(info, want) {
			t.Errorf(".deb metadata lacks %q:\n%s", want, info)
		}
	}
	conffiles := run(t, root, "sh", "-c", "dpkg-deb --ctrl-tarfile "+deb+" | tar -xO ./conffiles")
	if strings.TrimSpace(conffiles) != "/etc/kube-router/config.toml" {
		t.Errorf("conffiles = %q, want the config kept on upgrade", conffiles)
	}
	postinst := run(t, root, "sh", "-c", "dpkg-deb --ctrl-tarfile "+deb+" | tar -xO ./postinst")
	code := regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(postinst, "")
	if !strings.Contains(code, "daemon-reload") || regexp.MustCompile(`systemctl (enable|start)`).MatchString(code) {
		t.Errorf("postinst must reload systemd and not start the service:\n%s", postinst)
	}

	rpmFiles := run(t, root, "rpm", "-qlp", rpm)
	for _, f := range wantFiles {
		if !strings.Contains(rpmFiles, f+"\n") {
			t.Errorf(".rpm lacks %s:\n%s", f, rpmFiles)
		}
	}
	rpmInfo := run(t, root, "rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}\n", rpm)
	if strings.TrimSpace(rpmInfo) != "kube-routerd 1.2.3 1 x86_64" {
		t.Errorf("rpm metadata = %q", rpmInfo)
	}
	reqs := run(t, root, "rpm", "-qpR", rpm)
	for _, want := range []string{"iptables", "ipset"} {
		if !strings.Contains(reqs, want) {
			t.Errorf("rpm requires lack %s:\n%s", want, reqs)
		}
	}
	cfgFiles := run(t, root, "rpm", "-qpc", rpm)
	if strings.TrimSpace(cfgFiles) != "/etc/kube-router/config.toml" {
		t.Errorf("rpm config files = %q", cfgFiles)
	}
	scripts := run(t, root, "rpm", "-qp", "--scripts", rpm)
	if !strings.Contains(scripts, "daemon-reload") {
		t.Errorf("rpm scripts lack daemon-reload:\n%s", scripts)
	}

	// The packaged binary runs and the packaged config is valid.
	ex := t.TempDir()
	run(t, ex, "sh", "-c", "dpkg-deb -x "+deb+" .")
	out := run(t, ex, "./usr/bin/kube-routerd", "version")
	if !strings.HasPrefix(out, "kube-routerd 1.2.3+") {
		t.Errorf("version = %q", out)
	}
	run(t, ex, "./usr/bin/kube-routerd", "check-config", "--config", "etc/kube-router/config.toml")
}

func TestSystemdUnitVerifies(t *testing.T) {
	need(t, "systemd-analyze")
	root := repoRoot(t)
	unit, err := os.ReadFile(filepath.Join(root, "systemd", "kube-routerd.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Type=notify", "WatchdogSec=", "Restart=on-failure", "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW", "AF_NETLINK"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	// systemd-analyze checks that ExecStart exists, so point it at a real binary.
	dir := t.TempDir()
	bin := filepath.Join(dir, "kube-routerd")
	run(t, root, "go", "build", "-o", bin, "./cmd/kube-routerd")
	patched := strings.ReplaceAll(string(unit), "/usr/bin/kube-routerd", bin)
	path := filepath.Join(dir, "kube-routerd.service")
	if err := os.WriteFile(path, []byte(patched), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("systemd-analyze", "verify", path)
	out, err := cmd.CombinedOutput()
	// Without a running systemd (containers, CI sandboxes) verify may complain about
	// the manager itself; only complaints about our unit count.
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "kube-routerd.service") {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
	if err != nil && !strings.Contains(string(out), "kube-routerd.service") {
		t.Logf("systemd-analyze exited %v (no complaint about our unit):\n%s", err, out)
	}
}

// fakeSystemctl stands in for systemctl in the scratch root: it logs each call, and
// is-active succeeds when /active exists.
const fakeSystemctl = `#!/bin/sh
echo "$*" >>/systemctl.log
case "$1" in is-active) [ -e /active ] ;; esac
`

// scratchRoot makes a root for `rpm --root` in which the scriptlets can run: a merged
// /usr with the host's dash (and the libraries it links) as /bin/sh, a fake systemctl,
// and /run/systemd/system, so the scriptlets believe systemd runs.
func scratchRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"usr/bin", "usr/lib", "usr/lib64", "dev", "run/systemd/system"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"bin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+d, filepath.Join(root, d)); err != nil {
			t.Fatal(err)
		}
	}
	files := []string{"/usr/bin/dash"}
	// ldd prints "lib => /path (addr)" and, for the loader, "/path (addr)".
	for _, l := range strings.Split(run(t, "", "ldd", "/usr/bin/dash"), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			files = append(files, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			files = append(files, f[0])
		}
	}
	run(t, "", "cp", append([]string{"--parents", "-L", "-t", root}, files...)...)
	if err := os.Symlink("dash", filepath.Join(root, "usr/bin/sh")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/bin/systemctl"), []byte(fakeSystemctl), 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

// systemctlCalls returns and forgets what the scriptlets asked systemctl.
func systemctlCalls(t *testing.T, root string) []string {
	t.Helper()
	path := filepath.Join(root, "systemctl.log")
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	os.Remove(path)
	if len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

// TestRPMInstallUpgradeEraseInAScratchRoot installs, upgrades and erases the .rpm with
// Debian's rpm into a scratch root (no RPM distribution here, so --nodeps), with the
// scriptlets running under a real /bin/sh against a fake systemctl: install reloads
// systemd and loads the listed modules but starts nothing, an upgrade restarts a
// running service and keeps the edited config, erase disables and stops it and saves
// the edited config as .rpmsave.
func TestRPMInstallUpgradeEraseInAScratchRoot(t *testing.T) {
	need(t, "rpm")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("rpm --root needs root (chroot for the scriptlets)")
		}
		t.Skip("rpm --root needs root (chroot for the scriptlets)")
	}
	_, oldRPM := buildPackages(t, "1.2.3")
	_, newRPM := buildPackages(t, "1.2.4")

	flags := run(t, "", "rpm", "-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]", oldRPM)
	for _, want := range []string{
		"cn -rw-r----- root:root /etc/kube-router/config.toml", // %config(noreplace)
		" drwxr-x--- root:root /etc/kube-router\n",
		" -rwxr-xr-x root:root /usr/bin/kube-routerd\n",
		" -rw-r--r-- root:root /usr/lib/systemd/system/kube-routerd.service\n",
	} {
		if !strings.Contains(flags, want) {
			t.Errorf("rpm file flags lack %q:\n%s", want, flags)
		}
	}

	root := scratchRoot(t)
	rpm := func(args ...string) string {
		t.Helper()
		// An RPM distribution's database path, inside the scratch root.
		return run(t, "", "rpm", append([]string{"--root", root, "--define", "_dbpath /var/lib/rpm"}, args...)...)
	}
	expectCalls := func(when string, want ...string) {
		t.Helper()
		if got := systemctlCalls(t, root); !slices.Equal(got, want) {
			t.Errorf("%s the scriptlets ran systemctl %q, want %q", when, got, want)
		}
	}
	config := filepath.Join(root, "etc/kube-router/config.toml")

	rpm("-i", "--nodeps", oldRPM)
	expectCalls("on install", "daemon-reload", "restart systemd-modules-load.service", "is-active --quiet kube-routerd.service")
	rpm("-V", "--nodeps", "kube-routerd") // every file as packaged

	f, err := os.OpenFile(config, os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString("# edited by the operator\n")
		f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "active"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rpm("-U", "--nodeps", newRPM)
	// The new package's %post restarts the running service; the old one's %preun sees
	// an upgrade and leaves it, its %postun reloads.
	expectCalls("on upgrade", "daemon-reload", "restart systemd-modules-load.service", "is-active --quiet kube-routerd.service", "try-restart kube-routerd.service", "daemon-reload")
	if got := strings.TrimSpace(rpm("-q", "--qf", "%{VERSION}", "kube-routerd")); got != "1.2.4" {
		t.Errorf("after rpm -U the installed version is %s", got)
	}
	if data, err := os.ReadFile(config); err != nil || !strings.Contains(string(data), "# edited by the operator") {
		t.Errorf("rpm -U did not keep the edited config (%v)", err)
	}
	if extra, _ := filepath.Glob(config + ".rpm*"); len(extra) > 0 {
		t.Errorf("rpm -U left %v", extra)
	}

	rpm("-e", "--nodeps", "kube-routerd")
	expectCalls("on erase", "disable --now kube-routerd.service", "daemon-reload")
	for _, f := range []string{"usr/bin/kube-routerd", "usr/lib/systemd/system/kube-routerd.service", "etc/kube-router/config.toml"} {
		if _, err := os.Stat(filepath.Join(root, f)); !os.IsNotExist(err) {
			t.Errorf("/%s is still there after rpm -e", f)
		}
	}
	if _, err := os.Stat(config + ".rpmsave"); err != nil {
		t.Errorf("rpm -e did not save the edited config as config.toml.rpmsave: %v", err)
	}
}
