package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
)

// stopTimeout bounds a daemon's shutdown after SIGTERM.
const stopTimeout = time.Minute

// Daemon runs a kube-routerd binary inside a node namespace the way systemd runs it:
// with a config file, a NOTIFY_SOCKET to read its sd_notify messages from and
// WATCHDOG_USEC. One process at a time; the log collects every run and its tail is
// shown when the test fails.
type Daemon struct {
	Node   *Node
	Bin    string
	Config string
	// Env is added to the test process's environment for the daemon (a systemd
	// drop-in's Environment=, such as GOMEMLIMIT).
	Env []string
	// Notify carries the sd_notify messages of the current run; it is closed when
	// the process exits.
	Notify <-chan string

	t        testing.TB
	watchdog time.Duration
	log      *os.File
	proc     *os.Process
	exited   chan error
}

// NewDaemon prepares bin to run on node with the config file at config, passing
// watchdog as WATCHDOG_USEC. Nothing runs until Start.
func NewDaemon(t testing.TB, node *Node, bin, config string, watchdog time.Duration) *Daemon {
	t.Helper()
	log, err := os.Create(filepath.Join(t.TempDir(), "kube-routerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	d := &Daemon{Node: node, Bin: bin, Config: config, t: t, watchdog: watchdog, log: log}
	t.Cleanup(func() {
		if d.Running() {
			_ = d.proc.Kill()
			<-d.exited
		}
		if t.Failed() {
			t.Logf("log of kube-routerd on %s:\n%s", node.Name, testenv.LastLines(d.LogText(), 80))
		}
		log.Close()
	})
	return d
}

// Start runs the daemon without waiting for READY=1.
func (d *Daemon) Start() {
	t := d.t
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	notify := make(chan string, 1000)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(notify)
				return
			}
			notify <- string(buf[:n])
		}
	}()
	fmt.Fprintf(d.log, "=== test: starting %s\n", d.Bin)
	cmd := d.Node.Command(context.Background(), d.Bin, "run", "--config", d.Config)
	cmd.Env = append(append(os.Environ(), d.Env...), "NOTIFY_SOCKET="+sock, fmt.Sprintf("WATCHDOG_USEC=%d", d.watchdog.Microseconds()))
	cmd.Stdout, cmd.Stderr = d.log, d.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); conn.Close() }()
	d.proc, d.Notify, d.exited = cmd.Process, notify, exited
}

// StartReady runs the daemon and waits up to timeout for READY=1, returning how long
// that took.
func (d *Daemon) StartReady(timeout time.Duration) time.Duration {
	d.t.Helper()
	start := time.Now()
	d.Start()
	d.WaitNotify("READY=1", timeout)
	return time.Since(start)
}

// WaitNotify waits for an sd_notify message starting with prefix.
func (d *Daemon) WaitNotify(prefix string, timeout time.Duration) {
	d.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m, ok := <-d.Notify:
			if !ok {
				d.t.Fatalf("kube-routerd on %s exited before %s", d.Node.Name, prefix)
			}
			if strings.HasPrefix(m, prefix) {
				return
			}
		case <-deadline:
			d.t.Fatalf("kube-routerd on %s: no %s within %s", d.Node.Name, prefix, timeout)
		}
	}
}

// Running reports whether the current run has not exited.
func (d *Daemon) Running() bool {
	if d.exited == nil {
		return false
	}
	select {
	case err := <-d.exited:
		d.exited <- err
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM, as `systemctl stop` does, and waits for STOPPING=1 and a clean
// exit.
func (d *Daemon) Stop() {
	d.t.Helper()
	// nsenter execs the daemon without forking, so the signal reaches it directly.
	if err := d.proc.Signal(syscall.SIGTERM); err != nil {
		d.t.Fatal(err)
	}
	d.WaitNotify("STOPPING=1", stopTimeout)
	select {
	case err := <-d.exited:
		d.exited <- err
		if err != nil {
			d.t.Fatalf("kube-routerd on %s exited with %v after SIGTERM", d.Node.Name, err)
		}
	case <-time.After(stopTimeout):
		d.t.Fatalf("kube-routerd on %s did not exit after SIGTERM", d.Node.Name)
	}
}

// PID is the running daemon's process id (nsenter execs it in place).
func (d *Daemon) PID() int { return d.proc.Pid }

// Kill ends the daemon with SIGKILL, as a crash or the OOM killer would.
func (d *Daemon) Kill() {
	d.t.Helper()
	if err := d.proc.Kill(); err != nil {
		d.t.Fatal(err)
	}
	err := <-d.exited
	d.exited <- err
	fmt.Fprintf(d.log, "=== test: killed (%v)\n", err)
}

// Run runs a one-shot subcommand of the binary (status, cleanup, ...) on the node with
// the daemon's config and returns its output.
func (d *Daemon) Run(args ...string) string {
	d.t.Helper()
	return d.Node.Run(d.t, d.Bin, append(args, "--config", d.Config)...)
}

// LogText returns what the daemon logged so far, over all runs.
func (d *Daemon) LogText() string {
	b, err := os.ReadFile(d.log.Name())
	if err != nil {
		d.t.Fatal(err)
	}
	return string(b)
}
