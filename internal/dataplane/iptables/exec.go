package iptables

import (
	"bytes"
	"fmt"
	"os/exec"

	goipt "github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netns"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/nsexec"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// Exec is the real Interface: it runs the iptables binaries, inside a given network
// namespace when it has one.
type Exec struct {
	proto ipfamily.Family
	ns    netns.NsHandle // netns.None() means the caller's namespace
	ipt   *goipt.IPTables
}

// New returns an Interface for the caller's network namespace.
func New(proto ipfamily.Family) (*Exec, error) { return NewAt(proto, netns.None()) }

// NewAt returns an Interface whose commands run inside network namespace ns (the
// handle must stay open while the Interface is used).
func NewAt(proto ipfamily.Family, ns netns.NsHandle) (*Exec, error) {
	e := &Exec{proto: proto, ns: ns}
	goProto := goipt.ProtocolIPv4
	if proto == ipfamily.IPv6 {
		goProto = goipt.ProtocolIPv6
	}
	err := e.inNetns(func() error {
		var err error
		e.ipt, err = goipt.New(goipt.IPFamily(goProto), goipt.Timeout(5))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("initialising iptables (IPv%d): %w", proto, err)
	}
	return e, nil
}

// Family implements Interface.
func (e *Exec) Family() ipfamily.Family { return e.proto }

func (e *Exec) binary(name string) string {
	if e.proto == ipfamily.IPv6 {
		return "ip6tables-" + name
	}
	return "iptables-" + name
}

// Restore implements Interface.
func (e *Exec) Restore(data []byte) error {
	if err := checkRestoreInput(data); err != nil {
		return err
	}
	return e.inNetns(func() error {
		cmd := exec.Command(e.binary("restore"), "--noflush", "--wait=5")
		cmd.Stdin = bytes.NewReader(data)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s: %w: %s", e.binary("restore"), err, bytes.TrimSpace(stderr.Bytes()))
		}
		return nil
	})
}

// SaveChains implements Interface.
func (e *Exec) SaveChains(table string) (map[string][]string, error) {
	var out []byte
	err := e.inNetns(func() error {
		cmd := exec.Command(e.binary("save"), "-t", table)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		var err error
		out, err = cmd.Output()
		if err != nil {
			return fmt.Errorf("%s -t %s: %w: %s", e.binary("save"), table, err, bytes.TrimSpace(stderr.Bytes()))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return parseSave(out)
}

// EnsureRule implements Interface.
func (e *Exec) EnsureRule(table, chain string, appendRule bool, rule ...string) (bool, error) {
	var existed bool
	err := e.inNetns(func() error {
		var err error
		existed, err = e.ipt.Exists(table, chain, rule...)
		if err != nil || existed {
			return err
		}
		if appendRule {
			return e.ipt.Append(table, chain, rule...)
		}
		return e.ipt.Insert(table, chain, 1, rule...)
	})
	if err != nil {
		return false, fmt.Errorf("ensuring rule in %s/%s: %w", table, chain, err)
	}
	return existed, nil
}

// DeleteRule implements Interface.
func (e *Exec) DeleteRule(table, chain string, rule ...string) error {
	err := e.inNetns(func() error {
		err := e.ipt.DeleteIfExists(table, chain, rule...)
		if eerr, ok := err.(*goipt.Error); ok && eerr.IsNotExist() {
			return nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("deleting rule from %s/%s: %w", table, chain, err)
	}
	return nil
}

// inNetns runs fn with the calling thread in e.ns; child processes started by fn
// inherit that namespace.
func (e *Exec) inNetns(fn func() error) error { return nsexec.Run(e.ns, fn) }
