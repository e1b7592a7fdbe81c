//go:build vm

package vme2e

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/rest"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// readyTimeout bounds a daemon's first full sync in the emulated VM, where a start
// takes seconds of CPU time shared with other runs.
const readyTimeout = 3 * time.Minute

// daemonBinary is the kube-routerd `make build` left in the source tree, which the VM
// shares at the host's path.
func daemonBinary(t *testing.T) string {
	t.Helper()
	bin, err := filepath.Abs("../../bin/kube-routerd")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		testenv.Unavailable(t, "no %s: run make build first", bin)
	}
	return bin
}

// installCopy copies bin to dir/kube-routerd through a temporary name and a rename, the
// way a package manager replaces /usr/bin/kube-routerd on upgrade.
func installCopy(t *testing.T, bin, dir string) string {
	t.Helper()
	dst := filepath.Join(dir, "kube-routerd")
	src, err := os.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	tmp, err := os.OpenFile(dst+".new", os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(tmp, src); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dst+".new", dst); err != nil {
		t.Fatal(err)
	}
	return dst
}

// daemon is kube-routerd on a namespaced node in the VM, with its own config.toml.
type daemon struct {
	*netns.Daemon
	kubeconfig string
}

// newDaemon writes config.toml for node (body follows the [kubernetes] table) and a
// kubeconfig reaching the API server from inside the namespace.
func newDaemon(t *testing.T, node *netns.Node, rc *rest.Config, bin, body string) *daemon {
	t.Helper()
	dir := t.TempDir()
	d := &daemon{
		Daemon:     netns.NewDaemon(t, node, bin, filepath.Join(dir, "config.toml"), 30*time.Second),
		kubeconfig: node.ForwardAPIServer(t, rc, dir),
	}
	d.reconfigure(body)
	return d
}

// reconfigure writes the config with a new body; it takes effect at the next start.
func (d *daemon) reconfigure(body string) {
	text := fmt.Sprintf(`[kubernetes]
kubeconfig = %q
node_name = %q
%s
[pod_network]
cni_config_file = %q

[logging]
level = "debug"
`, d.kubeconfig, d.Node.Name, body, filepath.Join(filepath.Dir(d.Config), "10-kube-routerd.conflist"))
	if err := os.WriteFile(d.Config, []byte(text), 0o600); err != nil {
		panic(err) // t.TempDir is writable
	}
}

// ourRoutes lists the routes kube-routerd installed in the node (protocol
// route.Protocol), one "dst via gateway" or "dst dev device" a line, sorted.
func ourRoutes(t *testing.T, n *netns.Node) string {
	t.Helper()
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: route.Protocol}
	routes, err := n.Netlink.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatalf("list routes of %s: %v", n.Name, err)
	}
	var lines []string
	for _, r := range routes {
		l := r.Dst.String()
		if r.Gw != nil {
			l += " via " + r.Gw.String()
		}
		if link, err := n.Netlink.LinkByIndex(r.LinkIndex); err == nil {
			l += " dev " + link.Attrs().Name
		}
		lines = append(lines, l+"\n")
	}
	slices.Sort(lines)
	return strings.Join(lines, "")
}

var (
	// chainCounters are the [packets:bytes] of a chain line in iptables-save.
	chainCounters = regexp.MustCompile(`\[\d+:\d+\]`)
	// ipvsDestination is a real server line of `ipvsadm -Ln`; the two connection
	// counters at its end change with traffic.
	ipvsDestination = regexp.MustCompile(`^(\s+->\s+\S+\s+\S+\s+\d+)\s+\d+\s+\d+\s*$`)
)

// dataplaneState is everything kube-routerd programs in a node namespace that a
// restart must leave alone: IPVS services and destinations, the dummy interface's
// addresses, its iptables chains and rules, its ipsets with their members and its
// routes. Traffic counters are removed so two snapshots compare equal.
func dataplaneState(t *testing.T, n *netns.Node) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("# ipvsadm -Ln\n")
	for _, l := range strings.Split(n.Run(t, "ipvsadm", "-Ln", "--sort"), "\n") {
		b.WriteString(ipvsDestination.ReplaceAllString(l, "$1") + "\n")
	}
	b.WriteString("# ip -4 addr show dev kube-dummy-if\n")
	out, err := n.Command(context.Background(), "ip", "-4", "-o", "addr", "show", "dev", "kube-dummy-if").Output()
	if err == nil {
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.Fields(l); len(f) >= 4 {
				b.WriteString(f[3] + "\n")
			}
		}
	}
	for _, table := range []string{"filter", "nat", "mangle"} {
		b.WriteString("# iptables-save -t " + table + " | grep KUBE-ROUTER\n")
		for _, l := range strings.Split(n.Save(t, "iptables-save", "-t", table), "\n") {
			if strings.Contains(l, "KUBE-ROUTER") {
				b.WriteString(chainCounters.ReplaceAllString(l, "") + "\n")
			}
		}
	}
	b.WriteString("# ipset save | grep -i kube-router\n")
	for _, l := range strings.Split(n.Run(t, "ipset", "save"), "\n") {
		if strings.Contains(strings.ToLower(l), "kube-router") {
			b.WriteString(l + "\n")
		}
	}
	b.WriteString("# routes of protocol 144\n")
	b.WriteString(ourRoutes(t, n))
	return b.String()
}

// probeTarget expects target to answer a fresh TCP connection from ns, retrying a
// few times over a loaded VM, and returns the server that answered.
func probeTarget(t *testing.T, from *netns.NS, target netip.AddrPort) string {
	t.Helper()
	var server string
	testenv.Eventually(t, fmt.Sprintf("a new connection from %s to %s", from.Label, target), time.Minute, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := from.Probe(ctx, netns.TCP, target)
		if err != nil {
			t.Logf("probe %s -> %s: %v", from.Label, target, err)
			return false
		}
		server = r.Server
		return true
	})
	return server
}
