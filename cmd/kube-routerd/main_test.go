package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckConfigPrintsEffectiveConfig(t *testing.T) {
	p := writeConfig(t, "[routing]\nasn = 65010\n")
	var out, errOut bytes.Buffer
	if code := runMain([]string{"check-config", "--config", p}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"is valid", "asn = 65010", `scheduler = "rr"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestCheckConfigListsEveryProblemAndExits1(t *testing.T) {
	p := writeConfig(t, "[routing]\nasn = 0\noverlay = \"maybe\"\nfoo = 1\n")
	var out, errOut bytes.Buffer
	if code := runMain([]string{"check-config", "--config", p}, &out, &errOut); code != exitBadConfig {
		t.Fatalf("exit %d, want %d", code, exitBadConfig)
	}
	for _, want := range []string{"3 problem(s)", "line 2: routing.asn", "line 3: routing.overlay", "line 4: routing.foo: unknown key"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut.String())
		}
	}
}

func TestCommandLineErrors(t *testing.T) {
	for _, args := range [][]string{{"frobnicate"}, {"run", "extra"}, {"--no-such-flag"}} {
		var out, errOut bytes.Buffer
		if code := runMain(args, &out, &errOut); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	var out, errOut bytes.Buffer
	if code := runMain([]string{"version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "kube-routerd ") {
		t.Errorf("version: exit %d, %q", code, out.String())
	}
}

func TestRunWithMissingConfigFails(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := runMain([]string{"run", "--config", "/nonexistent/config.toml"}, &out, &errOut); code != exitBadConfig {
		t.Fatalf("exit %d, want %d", code, exitBadConfig)
	}
	if !strings.Contains(errOut.String(), "/nonexistent/config.toml") {
		t.Errorf("error does not name the file: %s", errOut.String())
	}
}
