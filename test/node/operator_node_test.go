//go:build node

package node

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// commandTimeout bounds one operator command; apt under emulation takes tens of seconds.
const commandTimeout = 5 * time.Minute

// run runs a command the way an operator types it at a root shell (in dir when not
// empty, never asking questions) and returns its combined output and error.
func run(dir, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return out.String(), err
}

// sh runs a command that must succeed and returns its output.
func sh(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := run("", name, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// unitProperty is a property of kube-routerd.service as `systemctl show` reports it.
func unitProperty(t testing.TB, property string) string {
	t.Helper()
	return strings.TrimSpace(sh(t, "systemctl", "show", "--property", property, "--value", unit))
}

// journalCursor marks the end of the journal now, for reading what comes after.
func journalCursor(t testing.TB) string {
	t.Helper()
	out := sh(t, "journalctl", "--show-cursor", "--lines=0", "--quiet")
	cursor, ok := strings.CutPrefix(strings.TrimSpace(out), "-- cursor: ")
	if !ok {
		t.Fatalf("journalctl printed no cursor: %q", out)
	}
	return cursor
}

// journalSince returns what kube-routerd.service and systemd about it logged after
// cursor, one message a line.
func journalSince(t testing.TB, cursor string) string {
	t.Helper()
	return sh(t, "journalctl", "--no-pager", "--output=cat", "--unit", unit, "--after-cursor", cursor)
}

// denied matches what the journal shows when the unit's sandbox refuses the daemon
// something: a capability, a file system write, an address family or a system call.
var denied = regexp.MustCompile(`(?i)operation not permitted|permission denied|read-only file system|address family not supported|not supported by protocol|bad system call|EPERM|EACCES|EROFS|EAFNOSUPPORT|seccomp|DENIED`)

// expectNoDenials fails the test for every journal line since cursor, the unit's or
// the kernel's, that shows the sandbox refusing something.
func expectNoDenials(t testing.TB, cursor string) {
	t.Helper()
	kernel := sh(t, "journalctl", "--no-pager", "--output=cat", "--dmesg", "--after-cursor", cursor)
	for _, l := range strings.Split(journalSince(t, cursor)+kernel, "\n") {
		if denied.MatchString(l) {
			t.Errorf("the journal shows a denial: %s", l)
		}
	}
}

// setConfig sets key in [table] of config.toml to value (TOML text), as an operator
// edits the shipped file: the key's line in that table is replaced.
func setConfig(t testing.TB, table, key, value string) {
	t.Helper()
	data, err := os.ReadFile(configPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	in := false
	for i, l := range lines {
		if strings.HasPrefix(l, "[") {
			in = strings.TrimSpace(l) == "["+table+"]"
			continue
		}
		if in && strings.HasPrefix(l, key+" =") {
			lines[i] = key + " = " + value
			writeConfig(t, strings.Join(lines, "\n"))
			return
		}
	}
	t.Fatalf("%s has no %q in [%s]", configPath, key, table)
}

// writeConfig replaces config.toml, keeping its mode.
func writeConfig(t testing.TB, text string) {
	t.Helper()
	if err := os.WriteFile(configPath, []byte(text), 0o640); err != nil {
		t.Fatal(err)
	}
}
