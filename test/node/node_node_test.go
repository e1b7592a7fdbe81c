//go:build node

package node

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// What the package installs and the operator adds.
const (
	unit           = "kube-routerd.service"
	configPath     = "/etc/kube-router/config.toml"
	kubeconfigPath = "/etc/kube-router/kubeconfig"
	rbacPath       = "/usr/share/kube-routerd/rbac.yaml"
)

// readyTimeout bounds a start to READY=1 on the emulated machine.
const readyTimeout = 3 * time.Minute

// The test Service: one TCP port whose backends echo lines. Pods also answer probes
// on probePort, saying which client address they saw.
const (
	echoPort, echoTargetPort = 90, 9090
	probePort                = 8080
)

// The cluster's addresses: node-1 (this machine) and node-2 (a namespace) on one link.
var (
	clusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	node1PodV4  = netip.MustParsePrefix("10.244.1.0/24")
	node1PodV6  = netip.MustParsePrefix("fd00:10:244:1::/64")
	node2PodV4  = netip.MustParsePrefix("10.244.2.0/24")
	node2PodV6  = netip.MustParsePrefix("fd00:10:244:2::/64")
	// node-2 gets host 11 of the link's subnets (netns.Link numbering); node-1 takes 10.
	node1LinkV4 = netip.MustParsePrefix("192.168.200.10/24")
	node1LinkV6 = netip.MustParsePrefix("fd00:200::10/64")
	// A host outside the cluster, on a link of its own from node-1, with no route back
	// to any pod CIDR: pods reach it only through egress masquerading.
	outsideV4, outsideNodeV4 = netip.MustParsePrefix("203.0.113.10/24"), netip.MustParsePrefix("203.0.113.1/24")
	outsideV6, outsideNodeV6 = netip.MustParsePrefix("2001:db8:113::10/64"), netip.MustParsePrefix("2001:db8:113::1/64")
)

// cniConfigPath is the conflist kube-routerd writes for the container runtime.
const cniConfigPath = cniConfigDir + "/10-kube-routerd.conflist"

// cniWrite is the daemon's log line for each write of the conflist, with its MTU.
var cniWrite = regexp.MustCompile(`msg="wrote CNI config".* mtu=(-?\d+)`)

// cluster is what the steps share: the API server, node-2 with the Service's backends,
// and the connection through the Service that every step after the first must keep.
type cluster struct {
	rc *rest.Config
	cs kubernetes.Interface
	// name is this machine's host name, which kube-routerd uses as its Node's name.
	name string
	// ns is the Kubernetes namespace of the test's pods and Service.
	ns   string
	peer *netns.Node
	// outside is a host outside the cluster that answers probes.
	outside *netns.NS
	// vip is the echo Service's ClusterIP; backends are its pods on node-2.
	vip      netip.Addr
	backends []*netns.Pod
	// stream is a connection from node-1 through the Service, opened once node-1 runs.
	stream *netns.EchoStream
	// packages is where the operator keeps the downloaded package files.
	packages string
	// before is the node's state before kube-routerd first ran.
	before string
}

// TestPackagedNode is the operator's life with the package, one step after another:
// each builds on the state the one before left.
func TestPackagedNode(t *testing.T) {
	if os.Getenv("KUBEROUTERD_NODE") != "1" {
		testenv.Unavailable(t, "needs the node tier's machine: run hack/node/run-tests.sh")
	}
	testenv.RequireRoot(t)
	rc, cs := testenv.APIServer(t)
	name, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{rc: rc, cs: cs, name: name, packages: packagesDir(t)}
	t.Cleanup(func() {
		if c.stream != nil {
			c.stream.Finish()
		}
	})
	if !t.Run("install", c.install) {
		t.Fatal("the package did not install; nothing else can be tried")
	}
	c.join(t)
	for _, step := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"start", c.start},
		{"pods", c.pods},
		{"watchdog", c.watchdog},
		{"config", c.reconfigure},
		{"upgrade", c.upgrade},
		{"remove", c.removeAndPurge},
	} {
		if !t.Run(step.name, step.run) {
			t.Fatalf("step %q failed; the steps after it build on it", step.name)
		}
	}
}

// join plugs this machine into a link with node-2, and into another with a host
// outside the cluster; registers both Nodes; starts kube-routerd on node-2 (the binary
// of the installed package); and creates the echo Service over two pods on node-2.
func (c *cluster) join(t *testing.T) {
	t.Helper()
	link := netns.NewLink(t)
	joinLink(t, link, "eth1", node1LinkV4, node1LinkV6)
	c.outside = netns.NewNS(t, "outside", "outside")
	veth(t, "eth2", []netip.Prefix{outsideNodeV4, outsideNodeV6}, c.outside, "eth0", outsideV4, outsideV6)
	c.outside.Serve(t, netns.TCP, probePort)
	c.peer = link.AddNode(t, netns.NodeOptions{Name: "node-2", Client: c.cs, PodCIDRv4: node2PodV4, PodCIDRv6: node2PodV6})
	testenv.CreateNode(t, c.cs, testenv.NodeSpec{
		Name:        c.name,
		PodCIDRs:    []string{node1PodV4.String(), node1PodV6.String()},
		InternalIPs: []string{node1LinkV4.Addr().String(), node1LinkV6.Addr().String()},
	})

	c.ns = testenv.Namespace(t, c.cs)
	for _, pod := range []string{"echo-a", "echo-b"} {
		p := c.peer.AddPod(t, netns.PodOptions{Name: pod, Namespace: c.ns, Labels: map[string]string{"app": "echo"}})
		p.ServeEcho(t, echoTargetPort)
		p.Serve(t, netns.TCP, probePort)
		c.backends = append(c.backends, p)
	}
	c.vip = createEchoService(t, c.cs, c.ns, c.backends)

	// A copy, so that node-2 keeps running when node-1 upgrades or removes the package.
	bin := filepath.Join(extractPackage(t, os.Getenv("KUBEROUTERD_NODE_DEB")), "usr/bin/kube-routerd")
	dir := t.TempDir()
	peer := netns.NewDaemon(t, c.peer, bin, filepath.Join(dir, "config.toml"), 30*time.Second)
	config := fmt.Sprintf(`[kubernetes]
kubeconfig = %q
node_name = %q

[service_proxy]
cluster_cidrs = [%q]

# node-1's conflist is in /etc/cni/net.d of this very file system.
[pod_network]
cni_config_file = %q
`, c.peer.ForwardAPIServer(t, c.rc, dir), c.peer.Name, clusterCIDR, filepath.Join(dir, "10-kube-routerd.conflist"))
	if err := os.WriteFile(peer.Config, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("node-2: READY after %s", peer.StartReady(readyTimeout).Round(time.Millisecond))
}

// install: `apt install ./kube-routerd_<version>_amd64.deb` offline pulls in its
// dependencies and neither enables nor starts the service; then the RBAC, the
// kubeconfig and an edit of config.toml, as the README says.
func (c *cluster) install(t *testing.T) {
	deb := c.download(t, os.Getenv("KUBEROUTERD_NODE_DEB"))
	start := time.Now()
	out := c.apt(t, "install", "--yes", "./"+filepath.Base(deb))
	t.Logf("apt install ./%s: %s", filepath.Base(deb), time.Since(start).Round(time.Second))
	// ipset is a dependency, ipvsadm and conntrack are recommended; only the local
	// repository has them.
	for _, dep := range []string{"ipset", "ipvsadm", "conntrack"} {
		if !strings.Contains(out, "Setting up "+dep+" ") {
			t.Errorf("apt did not install %s:\n%s", dep, out)
		}
	}
	if state, active := unitProperty(t, "UnitFileState"), unitProperty(t, "ActiveState"); state != "disabled" || active != "inactive" {
		t.Errorf("after apt install the unit is %s and %s; the package must neither enable nor start it", state, active)
	}
	if _, err := os.Stat("/proc/sys/net/bridge"); err != nil {
		t.Errorf("br_netfilter is not loaded after apt install: %v", err)
	}

	testenv.ApplyRBAC(t, c.cs, rbacPath)
	kubeconfig, err := os.ReadFile(os.Getenv("KUBEROUTERD_NODE_KUBECONFIG"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kubeconfigPath, kubeconfig, 0o600); err != nil {
		t.Fatal(err)
	}
	setConfig(t, "service_proxy", "cluster_cidrs", fmt.Sprintf("[%q]", clusterCIDR))
	sh(t, "kube-routerd", "check-config", "--config", configPath)
	t.Logf("systemd-analyze security %s:\n%s", unit, sh(t, "systemd-analyze", "security", "--no-pager", unit))
}

// start: `systemctl enable --now`: the shipped unit with all its hardening reaches
// active (running) through READY=1, shows its STATUS= line, and the journal shows no
// denial; node-1 then programs the Service and learns node-2's routes.
func (c *cluster) start(t *testing.T) {
	c.before = nodeState(t)
	cursor := journalCursor(t)
	start := time.Now()
	sh(t, "systemctl", "enable", "--now", unit)
	t.Logf("systemctl enable --now returned (READY=1) after %s", time.Since(start).Round(time.Millisecond))
	expectRunning(t)
	if got := unitProperty(t, "UnitFileState"); got != "enabled" {
		t.Errorf("UnitFileState = %s after systemctl enable", got)
	}
	status := sh(t, "systemctl", "status", "--no-pager", "--lines=0", unit)
	if !strings.Contains(status, `Status: "`) {
		t.Errorf("systemctl status shows no STATUS= line:\n%s", status)
	}
	t.Logf("systemctl status %s:\n%s", unit, status)
	expectNoDenials(t, cursor)
	t.Logf("kube-routerd status:\n%s", sh(t, "kube-routerd", "status"))

	c.waitServiceProgrammed(t)
	testenv.Eventually(t, "node-1's route to node-2's pods", 2*time.Minute, func() bool {
		return strings.TrimSpace(sh(t, "ip", "route", "show", node2PodV4.String())) != ""
	})
	c.stream = netns.StartEchoStream(t, c.dialEcho(t), 100*time.Millisecond)
	c.stream.WaitEchoes(t, 5, "after the start")
	t.Logf("node-1's connection through %s is served by %s", netip.AddrPortFrom(c.vip, echoPort), c.stream.Server)
}

// pods: a pod made as containerd makes it, by the bridge plugin with the conflist
// kube-routerd wrote, gets an address of each family from node-1's pod CIDRs and the
// conflist's MTU, reaches a pod on node-2 with its own source address, the Service,
// and a host outside the cluster with node-1's address; DEL releases its addresses.
func (c *cluster) pods(t *testing.T) {
	testenv.Eventually(t, "kube-routerd to write "+cniConfigPath, time.Minute, func() bool {
		_, err := os.Stat(cniConfigPath)
		return err == nil
	})
	network := readConflist(t, cniConfigPath)
	t.Logf("%s:\n%s", cniConfigPath, sh(t, "cat", cniConfigPath))
	pod := addCNIPod(t, network, "cni-client")
	if !node1PodV4.Contains(pod.IPv4) || !node1PodV6.Contains(pod.IPv6) {
		t.Fatalf("the pod got %s and %s, not addresses of node-1's pod CIDRs %s and %s", pod.IPv4, pod.IPv6, node1PodV4, node1PodV6)
	}
	eth0, err := pod.Netlink.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := network.Plugins[0]["mtu"].(float64); eth0.Attrs().MTU != int(want) {
		t.Errorf("the pod's MTU is %d, the conflist says %v", eth0.Attrs().MTU, network.Plugins[0]["mtu"])
	}
	t.Logf("the pod has %s and %s, MTU %d", pod.IPv4, pod.IPv6, eth0.Attrs().MTU)
	// A pod made at any moment gets the right MTU only if no version of the file had
	// another.
	for _, m := range cniWrite.FindAllStringSubmatch(sh(t, "journalctl", "--no-pager", "--output=cat", "--unit", unit), -1) {
		if m[1] != strconv.Itoa(eth0.Attrs().MTU) {
			t.Errorf("kube-routerd once wrote the conflist with MTU %s: %s", m[1], m[0])
		}
	}
	testenv.CreatePod(t, c.cs, testenv.PodSpec{
		Namespace: c.ns, Name: "cni-client", NodeName: c.name,
		IPs: []string{pod.IPv4.String(), pod.IPv6.String()}, HostIP: node1LinkV4.Addr().String(),
	})

	backend := c.backends[0]
	for _, pair := range [][2]netip.Addr{{backend.IPv4, pod.IPv4}, {backend.IPv6, pod.IPv6}} {
		dst, src := pair[0], pair[1]
		r := reach(t, pod.NS, netip.AddrPortFrom(dst, probePort))
		if r.Server != backend.Label || r.Client.Addr() != src {
			t.Errorf("pod to %s on node-2: answered by %s, which saw %s; want %s seeing the pod's own address", dst, r.Server, r.Client.Addr(), backend.Label)
		}
	}
	conn, err := pod.DialTCP(netip.AddrPortFrom(c.vip, echoPort), 10*time.Second)
	if err != nil {
		t.Fatalf("pod to the Service %s: %v", c.vip, err)
	}
	server, err := netns.EchoOnce(conn)
	if err != nil {
		t.Fatalf("pod to the Service %s: %v", c.vip, err)
	}
	t.Logf("pod to the Service %s: answered by %s", c.vip, server)
	for _, dst := range []netip.Prefix{outsideV4, outsideV6} {
		r := reach(t, pod.NS, netip.AddrPortFrom(dst.Addr(), probePort))
		want := outsideNodeV4.Addr()
		if dst.Addr().Is6() {
			want = outsideNodeV6.Addr()
		}
		if r.Client.Addr() != want {
			t.Errorf("pod to %s outside the cluster arrived from %s, want node-1's address %s (masqueraded)", dst.Addr(), r.Client.Addr(), want)
		}
	}

	leases := filepath.Join("/var/lib/cni/networks", network.Name)
	pod.Delete(t)
	for _, ip := range []netip.Addr{pod.IPv4, pod.IPv6} {
		if _, err := os.Stat(filepath.Join(leases, ip.String())); !os.IsNotExist(err) {
			t.Errorf("after DEL the lease of %s is still in %s (%v)", ip, leases, err)
		}
	}
	if _, err := pod.Netlink.LinkByName("eth0"); err == nil {
		t.Errorf("after DEL the pod still has eth0")
	}
}

// watchdog: a daemon that stops answering (SIGSTOP) is restarted by systemd once
// WatchdogSec passes without a ping, and the connection through the Service keeps
// working meanwhile.
func (c *cluster) watchdog(t *testing.T) {
	pid, restarts := mainPID(t), unitProperty(t, "NRestarts")
	cursor := journalCursor(t)
	stoppedAt := time.Now()
	if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "systemd to restart the stopped daemon", 5*time.Minute, func() bool {
		return mainPID(t) != pid && unitProperty(t, "ActiveState") == "active" && unitProperty(t, "SubState") == "running"
	})
	took := time.Since(stoppedAt)
	if got := unitProperty(t, "NRestarts"); got == restarts {
		t.Errorf("NRestarts stayed %s", got)
	}
	if journal := sh(t, "journalctl", "--no-pager", "--output=cat", "--after-cursor", cursor); !strings.Contains(journal, unit+": Watchdog timeout") {
		t.Errorf("the journal does not say the watchdog fired:\n%s", testenv.LastLines(journal, 40))
	}
	t.Logf("SIGSTOP to READY=1 of the next process: %s (WatchdogSec=%s, TimeoutAbortSec=%s, RestartUSec=%s); the journal:\n%s",
		took.Round(time.Second), unitProperty(t, "WatchdogUSec"), unitProperty(t, "TimeoutAbortUSec"), unitProperty(t, "RestartUSec"), journalTimes(t, cursor))
	c.stream.WaitEchoes(t, 5, "after the watchdog restart")
	c.newConnection(t)
}

// reconfigure: an edit of config.toml and `systemctl restart` is applied; a broken
// config makes the unit fail with check-config's message in the journal while the
// dataplane keeps forwarding.
func (c *cluster) reconfigure(t *testing.T) {
	setConfig(t, "service_proxy", "scheduler", `"wlc"`)
	sh(t, "kube-routerd", "check-config", "--config", configPath)
	sh(t, "systemctl", "restart", unit)
	expectRunning(t)
	target := netip.AddrPortFrom(c.vip, echoPort).String()
	testenv.Eventually(t, "the Service on the wlc scheduler", time.Minute, func() bool {
		return strings.Contains(sh(t, "ipvsadm", "-Ln", "-t", target), " wlc")
	})

	good, err := os.ReadFile(configPath)
	if err != nil {
		t.Fatal(err)
	}
	// One of each kind of mistake: a string for a number, a bad CIDR, an unknown key, a
	// bad scheduler, a bad listen address. check-config reports them all.
	broken := strings.NewReplacer(
		"asn = 64512", `asn = "64512"`,
		fmt.Sprintf("cluster_cidrs = [%q]", clusterCIDR), `cluster_cidrs = ["10.244.0.0/33"]`,
		`scheduler = "wlc"`, "scheduler = \"fastest\"\nschedular = \"rr\"",
		`listen = "127.0.0.1:20244"`, `listen = "nowhere"`,
	).Replace(string(good))
	writeConfig(t, broken)
	problems, err := run("", "kube-routerd", "check-config", "--config", configPath)
	if err == nil {
		t.Fatalf("check-config accepts the broken config:\n%s", problems)
	}
	t.Logf("kube-routerd check-config:\n%s", problems)
	for _, key := range []string{"asn", "cluster_cidrs", "schedular", "scheduler", "listen"} {
		if !strings.Contains(problems, key) {
			t.Errorf("check-config does not report %s", key)
		}
	}
	cursor, restarts := journalCursor(t), unitProperty(t, "NRestarts")
	if out, err := run("", "systemctl", "restart", unit); err == nil {
		t.Errorf("systemctl restart with a broken config succeeded:\n%s", out)
	}
	// Exit status 78 (a config that does not load) is not restarted: the unit fails
	// at once instead of looping.
	if active, status := unitProperty(t, "ActiveState"), unitProperty(t, "ExecMainStatus"); active != "failed" || status != "78" {
		t.Errorf("after the restart with a broken config the unit is %s with exit status %s, want failed with 78", active, status)
	}
	if got := unitProperty(t, "NRestarts"); got != restarts {
		t.Errorf("systemd restarted the daemon with the broken config (NRestarts %s -> %s)", restarts, got)
	}
	journal := journalSince(t, cursor)
	for _, line := range strings.Split(strings.TrimSpace(problems), "\n") {
		if !strings.Contains(journal, strings.TrimSpace(line)) {
			t.Errorf("the journal lacks check-config's line %q:\n%s", line, journal)
		}
	}
	t.Logf("the journal of the failed start:\n%s", journal)
	c.stream.WaitEchoes(t, 5, "while the unit is failed")
	c.newConnection(t)

	writeConfig(t, string(good))
	sh(t, "systemctl", "restart", unit)
	expectRunning(t)
}

// upgrade: `apt install` of a newer build while a connection through a Service is open
// restarts the daemon on the new binary; the connection and the config edits survive.
func (c *cluster) upgrade(t *testing.T) {
	deb := c.download(t, os.Getenv("KUBEROUTERD_NODE_UPGRADE_DEB"))
	pid, echoes := mainPID(t), c.stream.Echoed()
	cursor := journalCursor(t)
	start := time.Now()
	c.apt(t, "install", "--yes", "./"+filepath.Base(deb))
	t.Logf("apt install ./%s: %s", filepath.Base(deb), time.Since(start).Round(time.Second))
	want := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(deb), "kube-routerd_"), "_amd64.deb")
	if got := sh(t, "dpkg-query", "--show", "--showformat=${Version}", "kube-routerd"); got != want {
		t.Errorf("installed version %s, want %s", got, want)
	}
	expectRunning(t)
	if mainPID(t) == pid {
		t.Errorf("the daemon was not restarted by the upgrade (PID %d)", pid)
	}
	version := sh(t, "kube-routerd", "version")
	if upstream, _, _ := strings.Cut(want, "-"); !strings.HasPrefix(version, "kube-routerd "+upstream+"+") {
		t.Errorf("kube-routerd version = %q after upgrading to %s", version, want)
	}
	config, err := os.ReadFile(configPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(config), `scheduler = "wlc"`) {
		t.Errorf("the upgrade lost the config edit:\n%s", config)
	}
	if leftovers, _ := filepath.Glob(configPath + ".dpkg-*"); len(leftovers) > 0 {
		t.Errorf("dpkg left %v", leftovers)
	}
	expectNoDenials(t, cursor)
	c.stream.WaitEchoes(t, 5, "after the upgrade")
	t.Logf("%d echoes over the connection during the upgrade", c.stream.Echoed()-echoes)
	c.newConnection(t)
}

// removeAndPurge: `apt remove` stops and disables the service and leaves the dataplane,
// so traffic still flows; `apt purge` then `kube-routerd cleanup` (from the package
// file, the installed binary being gone) leave nothing of kube-routerd on the node.
func (c *cluster) removeAndPurge(t *testing.T) {
	pid := mainPID(t)
	c.apt(t, "remove", "--yes", "kube-routerd")
	if active := unitProperty(t, "ActiveState"); active != "inactive" {
		t.Errorf("ActiveState = %s after apt remove", active)
	}
	if _, err := os.Lstat("/etc/systemd/system/multi-user.target.wants/" + unit); !os.IsNotExist(err) {
		t.Errorf("the unit is still enabled after apt remove (%v)", err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !os.IsNotExist(err) {
		t.Errorf("the daemon (PID %d) still runs after apt remove", pid)
	}
	if _, err := os.Stat(configPath); err != nil {
		t.Errorf("apt remove removed the config: %v", err)
	}
	c.stream.WaitEchoes(t, 5, "after apt remove")
	c.newConnection(t)

	c.apt(t, "purge", "--yes", "kube-routerd")
	for _, f := range packageFiles(t, os.Getenv("KUBEROUTERD_NODE_UPGRADE_DEB")) {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s is still there after apt purge", f)
		}
	}
	c.stream.WaitEchoes(t, 5, "after apt purge")
	if echoed, err := c.stream.Finish(); err != nil {
		t.Fatalf("the connection through the Service broke after %d echoes: %v", echoed, err)
	} else {
		t.Logf("%d echoes over one connection from the first start to apt purge", echoed)
	}

	pkg := extractPackage(t, os.Getenv("KUBEROUTERD_NODE_UPGRADE_DEB"))
	t.Logf("kube-routerd cleanup:\n%s", sh(t, filepath.Join(pkg, "usr/bin/kube-routerd"), "cleanup", "--config", filepath.Join(pkg, "etc/kube-router/config.toml")))
	if diff := stateDiff(c.before, nodeState(t)); diff != "" {
		t.Errorf("after purge and cleanup the node differs from before the install (- gone, + left):\n%s", diff)
	}
}

// packagesDir is where the operator downloads packages: readable by apt's sandbox user.
func packagesDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/var/tmp", "packages-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// download copies a package file from the run share into the operator's directory.
func (c *cluster) download(t *testing.T, src string) string {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	dst := filepath.Join(c.packages, filepath.Base(src))
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err == nil {
		_, err = io.Copy(out, in)
	}
	if err == nil {
		err = out.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// apt runs apt in the operator's package directory and returns its output.
func (c *cluster) apt(t *testing.T, args ...string) string {
	t.Helper()
	out, err := run(c.packages, "apt", args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// extractPackage unpacks a .deb into a new directory and returns it.
func extractPackage(t *testing.T, deb string) string {
	t.Helper()
	dir := t.TempDir()
	sh(t, "dpkg-deb", "--extract", deb, dir)
	return dir
}

// packageFiles lists the regular files a .deb installs.
func packageFiles(t *testing.T, deb string) []string {
	t.Helper()
	var files []string
	for _, l := range strings.Split(sh(t, "dpkg-deb", "--contents", deb), "\n") {
		if f := strings.Fields(l); len(f) >= 6 && strings.HasPrefix(f[0], "-") {
			files = append(files, strings.TrimPrefix(f[5], "."))
		}
	}
	if len(files) == 0 {
		t.Fatalf("%s lists no files", deb)
	}
	return files
}

// mainPID is the PID of the running daemon, 0 when none runs.
func mainPID(t testing.TB) int {
	t.Helper()
	pid, err := strconv.Atoi(unitProperty(t, "MainPID"))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// expectRunning fails the test unless the unit is active (running).
func expectRunning(t testing.TB) {
	t.Helper()
	if active, sub := unitProperty(t, "ActiveState"), unitProperty(t, "SubState"); active != "active" || sub != "running" {
		t.Fatalf("kube-routerd.service is %s (%s):\n%s", active, sub, sh(t, "journalctl", "--no-pager", "--lines=40", "--unit", unit))
	}
}

// journalTimes is what systemd logged about the unit after cursor, and the daemon's
// start and readiness, with monotonic timestamps: how long each stage of a restart took.
func journalTimes(t testing.TB, cursor string) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(sh(t, "journalctl", "--no-pager", "--output=short-monotonic", "--after-cursor", cursor), "\n") {
		if strings.Contains(l, " systemd[1]: ") && strings.Contains(l, unit) || strings.Contains(l, "starting kube-routerd") || strings.Contains(l, "ready") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// joinLink plugs this machine into the link through a veth pair (name here, its peer on
// the link's bridge) with the given addresses. The pair goes with the link.
func joinLink(t *testing.T, l *netns.Link, name string, addrs ...netip.Prefix) {
	t.Helper()
	const port = "n0" // the link numbers its nodes' ports from n1
	veth(t, name, addrs, l.NS, port)
	link, err := l.Netlink.LinkByName(port)
	if err != nil {
		t.Fatal(err)
	}
	bridge, err := l.Netlink.LinkByName("br0")
	if err == nil {
		err = l.Netlink.LinkSetMaster(link, bridge)
	}
	if err != nil {
		t.Fatalf("plug %s into the link: %v", port, err)
	}
}

// veth creates a veth pair from this machine (name, with addrs) into ns (peer, with
// peerAddrs), both ends up. It goes when ns does.
func veth(t *testing.T, name string, addrs []netip.Prefix, ns *netns.NS, peer string, peerAddrs ...netip.Prefix) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer, PeerNamespace: netlink.NsFd(int(ns.Handle))}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatalf("create veth %s/%s: %v", name, peer, err)
	}
	configureLink(t, &netlink.Handle{}, name, addrs)
	configureLink(t, ns.Netlink, peer, peerAddrs)
}

// configureLink adds addresses (without duplicate address detection) to a link and
// sets it up.
func configureLink(t *testing.T, h *netlink.Handle, name string, addrs []netip.Prefix) {
	t.Helper()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}, Flags: unix.IFA_F_NODAD}
		if err := h.AddrAdd(link, addr); err != nil {
			t.Fatalf("add %s to %s: %v", a, name, err)
		}
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
}

// reach expects a probe from a namespace to target to be answered, retrying for a
// minute over the loaded machine, and returns the reply.
func reach(t *testing.T, from *netns.NS, target netip.AddrPort) netns.Reply {
	t.Helper()
	var reply netns.Reply
	testenv.Eventually(t, fmt.Sprintf("an answer from %s to %s", from.Label, target), time.Minute, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := from.Probe(ctx, netns.TCP, target)
		if err != nil {
			t.Logf("probe %s -> %s: %v", from.Label, target, err)
			return false
		}
		reply = r
		return true
	})
	return reply
}

// createEchoService creates a ClusterIP Service on echoPort over the backends, and the
// EndpointSlice the (absent) controller-manager would write. It returns the ClusterIP.
func createEchoService(t *testing.T, cs kubernetes.Interface, ns string, backends []*netns.Pod) netip.Addr {
	t.Helper()
	ctx := context.Background()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo", Namespace: ns},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "echo"},
			Ports:    []corev1.ServicePort{{Name: "echo", Protocol: corev1.ProtocolTCP, Port: echoPort, TargetPort: intstr.FromInt32(echoTargetPort)}},
		},
	}
	created, err := cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "echo-1", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "echo"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("echo"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](echoTargetPort)}},
	}
	for _, p := range backends {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{p.IPv4.String()},
			NodeName:   ptr.To(p.Node.Name),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: p.Name},
		})
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return netip.MustParseAddr(created.Spec.ClusterIP)
}

// waitServiceProgrammed waits until node-1's IPVS balances the echo Service over every
// backend.
func (c *cluster) waitServiceProgrammed(t *testing.T) {
	t.Helper()
	target := netip.AddrPortFrom(c.vip, echoPort).String()
	testenv.Eventually(t, "IPVS on node-1 to balance "+target, 2*time.Minute, func() bool {
		out, _ := run("", "ipvsadm", "-Ln", "-t", target)
		for _, b := range c.backends {
			if !strings.Contains(out, b.IPv4.String()) {
				return false
			}
		}
		return true
	})
}

// dialEcho opens a connection from node-1 to the echo Service.
func (c *cluster) dialEcho(t *testing.T) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", netip.AddrPortFrom(c.vip, echoPort).String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// newConnection expects a fresh connection from node-1 through the Service to be
// answered, retrying for a minute over the loaded machine.
func (c *cluster) newConnection(t *testing.T) {
	t.Helper()
	target := netip.AddrPortFrom(c.vip, echoPort).String()
	testenv.Eventually(t, "a new connection to "+target, time.Minute, func() bool {
		conn, err := net.DialTimeout("tcp", target, 5*time.Second)
		if err == nil {
			_, err = netns.EchoOnce(conn)
		}
		if err != nil {
			t.Logf("new connection to %s: %v", target, err)
		}
		return err == nil
	})
}
