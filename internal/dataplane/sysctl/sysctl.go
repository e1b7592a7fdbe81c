// Package sysctl is kube-routerd's thin adapter over kernel parameters of one network
// namespace, with an in-memory Fake for tests.
package sysctl

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vishvananda/netns"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/nsexec"
)

// Interface reads and writes kernel parameters ("net/ipv4/ip_forward") of one network
// namespace.
type Interface interface {
	Get(key string) (string, error)
	Set(key, value string) error
}

// Proc is the real Interface, through /proc/sys.
type Proc struct {
	// NS is the network namespace; netns.None() means the calling thread's.
	NS netns.NsHandle
}

// do runs fn in p.NS: /proc/sys/net resolves to the namespace of the thread that
// opens it.
func (p Proc) do(fn func() error) error { return nsexec.Run(p.NS, fn) }

// Get implements Interface.
func (p Proc) Get(key string) (string, error) {
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

// Set implements Interface.
func (p Proc) Set(key, value string) error {
	err := p.do(func() error { return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644) })
	if err != nil {
		return fmt.Errorf("setting sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// Fake keeps kernel parameters in memory; a parameter never set reads as "".
type Fake struct {
	mu     sync.Mutex
	values map[string]string
	// Writes counts Set calls.
	Writes int
}

// Get implements Interface.
func (f *Fake) Get(key string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.values[key], nil
}

// Set implements Interface.
func (f *Fake) Set(key, value string) error {
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
func (f *Fake) Values() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.values)
}

// KV is one kernel parameter and the value it must have.
type KV struct{ Key, Value string }

// Ensure sets the parameters that differ and reports how many it wrote.
func Ensure(s Interface, want []KV) (int, error) {
	writes := 0
	for _, kv := range want {
		cur, err := s.Get(kv.Key)
		if err != nil {
			return writes, err
		}
		if cur == kv.Value {
			continue
		}
		if err := s.Set(kv.Key, kv.Value); err != nil {
			return writes, err
		}
		writes++
	}
	return writes, nil
}
