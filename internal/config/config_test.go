package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestEmptyFileGivesDefaults(t *testing.T) {
	cfg, err := Parse("empty.toml", nil)
	if err != nil {
		t.Fatalf("empty config: %v", err)
	}
	if !reflect.DeepEqual(cfg, Default()) {
		t.Fatalf("empty config differs from defaults:\n%+v\n%+v", cfg, Default())
	}
}

// The packaged reference file must parse and must document exactly the defaults.
func TestReferenceConfigIsTheDefault(t *testing.T) {
	path := filepath.Join("..", "..", "etc", "config.toml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(path, data)
	if err != nil {
		t.Fatalf("reference config: %v", err)
	}
	if !reflect.DeepEqual(cfg, Default()) {
		t.Fatalf("etc/config.toml does not match Default():\nfile:    %+v\ndefault: %+v", cfg, Default())
	}
	uncommented := uncommentedKeys(string(data))
	for _, key := range documentedKeys(Default()) {
		if !uncommented[key] {
			t.Errorf("etc/config.toml does not document key %s", key)
		}
	}
}

func TestPprofListenIsOffByDefaultAndTakesLoopbackAddresses(t *testing.T) {
	if got := Default().Debug.PprofListen; got != "" {
		t.Errorf("default debug.pprof_listen = %q, want off", got)
	}
	for _, addr := range []string{"127.0.0.1:6060", "127.0.0.2:6060", "[::1]:6060"} {
		cfg, err := Parse("c.toml", []byte("[debug]\npprof_listen = \""+addr+"\"\n"))
		if err != nil {
			t.Errorf("%s: %v", addr, err)
		} else if string(cfg.Debug.PprofListen) != addr {
			t.Errorf("%s: got %q", addr, cfg.Debug.PprofListen)
		}
	}
}

func TestProxyHealthzListensLikeKubeProxyAndCanBeTurnedOff(t *testing.T) {
	if got := Default().ServiceProxy.HealthzListen; got != "0.0.0.0:10256" {
		t.Errorf("default service_proxy.healthz_listen = %q, want kube-proxy's 0.0.0.0:10256", got)
	}
	for _, addr := range []string{"", "[::]:10256", "192.0.2.10:10256"} {
		cfg, err := Parse("c.toml", []byte("[service_proxy]\nhealthz_listen = \""+addr+"\"\n"))
		if err != nil {
			t.Errorf("%q: %v", addr, err)
		} else if string(cfg.ServiceProxy.HealthzListen) != addr {
			t.Errorf("%q: got %q", addr, cfg.ServiceProxy.HealthzListen)
		}
	}
}

func TestValidSettingsAreApplied(t *testing.T) {
	cfg, err := Parse("c.toml", []byte(`
[kubernetes]
kubeconfig = "/var/lib/kubelet/kubeconfig"
node_name = "node-a"

[service_proxy]
scheduler = "wrr"
masquerade_all = true
cluster_cidrs = ["10.244.0.0/16", "fd00:10:244::/56"]
sync_period = "1m"
ipvs_tcp_timeout = "1h"
ipvs_udp_timeout = "30s"
external_ip_ranges = ["203.0.113.0/24", "2001:db8:5::/48"]
loadbalancer_ip_ranges = []

[routing]
asn = 4200000000
router_id = "192.0.2.1"
overlay = "always"

[[routing.peers]]
address = "192.0.2.254"
asn = 65000
hold_time = "30s"
multihop = 2

[logging]
level = "debug"
format = "json"
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Kubernetes.NodeName != "node-a" || cfg.ServiceProxy.Scheduler != "wrr" || !cfg.ServiceProxy.MasqueradeAll {
		t.Errorf("settings not applied: %+v", cfg)
	}
	if got := cfg.ServiceProxy.ClusterCIDRs[1].String(); got != "fd00:10:244::/56" {
		t.Errorf("cluster_cidrs[1] = %s", got)
	}
	if cfg.ServiceProxy.SyncPeriod.Duration != time.Minute {
		t.Errorf("sync_period = %s", cfg.ServiceProxy.SyncPeriod)
	}
	if sp := cfg.ServiceProxy; len(sp.ExternalIPRanges) != 2 || sp.ExternalIPRanges[1].String() != "2001:db8:5::/48" || sp.LoadBalancerIPRanges != nil {
		t.Errorf("external_ip_ranges = %v, loadbalancer_ip_ranges = %v", sp.ExternalIPRanges, sp.LoadBalancerIPRanges)
	}
	if sp := cfg.ServiceProxy; sp.IPVSTCPTimeout.Duration != time.Hour || sp.IPVSTCPFinTimeout.Duration != 0 || sp.IPVSUDPTimeout.Duration != 30*time.Second {
		t.Errorf("IPVS timeouts = %s, %s, %s; want 1h, 0 (kernel's), 30s", sp.IPVSTCPTimeout, sp.IPVSTCPFinTimeout, sp.IPVSUDPTimeout)
	}
	if cfg.Routing.ASN != 4200000000 || cfg.Routing.Peers[0].ASN != 65000 || cfg.Routing.Peers[0].Multihop != 2 {
		t.Errorf("routing not applied: %+v", cfg.Routing)
	}
	if !cfg.ServiceProxy.Enabled || !cfg.Routing.GracefulRestart {
		t.Errorf("defaults lost for keys the file does not set")
	}
}

func TestBadInputIsReportedWithKeyAndLine(t *testing.T) {
	cases := []struct {
		name string
		toml string
		want []string // each problem, exactly as printed
	}{
		{
			name: "an unknown key names the key and its line",
			toml: "[service_proxy]\nenabled = true\nshceduler = \"rr\"\n",
			want: []string{"line 3: service_proxy.shceduler: unknown key"},
		},
		{
			name: "an unknown section is an unknown key",
			toml: "\n[servce_proxy]\nenabled = true\n",
			want: []string{"line 2: servce_proxy: unknown section"},
		},
		{
			name: "a wrong type names the key and line",
			toml: "[routing]\nasn = \"64512\"\n",
			want: []string{"line 2: routing.asn: incompatible types: TOML value has type string; destination has type integer"},
		},
		{
			name: "a bad CIDR names the key and line",
			toml: "[service_proxy]\ncluster_cidrs = [\"10.244.0.0/33\"]\n",
			want: []string{`line 2: service_proxy.cluster_cidrs: invalid CIDR "10.244.0.0/33"`},
		},
		{
			name: "a CIDR with host bits set suggests the network",
			toml: "[service_proxy]\ncluster_cidrs = [\"10.244.1.0/16\"]\n",
			want: []string{`line 2: service_proxy.cluster_cidrs: invalid CIDR "10.244.1.0/16": host bits set (did you mean 10.244.0.0/16?)`},
		},
		{
			name: "a bad external IP range names the key and line",
			toml: "[service_proxy]\nloadbalancer_ip_ranges = [\"192.0.2.0/24\"]\nexternal_ip_ranges = [\"203.0.113.7/24\"]\n",
			want: []string{`line 3: service_proxy.external_ip_ranges: invalid CIDR "203.0.113.7/24": host bits set (did you mean 203.0.113.0/24?)`},
		},
		{
			name: "a bad duration names the key and line",
			toml: "[network_policy]\n\nsync_period = \"5 minutes\"\n",
			want: []string{`line 3: network_policy.sync_period: invalid duration "5 minutes" (want e.g. "30s", "5m")`},
		},
		{
			name: "a bad address names the key and line",
			toml: "[routing]\nrouter_id = \"10.0.0.300\"\n",
			want: []string{`line 2: routing.router_id: invalid IP address "10.0.0.300"`},
		},
		{
			name: "every semantic problem is listed at once, in line order",
			toml: `[service_proxy]
scheduler = "fastest"
[routing]
asn = 0
listen_port = 70000
overlay = "sometimes"
[health]
listen = "127.0.0.1:0x50"
[logging]
level = "loud"
`,
			want: []string{
				`line 2: service_proxy.scheduler: unknown IPVS scheduler "fastest"`,
				`line 4: routing.asn: invalid AS number 0 (want 1-4294967294)`,
				`line 5: routing.listen_port: invalid port 70000: must be 1-65535`,
				`line 6: routing.overlay: unknown overlay mode "sometimes" (want always, cross-subnet or never)`,
				`line 8: health.listen: invalid listen address "127.0.0.1:0x50": invalid port "0x50": must be 1-65535`,
				`line 10: logging.level: unknown level "loud" (want debug, info, warn or error)`,
			},
		},
		{
			name: "values of the wrong type or format do not hide the problems after them",
			toml: `[kubernetes]
qps = "fast"
[service_proxy]
cluster_cidrs = ["10.244.0.0/33"]
schduler = "rr"
scheduler = "fastest"
[routing]
router_id = "not-an-ip"
[[routing.peers]]
address = "192.0.2.1"
asn = "65000"
[pod_network]
mtu = 100
[health]
listen = "127.0.0.1"
`,
			want: []string{
				`line 2: kubernetes.qps: incompatible types: TOML value has type string; destination has type float`,
				`line 4: service_proxy.cluster_cidrs: invalid CIDR "10.244.0.0/33"`,
				`line 5: service_proxy.schduler: unknown key`,
				`line 6: service_proxy.scheduler: unknown IPVS scheduler "fastest"`,
				`line 8: routing.router_id: invalid IP address "not-an-ip"`,
				`line 11: routing.peers.asn: incompatible types: TOML value has type string; destination has type integer`,
				`line 13: pod_network.mtu: invalid MTU 100 (want 0 for automatic, or 576-65535)`,
				`line 15: health.listen: invalid listen address "127.0.0.1": want host:port`,
			},
		},
		{
			name: "IPVS timeouts that are negative, too long for the kernel or not whole seconds are rejected",
			toml: `[service_proxy]
ipvs_tcp_timeout = "-5s"
ipvs_tcpfin_timeout = "600h"
ipvs_udp_timeout = "1500ms"
`,
			want: []string{
				`line 2: service_proxy.ipvs_tcp_timeout: invalid duration "-5s": must not be negative`,
				`line 3: service_proxy.ipvs_tcpfin_timeout: 600h0m0s is too long: the kernel takes at most 596h31m23s`,
				`line 4: service_proxy.ipvs_udp_timeout: 1.5s is not a whole number of seconds, which is all IPVS keeps`,
			},
		},
		{
			name: "an ASN above the 4-byte range is rejected",
			toml: "[routing]\nasn = 4294967295\n",
			want: []string{`line 2: routing.asn: invalid AS number 4294967295 (want 1-4294967294)`},
		},
		{
			name: "problems in the second peer name that peer",
			toml: `[[routing.peers]]
address = "192.0.2.1"
asn = 65000
[[routing.peers]]
address = "192.0.2.2"
asn = 65001
hold_time = "1s"
local_address = "2001:db8::1"
`,
			want: []string{
				`line 7: routing.peers[1].hold_time: hold time 1s must be 0 or at least 3s`,
				`line 8: routing.peers[1].local_address: must be of the same IP family as address`,
			},
		},
		{
			name: "a peer without address or ASN",
			toml: "[[routing.peers]]\npassword = \"x\"\n",
			want: []string{
				`line 1: routing.peers[0].address: is required`,
				`line 1: routing.peers[0].asn: invalid AS number 0 (want 1-4294967294)`,
			},
		},
		{
			name: "a proxy healthz address without a port is refused",
			toml: "[service_proxy]\nhealthz_listen = \"0.0.0.0\"\n",
			want: []string{`line 2: service_proxy.healthz_listen: invalid listen address "0.0.0.0": want host:port`},
		},
		{
			name: "a pprof listener off loopback is refused",
			toml: "[debug]\npprof_listen = \"0.0.0.0:6060\"\n",
			want: []string{`line 2: debug.pprof_listen: "0.0.0.0:6060" is not a loopback address: want an IP of 127.0.0.0/8 or ::1 with a port, e.g. "127.0.0.1:6060"`},
		},
		{
			name: "a pprof listener on every address is refused",
			toml: "[debug]\npprof_listen = \":6060\"\n",
			want: []string{`line 2: debug.pprof_listen: ":6060" is not a loopback address: want an IP of 127.0.0.0/8 or ::1 with a port, e.g. "127.0.0.1:6060"`},
		},
		{
			name: "a pprof listener named by host name is refused",
			toml: "[debug]\npprof_listen = \"localhost:6060\"\n",
			want: []string{`line 2: debug.pprof_listen: "localhost:6060" is not a loopback address: want an IP of 127.0.0.0/8 or ::1 with a port, e.g. "127.0.0.1:6060"`},
		},
		{
			name: "a negative GC headroom is refused",
			toml: "[memory]\ngc_headroom_mib = -1\n",
			want: []string{`line 2: memory.gc_headroom_mib: must be 0 (Go's default) or more`},
		},
		{
			name: "a syntax error names its line",
			toml: "[routing]\nasn = = 1\n",
			want: []string{`line 2: routing.asn: expected value but found '=' instead`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := problems(t, tc.toml)
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("problems:\n got: %q\nwant: %q", got, tc.want)
			}
		})
	}
}

// documentedKeys lists the dotted keys of every scalar setting in the schema.
func documentedKeys(c Config) []string {
	var keys []string
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name := f.Tag.Get("toml")
			if name == "" || name == "-" { // not read from the file
				continue
			}
			key := prefix + name
			ft := f.Type
			if ft.Kind() != reflect.Struct || isValueType(ft) {
				keys = append(keys, key)
				continue
			}
			walk(key+".", ft)
		}
	}
	walk("", reflect.TypeOf(c))
	return keys
}

func isValueType(t reflect.Type) bool {
	switch t {
	case reflect.TypeOf(Duration{}), reflect.TypeOf(Prefix{}), reflect.TypeOf(Addr{}):
		return true
	}
	return false
}

// uncommentedKeys finds keys written in the file as "key =" or "# key =" under their
// section headers (commented or not), so optional keys may be shown commented out.
func uncommentedKeys(text string) map[string]bool {
	keys := map[string]bool{}
	section := ""
	for _, line := range strings.Split(text, "\n") {
		l := strings.TrimSpace(line)
		l = strings.TrimSpace(strings.TrimPrefix(l, "#"))
		switch {
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]") && !strings.Contains(l, "="):
			section = strings.Trim(l, "[] ")
			keys[section] = true
		default:
			if i := strings.Index(l, " = "); i > 0 && !strings.Contains(l[:i], " ") {
				keys[section+"."+l[:i]] = true
			}
		}
	}
	return keys
}

// problems parses text, which must not be valid, and returns what is wrong with it.
func problems(t *testing.T, text string) []string {
	t.Helper()
	_, err := Parse("test.toml", []byte(text))
	var cerr *Error
	if !errors.As(err, &cerr) {
		t.Fatalf("want *config.Error, got %v", err)
	}
	var out []string
	for _, p := range cerr.Problems {
		out = append(out, p.String())
	}
	return out
}
