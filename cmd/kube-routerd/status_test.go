package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/daemon"
)

// statusJSON is a /status answer as a running daemon sends it.
const statusJSON = `{
  "ready": true,
  "time": "2026-01-02T10:00:30Z",
  "controllers": [
    {"name": "proxy", "ready": true, "alive": true, "lastSync": "2026-01-02T10:00:00Z", "lastSyncMs": 1.5, "syncs": 4, "errors": 0, "summary": "1 services"},
    {"name": "routing", "ready": true, "alive": true, "lastSync": "2026-01-02T10:00:25Z", "lastSyncMs": 3, "syncs": 9, "errors": 1, "lastError": "adding route 10.244.2.0/24: no such device"}
  ],
  "details": {
    "proxy": {"services": 1, "virtualServices": 2, "destinations": 4, "draining": 1, "nodePortAddresses": ["192.168.200.10"], "lastSyncWrites": 3,
      "ipvsTimeouts": {"tcp": "1h0m0s", "tcpFin": "2m0s", "udp": "5m0s"},
      "refusedAddresses": {"demo/web": ["198.51.100.9 (ExternalIP)"]},
      "healthCheckNodePorts": [{"service": "demo/web", "port": 32000, "localEndpoints": 2},
                               {"service": "demo/db", "port": 32001, "localEndpoints": 0, "error": "listen tcp :32001: bind: address already in use"}]},
    "netpol": {"policies": 2, "clusterPolicies": 3, "isolatedPods": 1, "rules": 7, "sets": 3, "setEntries": 5, "enforcedPods": 4, "problems": {"policy=demo/bad": ["port \"x\": unknown named port"]}},
    "routing": {"node": "node-a", "address": "192.168.200.10", "asn": 64601, "podCIDRs": ["10.244.1.0/24"],
      "peers": [{"address": "192.168.200.11", "asn": 64512, "node": "node-b", "state": "ESTABLISHED", "flaps": 0},
                {"address": "192.168.200.20", "asn": 65000, "state": "ACTIVE", "flaps": 2}],
      "announced": ["10.244.1.0/24"], "toExternal": ["10.244.1.0/24", "10.96.0.10/32"], "routes": ["10.244.2.0/24 via 192.168.200.11"]},
    "takeover": {"found": true, "adopted": ["IPVS service 10.96.0.10:443/TCP"], "removed": ["tunnel tun-73afc44b0ab (ipip)"],
      "waiting": ["iptables IPv4 nat chain KUBE-ROUTER-HAIRPIN: kube-routerd's proxy controller is off, so nothing replaces it"]},
    "future": {"widgets": 3}
  }
}`

func TestStatusPrintsEachControllerForAPerson(t *testing.T) {
	var rep daemon.StatusReport
	if err := json.Unmarshal([]byte(statusJSON), &rep); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	writeStatus(&b, rep)
	out := b.String()
	for _, want := range []string{
		"kube-routerd: ready",
		"30s ago",
		"routing last error: adding route 10.244.2.0/24: no such device",
		"service proxy: 1 services as 2 IPVS virtual services, 4 destinations (1 draining)",
		"node ports on: 192.168.200.10",
		"IPVS timeouts: tcp 1h0m0s, tcpfin 2m0s, udp 5m0s",
		"refused, outside the allowed ranges, in demo/web: 198.51.100.9 (ExternalIP)",
		"health check node port 32000 of demo/web: 2 local endpoints",
		"health check node port 32001 of demo/db: not open (retried at each sync): listen tcp :32001: bind: address already in use",
		"network policy: 2 policies isolate 1 local pods: 7 rules, 3 sets with 5 entries",
		"  3 cluster network policies",
		"4 local pods in force; other addresses of the pod CIDRs are isolated",
		`skipped in policy=demo/bad: port "x": unknown named port`,
		"routing: node node-a (192.168.200.10), AS 64601, pod CIDRs 10.244.1.0/24",
		"192.168.200.11  64512  node-b      ESTABLISHED  0",
		"192.168.200.20  65000  (external)  ACTIVE       2",
		"announced to external:    10.244.1.0/24, 10.96.0.10/32",
		"    10.244.2.0/24 via 192.168.200.11",
		"takeover from kube-router: 1 adopted, 1 removed, 1 still kept",
		"  adopted: IPVS service 10.96.0.10:443/TCP",
		"  removed: tunnel tun-73afc44b0ab (ipip)",
		"  kept for now: iptables IPv4 nat chain KUBE-ROUTER-HAIRPIN: kube-routerd's proxy controller is off",
		// A controller this binary does not know is still shown, as JSON.
		`"widgets": 3`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}

func TestStatusOfAStartingDaemonSaysSo(t *testing.T) {
	rep := daemon.StatusReport{Time: time.Now(), Controllers: []daemon.ControllerStatus{{Name: "netpol", Alive: true}}}
	var b strings.Builder
	writeStatus(&b, rep)
	for _, want := range []string{"starting (not all controllers synced)", "never", "syncing"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, b.String())
		}
	}
}
