//go:build vm

package proxybench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// clockTicks is the kernel's USER_HZ, the unit of /proc/<pid>/stat's CPU times.
const clockTicks = 100

// process is a proxy binary running inside a node namespace (nsenter execs it, so
// its PID is the proxy's), its output going to a log file shown when the benchmark
// fails.
type process struct {
	name    string
	cmd     *exec.Cmd
	pid     int
	started time.Time
	exited  chan struct{}
}

// startProcess runs argv inside node with its output in logPath.
func startProcess(b *testing.B, node *netns.Node, name, logPath string, argv []string) *process {
	b.Helper()
	log, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	cmd := node.Command(context.Background(), argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	p := &process{name: name, cmd: cmd, exited: make(chan struct{}), started: time.Now()}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", name, err)
	}
	p.pid = cmd.Process.Pid
	go func() { _ = cmd.Wait(); log.Close(); close(p.exited) }()
	b.Cleanup(func() {
		if p.running() {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
			<-p.exited
		}
		if b.Failed() {
			text, _ := os.ReadFile(logPath)
			b.Logf("log of %s:\n%s", name, testenv.LastLines(string(text), 60))
		}
	})
	return p
}

func (p *process) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// status reads a field of /proc/<pid>/status in KiB (VmHWM, VmRSS).
func (p *process) status(field string) (kib int, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.Atoi(strings.Fields(v)[0])
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, p.pid)
}

// cpu is the user and system time the process and the helpers it waited for
// (iptables-restore, ipset, nft) used so far.
func (p *process) cpu() (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses and may hold spaces:
	// state is field 3, utime, stime, cutime and cstime are fields 14 to 17.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	var ticks int64
	for _, s := range f[11:15] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// stop sends SIGTERM and waits for the exit (SIGKILL after a minute). It returns the
// largest resident set of the process and every helper it waited for, in KiB (the
// kernel's wait4 rusage).
func (p *process) stop(b *testing.B) (maxRSSKiB int64) {
	b.Helper()
	_ = syscall.Kill(p.pid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(time.Minute):
		b.Logf("%s did not exit within a minute of SIGTERM; killing it", p.name)
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
		<-p.exited
	}
	if ru, ok := p.cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss
	}
	return 0
}

// metricsClient reaches a metrics endpoint on the loopback of a node namespace.
func metricsClient(node *netns.Node) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := node.Do(func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}

// ready reports whether url answers 200.
func ready(c *http.Client, url string) bool {
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// scrape fetches Prometheus text from url.
func scrape(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

// metricSum adds up the samples of metric whose labels include every one of labels
// (`name="value"` each) in Prometheus text.
func metricSum(text, metric string, labels ...string) float64 {
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, metric)
		if !ok || rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		matches := true
		for _, l := range labels {
			matches = matches && strings.Contains(rest, l)
		}
		f := strings.Fields(rest)
		if !matches || len(f) < 2 {
			continue
		}
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}
