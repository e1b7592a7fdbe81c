//go:build integration || vm

package demo

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// DemoEnv set to 1 (by hack/demo.sh) tells the story on standard output; otherwise
// (smoke mode, under `make test`) it goes to the test log, shown when a scene fails.
const DemoEnv = "KUBEROUTERD_DEMO"

// narrator tells the demo: scene headings, prose, and each command with its output.
type narrator struct {
	t   testing.TB
	out io.Writer // nil: the test log
}

func newNarrator(t testing.TB, toStdout bool) *narrator {
	if toStdout {
		return &narrator{t: t, out: os.Stdout}
	}
	return &narrator{t: t}
}

func (n *narrator) print(s string) {
	if n.out == nil {
		n.t.Log("\n" + strings.TrimRight(s, "\n"))
		return
	}
	fmt.Fprint(n.out, s)
}

// scene prints a heading.
func (n *narrator) scene(title string) {
	bar := strings.Repeat("=", len(title)+6)
	n.print(fmt.Sprintf("\n%s\n== %s ==\n%s\n", bar, title, bar))
}

// say prints a line of explanation.
func (n *narrator) say(format string, args ...any) {
	n.print("\n" + fmt.Sprintf(format, args...) + "\n")
}

// show prints a command line as typed at a prompt, and its output indented.
func (n *narrator) show(prompt, command, output string) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s# %s\n", prompt, command)
	output = strings.TrimRight(output, "\n")
	if output != "" {
		for _, l := range strings.Split(output, "\n") {
			b.WriteString("    " + l + "\n")
		}
	}
	n.print(b.String())
}

// run runs a command inside ns, shows it and its output, and fails the scene if the
// command fails.
func (n *narrator) run(ns *netns.NS, name string, args ...string) string {
	n.t.Helper()
	out, err := ns.Command(context.Background(), name, args...).CombinedOutput()
	shown := name
	if filepath.Base(name) == "kube-routerd" {
		shown = "kube-routerd" // as installed on PATH
	}
	n.show(ns.Label, strings.Join(append([]string{shown}, args...), " "), string(out))
	if err != nil {
		n.t.Fatalf("%s on %s: %v", name, ns.Label, err)
	}
	return string(out)
}

// apply shows an object the demo creates through the API, as YAML.
func (n *narrator) apply(what string, obj any) {
	n.t.Helper()
	y, err := yaml.Marshal(obj)
	if err != nil {
		n.t.Fatal(err)
	}
	var kept []string
	for _, l := range strings.Split(string(y), "\n") {
		// What the API server fills in is noise in a manifest.
		if strings.HasPrefix(l, "status:") {
			break
		}
		if strings.TrimSpace(l) != "creationTimestamp: null" {
			kept = append(kept, l)
		}
	}
	n.show("api", "kubectl apply -f -   # "+what, strings.Join(kept, "\n"))
}

// httpProto makes probe speak HTTP (to a ServeHTTP server).
const httpProto netns.Proto = "http"

// probe connects from one namespace to target, shows who answered and returns the
// reply; an error means nothing answered in time.
func (n *narrator) probe(from *netns.NS, proto netns.Proto, target netip.AddrPort) (netns.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), netns.DefaultProbeTimeout)
	defer cancel()
	var r netns.Reply
	var err error
	cmd := fmt.Sprintf("probe %s %s", proto, target)
	if proto == httpProto {
		cmd = fmt.Sprintf("curl http://%s/", target)
		r, err = from.HTTPGet(ctx, fmt.Sprintf("http://%s/", target))
	} else {
		r, err = from.Probe(ctx, proto, target)
	}
	if err != nil {
		n.show(from.Label, cmd, fmt.Sprintf("no answer within %s", netns.DefaultProbeTimeout))
		return r, err
	}
	n.show(from.Label, cmd, fmt.Sprintf("answered by %s, which saw the client as %s", r.Server, r.Client.Addr()))
	return r, nil
}

// demoDaemon is one kube-routerd process running inside a node namespace, started
// with a config file the way its systemd unit starts it.
type demoDaemon struct {
	t      testing.TB
	node   *netns.Node
	bin    string
	config string
	cmd    *exec.Cmd
	log    *os.File
	exited chan error
}

// writeDaemonConfig writes config.toml (and the kubeconfig it names) for node into
// dir; body is the config after the [kubernetes] table.
func writeDaemonConfig(t testing.TB, node *netns.Node, rc *rest.Config, dir, body string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	kubeconfig := node.ForwardAPIServer(t, rc, dir)
	config := filepath.Join(dir, "config.toml")
	text := fmt.Sprintf(`# kube-routerd on %s (a user's /etc/kube-router/config.toml)
[kubernetes]
kubeconfig = %q
node_name = %q
%s
[pod_network]
cni_config_file = %q
`, node.Name, kubeconfig, node.Name, body, filepath.Join(dir, "10-kube-routerd.conflist"))
	if err := os.WriteFile(config, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return config
}

// startDaemon starts kube-routerd with config inside node; ready waits for it.
func startDaemon(t testing.TB, node *netns.Node, bin, config string) *demoDaemon {
	t.Helper()
	d := &demoDaemon{t: t, node: node, bin: bin, config: config, exited: make(chan error, 1)}
	var err error
	if d.log, err = os.Create(filepath.Join(filepath.Dir(config), "kube-routerd.log")); err != nil {
		t.Fatal(err)
	}
	d.cmd = node.Command(context.Background(), bin, "run", "--config", config)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			_ = d.cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(d.log.Name())
			t.Logf("log of kube-routerd on %s:\n%s", node.Name, testenv.LastLines(string(b), 40))
		}
		d.log.Close()
	})
	return d
}

// ready waits until `kube-routerd status` says every controller has synced.
func (d *demoDaemon) ready(timeout time.Duration) {
	d.t.Helper()
	testenv.Eventually(d.t, "kube-routerd on "+d.node.Name+" to be ready", timeout, func() bool {
		select {
		case err := <-d.exited:
			d.exited <- err
			d.t.Fatalf("kube-routerd on %s exited: %v", d.node.Name, err)
		default:
		}
		out, _ := d.node.Command(context.Background(), d.bin, "status", "--config", d.config).Output()
		return strings.HasPrefix(string(out), "kube-routerd: ready")
	})
}

// stop sends SIGTERM, as `systemctl stop` does, and waits for a clean exit.
func (d *demoDaemon) stop() {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		d.t.Fatal(err)
	}
	select {
	case err := <-d.exited:
		if err != nil {
			d.t.Fatalf("kube-routerd on %s exited with %v after SIGTERM", d.node.Name, err)
		}
	case <-time.After(30 * time.Second):
		d.t.Fatalf("kube-routerd on %s did not exit after SIGTERM", d.node.Name)
	}
}

// demoDir is a short-named directory for the demo's files, so the commands shown
// stay readable.
func demoDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kube-routerd-demo-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
