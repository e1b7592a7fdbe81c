package proxy

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/nsexec"
	"github.com/vishvananda/netns"
)

// requiredSysctls are the kernel settings IPVS in NAT mode needs on a node:
// conntrack entries for IPVS connections (so nat POSTROUTING can masquerade them),
// dropping connections to removed destinations and stale persistence templates at
// once, forwarding, and no ARP answers for VIPs held on the dummy interface.
var requiredSysctls = []struct{ key, value string }{
	{"net/ipv4/vs/conntrack", "1"},
	{"net/ipv4/vs/expire_nodest_conn", "1"},
	{"net/ipv4/vs/expire_quiescent_template", "1"},
	{"net/ipv4/ip_forward", "1"},
	{"net/ipv4/conf/all/arp_ignore", "1"},
	{"net/ipv4/conf/all/arp_announce", "2"},
}

// Sysctls reads and writes kernel parameters ("net/ipv4/ip_forward") of one network
// namespace.
type Sysctls interface {
	Get(key string) (string, error)
	Set(key, value string) error
}

// ProcSysctls is the real Sysctls, through /proc/sys.
type ProcSysctls struct {
	// NS is the network namespace; netns.None() means the calling thread's.
	NS netns.NsHandle
}

// do runs fn in p.NS: /proc/sys/net resolves to the namespace of the thread that
// opens it.
func (p ProcSysctls) do(fn func() error) error { return nsexec.Run(p.NS, fn) }

// Get implements Sysctls.
func (p ProcSysctls) Get(key string) (string, error) {
	var out string
	err := p.do(func() error {
		data, err := os.ReadFile(filepath.Join("/proc/sys", key))
		out = strings.TrimSpace(string(data))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("reading sysctl %s: %w", key, err)
	}
	return out, nil
}

// Set implements Sysctls.
func (p ProcSysctls) Set(key, value string) error {
	err := p.do(func() error { return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644) })
	if err != nil {
		return fmt.Errorf("setting sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// FakeSysctls keeps kernel parameters in memory.
type FakeSysctls struct {
	mu     sync.Mutex
	values map[string]string
	// Writes counts Set calls.
	Writes int
}

// Get implements Sysctls.
func (f *FakeSysctls) Get(key string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.values[key], nil
}

// Set implements Sysctls.
func (f *FakeSysctls) Set(key, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.values == nil {
		f.values = map[string]string{}
	}
	f.values[key] = value
	f.Writes++
	return nil
}

// Values returns a copy of every parameter set.
func (f *FakeSysctls) Values() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.values)
}

// ensureSysctls sets the required parameters that differ and reports how many it wrote.
func ensureSysctls(s Sysctls) (int, error) {
	writes := 0
	for _, kv := range requiredSysctls {
		cur, err := s.Get(kv.key)
		if err != nil {
			return writes, err
		}
		if cur == kv.value {
			continue
		}
		if err := s.Set(kv.key, kv.value); err != nil {
			return writes, err
		}
		writes++
	}
	return writes, nil
}
