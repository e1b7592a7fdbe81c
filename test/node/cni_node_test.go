//go:build node

package node

import (
	"bytes"
	"encoding/json"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// cniBinDir is where Debian's containernetworking-plugins installs the plugins, and
// where Debian's containerd looks for them.
const cniBinDir = "/usr/lib/cni"

// cniNetwork is a conflist as a container runtime reads it.
type cniNetwork struct {
	CNIVersion string           `json:"cniVersion"`
	Name       string           `json:"name"`
	Plugins    []map[string]any `json:"plugins"`
}

// cniResult is what the ADD of a plugin chain returns (CNI 0.4.0 and later).
type cniResult struct {
	IPs []struct {
		Address string `json:"address"`
	} `json:"ips"`
}

// cniPod is a pod sandbox made the way containerd makes one: a new network namespace
// on which the conflist's plugins run in order with CNI_COMMAND=ADD, each getting the
// one before's result as prevResult, and in reverse order with DEL when it goes.
type cniPod struct {
	*netns.NS
	// IPv4 and IPv6 are the addresses IPAM gave the pod.
	IPv4, IPv6 netip.Addr

	network cniNetwork
	result  json.RawMessage
	deleted bool
}

// readConflist reads a conflist file.
func readConflist(t *testing.T, path string) cniNetwork {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var n cniNetwork
	if err := json.Unmarshal(data, &n); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return n
}

// addCNIPod creates a pod sandbox named name on this machine through the network's
// plugins; the pod is deleted through them when the test ends, if not before.
func addCNIPod(t *testing.T, network cniNetwork, name string) *cniPod {
	t.Helper()
	p := &cniPod{NS: netns.NewNS(t, "pod", name), network: network}
	for _, plugin := range network.Plugins {
		p.result = p.exec(t, "ADD", plugin, p.result)
	}
	t.Cleanup(func() {
		if !p.deleted {
			p.Delete(t)
		}
	})
	var res cniResult
	if err := json.Unmarshal(p.result, &res); err != nil {
		t.Fatalf("pod %s: CNI result %s: %v", name, p.result, err)
	}
	for _, ip := range res.IPs {
		prefix, err := netip.ParsePrefix(ip.Address)
		if err != nil {
			t.Fatalf("pod %s: CNI result %s: %v", name, p.result, err)
		}
		if prefix.Addr().Is4() {
			p.IPv4 = prefix.Addr()
		} else {
			p.IPv6 = prefix.Addr()
		}
	}
	return p
}

// Delete runs the plugins' DEL in reverse order, as the runtime does when a pod
// sandbox goes.
func (p *cniPod) Delete(t *testing.T) {
	t.Helper()
	p.deleted = true
	for i := len(p.network.Plugins) - 1; i >= 0; i-- {
		p.exec(t, "DEL", p.network.Plugins[i], p.result)
	}
}

// exec runs one plugin with the network's name and version and prevResult added to
// its configuration, and returns what it printed.
func (p *cniPod) exec(t *testing.T, command string, plugin map[string]any, prevResult json.RawMessage) json.RawMessage {
	t.Helper()
	conf := maps.Clone(plugin)
	conf["name"], conf["cniVersion"] = p.network.Name, p.network.CNIVersion
	if prevResult != nil {
		conf["prevResult"] = prevResult
	}
	stdin, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	kind, _ := plugin["type"].(string)
	cmd := exec.Command(filepath.Join(cniBinDir, kind))
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID="+p.NetnsName,
		"CNI_NETNS="+p.Path(), "CNI_IFNAME=eth0", "CNI_PATH="+cniBinDir)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		// A plugin reports its error as JSON on stdout.
		t.Fatalf("CNI %s %s for %s: %v\n%s%s\nconfig: %s", kind, command, p.Label, err, stdout.Bytes(), stderr.Bytes(), stdin)
	}
	return stdout.Bytes()
}
