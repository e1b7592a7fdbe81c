package podnet

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestCNIFileIsWrittenOnceAndNeverOverAForeignFile(t *testing.T) {
	dir := t.TempDir()
	f := CNIFile{Path: filepath.Join(dir, "10-kube-routerd.conflist")}
	v1 := Conflist("kube-bridge", 1480, prefixes("10.244.1.0/24"))
	if wrote, err := f.Sync(v1); err != nil || !wrote {
		t.Fatalf("first sync: wrote=%v err=%v", wrote, err)
	}
	if wrote, err := f.Sync(v1); err != nil || wrote {
		t.Fatalf("unchanged: wrote=%v err=%v", wrote, err)
	}
	v2 := Conflist("kube-bridge", 1480, prefixes("10.244.1.0/24", "fd00::/64"))
	if wrote, err := f.Sync(v2); err != nil || !wrote {
		t.Fatalf("pod CIDRs changed: wrote=%v err=%v", wrote, err)
	}
	if got, _ := os.ReadFile(f.Path); string(got) != string(v2) {
		t.Errorf("file holds %s", got)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	foreign := []byte(`{"cniVersion":"0.4.0","name":"mynet","plugins":[{"type":"bridge"}]}`)
	if err := os.WriteFile(f.Path, foreign, 0o644); err != nil {
		t.Fatal(err)
	}
	var fe *foreignFileError
	if _, err := f.Sync(v1); !errors.As(err, &fe) {
		t.Errorf("over a foreign file: err=%v", err)
	}
	if removed, err := f.Remove(); err != nil || removed {
		t.Errorf("Remove of a foreign file: removed=%v err=%v", removed, err)
	}
	if got, _ := os.ReadFile(f.Path); string(got) != string(foreign) {
		t.Errorf("foreign file changed to %s", got)
	}

	if err := os.WriteFile(f.Path, v1, 0o644); err != nil {
		t.Fatal(err)
	}
	if removed, err := f.Remove(); err != nil || !removed {
		t.Errorf("Remove of our file: removed=%v err=%v", removed, err)
	}
}

func TestShadowingListsConfigsTheRuntimeWouldPickFirst(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"05-other.conf", "10-kube-routerd.conflist", "10-kuberouter.conflist", "99-loopback.conf", "00-notes.txt"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := CNIFile{Path: filepath.Join(dir, "10-kube-routerd.conflist")}.Shadowing()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{filepath.Join(dir, "05-other.conf")}; !slices.Equal(got, want) {
		t.Errorf("shadowing %v, want %v", got, want)
	}
}
