package netns

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
)

// BIRD is a BIRD 2 daemon running in a namespace: the outside BGP router of a test.
type BIRD struct {
	ns      *NS
	sock    string
	logPath string
}

// StartBIRD runs BIRD with config in ns and waits until it answers on its control
// socket. Without the bird binary (Debian's bird2) the test is unavailable. When the
// test fails, the state of BIRD's protocols and the tail of its log are shown.
func StartBIRD(t testing.TB, ns *NS, config string) *BIRD {
	t.Helper()
	if _, err := exec.LookPath("bird"); err != nil {
		testenv.Unavailable(t, "bird not installed (bird2): %v", err)
	}
	// A unix socket path holds at most 108 bytes, too few under some t.TempDir()s.
	dir, err := os.MkdirTemp("", "krt-bird")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	conf := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(conf, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &BIRD{ns: ns, sock: filepath.Join(dir, "bird.ctl"), logPath: filepath.Join(dir, "bird.log")}
	logFile, err := os.Create(b.logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(context.Background(), "bird", "-c", conf, "-s", b.sock, "-f")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("BIRD in %s, show protocols all:\n%s", ns.Label, b.Ctl("show", "protocols", "all"))
			t.Logf("BIRD in %s, log:\n%s", ns.Label, testenv.LastLines(b.Log(), 60))
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-exited
		logFile.Close()
	})
	testenv.Eventually(t, "BIRD to answer on its control socket", time.Minute, func() bool {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("bird in %s exited (%v):\n%s", ns.Label, err, b.Log())
		default:
		}
		return strings.Contains(b.Ctl("show", "status"), "Daemon is up and running")
	})
	return b
}

// Ctl runs a birdcl command against the daemon and returns its output.
func (b *BIRD) Ctl(args ...string) string {
	out, _ := b.ns.Command(context.Background(), "birdcl", append([]string{"-s", b.sock}, args...)...).CombinedOutput()
	return string(out)
}

// Log returns what BIRD logged so far (configurations with "log stderr all").
func (b *BIRD) Log() string {
	out, _ := os.ReadFile(b.logPath)
	return string(out)
}
