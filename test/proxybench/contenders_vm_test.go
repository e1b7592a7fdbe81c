//go:build vm

package proxybench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// KubeProxyEnv names the environment variable holding the path of the kube-proxy
// binary; hack/vm/run-tests.sh sets it in the guest when KUBEROUTERD_VM_KUBE_PROXY
// gave it one to ship.
const KubeProxyEnv = "KUBEROUTERD_KUBE_PROXY"

// clusterCIDR is the pod network every contender is told about (traffic from
// elsewhere to a Service is masqueraded).
const clusterCIDR = "10.244.0.0/16"

// contender is one service proxy under comparison, and how it is read from outside.
type contender struct {
	name string
	// maxServices, when not 0, is the largest scale it runs at in the emulated VM.
	maxServices int
	// minSync is the shortest interval between two of its syncs; changes are spaced
	// by twice that so that each is measured on its own.
	minSync time.Duration
	// command writes its config files into dir and returns the command line that
	// runs it on node, reaching the API server through kubeconfig.
	command func(b *testing.B, node *netns.Node, kubeconfig, dir string) []string
	// metricsURL is its Prometheus endpoint on the node's loopback.
	metricsURL string
	// readyURL, when set, answers 200 once the first full sync is done, and costs
	// less than a scrape: kube-routerd's metrics read every IPVS counter of the
	// kernel, which polled would slow the sync being measured.
	readyURL string
	// lastSync is the gauge of its last successful sync (Unix seconds) and syncs the
	// histogram of its sync durations, with the labels that select its IPv4 Services.
	lastSync, syncs string
	labels          []string
	// kernel opens the view of what it programs in node.
	kernel func(b *testing.B, node *netns.Node, namespace string) kernelView
	// profileURL, when set, serves a CPU profile of the process (net/http/pprof).
	profileURL string
}

// kernelView reads what a contender programmed in its node's kernel.
type kernelView interface {
	// endpoints counts the endpoints of the workload's Services the kernel sends
	// traffic to (Services x 10 once everything is programmed).
	endpoints() (int, error)
	// hasEndpoint reports whether traffic to svc's port 80 may go to addr.
	hasEndpoint(svc *corev1.Service, addr netip.Addr) (bool, error)
}

// kubeRouterd is the real kube-routerd binary (`make build`) with only its service
// proxy enabled.
func kubeRouterd(b *testing.B) contender {
	bin, err := filepath.Abs("../../bin/kube-routerd")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		testenv.Unavailable(b, "no %s: run make build first", bin)
	}
	return contender{
		name:    "kube-routerd",
		minSync: 100 * time.Millisecond, // service_proxy.min_sync_interval's default
		command: func(b *testing.B, node *netns.Node, kubeconfig, dir string) []string {
			config := filepath.Join(dir, "config.toml")
			writeFile(b, config, fmt.Sprintf(`[kubernetes]
kubeconfig = %q
node_name = %q

[service_proxy]
cluster_cidrs = [%q]

[network_policy]
enabled = false

[routing]
enabled = false

[pod_network]
write_cni_config = false
masquerade_egress = false

[metrics]
listen = "127.0.0.1:20245"

[debug]
pprof_listen = "127.0.0.1:20246"
`, kubeconfig, node.Name, clusterCIDR))
			return []string{bin, "run", "--config", config}
		},
		metricsURL: "http://127.0.0.1:20245/metrics",
		readyURL:   "http://127.0.0.1:20244/readyz/proxy",
		lastSync:   "kube_routerd_last_successful_sync_timestamp_seconds",
		syncs:      "kube_routerd_sync_duration_seconds",
		labels:     []string{`controller="proxy"`},
		kernel:     openIPVSView,
		profileURL: "http://127.0.0.1:20246/debug/pprof/profile",
	}
}

// kubeProxy is kube-proxy in mode ("ipvs" or "nftables") with its defaults, told the
// node's name and the cluster CIDR; it leaves the conntrack table's global limits
// alone, which a network namespace may not change.
func kubeProxy(b *testing.B, mode string) contender {
	bin := os.Getenv(KubeProxyEnv)
	if bin == "" {
		testenv.Unavailable(b, "%s is not set: run through hack/bench.sh, or give hack/vm/run-tests.sh "+
			"KUBEROUTERD_VM_KUBE_PROXY=$(hack/kube-bin.sh kube-proxy)/kube-proxy", KubeProxyEnv)
	}
	c := contender{
		name:    "kube-proxy-" + mode,
		minSync: time.Second, // minSyncPeriod's default
		command: func(b *testing.B, node *netns.Node, kubeconfig, dir string) []string {
			config := filepath.Join(dir, "kube-proxy.yaml")
			writeFile(b, config, fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: %s
hostnameOverride: %s
clusterCIDR: %s
clientConnection:
  kubeconfig: %s
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, mode, node.Name, clusterCIDR, kubeconfig))
			return []string{bin, "--config", config}
		},
		metricsURL: "http://127.0.0.1:10249/metrics",
		lastSync:   "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
		syncs:      "kubeproxy_sync_proxy_rules_duration_seconds",
		labels:     []string{`ip_family="IPv4"`},
		kernel:     openIPVSView,
	}
	switch mode {
	case "nftables":
		c.kernel = openNFTablesView
	case "ipvs":
		// Every sync of it goes over every Service: at 1,000 Services its first sync took
		// 144-188 s (170-225 s CPU) in the emulated VM and the sync of one changed
		// endpoint 8-13 s; at 10,000 the run would not fit in the VM run's hour.
		c.maxServices = 1000
	}
	return c
}

func writeFile(b *testing.B, path, text string) {
	b.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		b.Fatal(err)
	}
}

// ipvsView reads IPVS over netlink and /proc/net/ip_vs of the node.
type ipvsView struct{ k *ipvs.Kernel }

func openIPVSView(b *testing.B, node *netns.Node, _ string) kernelView {
	b.Helper()
	k, err := ipvs.NewKernelAt(node.Path())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(k.Close)
	return ipvsView{k}
}

// endpoints counts the destinations of TCP port 80 virtual services: the workload's
// Services are the only ones with that port.
func (v ipvsView) endpoints() (int, error) {
	list, err := v.k.Services()
	if err != nil {
		return 0, err
	}
	all, err := v.k.AllDestinations(list)
	n := 0
	for key, ds := range all {
		if key.Proto == ipvs.TCP && key.Port == 80 {
			n += len(ds)
		}
	}
	return n, err
}

func (v ipvsView) hasEndpoint(svc *corev1.Service, addr netip.Addr) (bool, error) {
	key := ipvs.Key{Addr: netip.MustParseAddr(svc.Spec.ClusterIP), Proto: ipvs.TCP, Port: 80}
	ds, err := v.k.Destinations(key)
	return slices.ContainsFunc(ds, func(d ipvs.Destination) bool { return d.Addr == addr }), err
}

// nftablesView reads kube-proxy's nftables table of the node with the nft command
// (parseKubeProxyTable).
type nftablesView struct {
	node      *netns.Node
	namespace string
	// chains maps a Service name to its chain, learned from the table.
	chains map[string]string
}

func openNFTablesView(_ *testing.B, node *netns.Node, namespace string) kernelView {
	return &nftablesView{node: node, namespace: namespace, chains: map[string]string{}}
}

func (v *nftablesView) nft(args ...string) (string, error) {
	out, err := v.node.Command(context.Background(), "nft", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("nft %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (v *nftablesView) endpoints() (int, error) {
	out, err := v.nft("list", "table", "ip", "kube-proxy")
	if err != nil {
		return 0, err
	}
	n := 0
	for name, s := range parseKubeProxyTable(out, v.namespace) {
		v.chains[name] = s.chain
		n += len(s.endpoints)
	}
	return n, nil
}

func (v *nftablesView) hasEndpoint(svc *corev1.Service, addr netip.Addr) (bool, error) {
	chain, ok := v.chains[svc.Name]
	if !ok {
		return false, fmt.Errorf("no nftables chain of Service %s/%s seen", svc.Namespace, svc.Name)
	}
	out, err := v.nft("list", "chain", "ip", "kube-proxy", chain)
	if err != nil {
		return false, err
	}
	s := parseKubeProxyTable(out, v.namespace)[svc.Name]
	return slices.ContainsFunc(s.endpoints, func(ap netip.AddrPort) bool { return ap.Addr() == addr }), nil
}
