// Package netns builds throw-away test hosts out of Linux network namespaces: "node"
// namespaces with a bridge, "pods" wired to it by veth pairs, and a shared link
// namespace that puts several nodes on one L2 segment. It can register the matching
// Node and Pod objects in the test API server, run code or commands inside a namespace,
// and probe TCP, UDP and HTTP between namespaces.
//
// Nothing is created in the host's own namespace: every interface is made directly
// inside the namespaces this package owns, so interface names never collide between
// tests. Namespace names carry the creating PID ("krt-<pid>-..."); the first use in a
// process deletes namespaces left behind by processes that no longer run. Everything
// is deleted on t.Cleanup, also after a failure. Needs root.
package netns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
)

// namePrefix marks network namespaces created by this package.
const namePrefix = "krt-"

// runDir is where named network namespaces are bind-mounted (as by `ip netns add`).
const runDir = "/var/run/netns"

var (
	nsSeq     atomic.Uint64
	sweepOnce sync.Once
)

// NS is one network namespace owned by a test.
type NS struct {
	// NetnsName is the namespace's name under /var/run/netns (usable with
	// `ip netns exec`).
	NetnsName string
	// Label is the human name of the host it plays (node or pod name); servers started
	// in it answer probes with it.
	Label string
	// Handle is an open handle on the namespace.
	Handle vnetns.NsHandle
	// Netlink is a netlink handle that operates inside the namespace.
	Netlink *netlink.Handle
}

// NewNS creates an empty network namespace with loopback up, deleted when the test
// ends. role is a short word that goes into its name ("node", "pod", "link").
func NewNS(t testing.TB, role, label string) *NS {
	t.Helper()
	testenv.RequireRoot(t)
	sweepOnce.Do(func() { sweepStale(t) })
	name := fmt.Sprintf("%s%d-%s%d", namePrefix, os.Getpid(), role, nsSeq.Add(1))
	handle, err := createNamed(name)
	if err != nil {
		if os.IsPermission(err) || err == syscall.EPERM {
			testenv.Unavailable(t, "cannot create network namespace %s: %v", name, err)
		}
		t.Fatalf("create network namespace %s: %v", name, err)
	}
	ns := &NS{NetnsName: name, Label: label, Handle: handle}
	t.Cleanup(func() {
		if err := ns.delete(); err != nil {
			t.Errorf("delete network namespace %s: %v", name, err)
		}
	})
	// Route sockets only: the VM's kernel has no xfrm_user, which a default handle opens too.
	ns.Netlink, err = netlink.NewHandleAt(handle, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", name, err)
	}
	// Interfaces made later in the namespace start usable at once instead of spending
	// seconds on IPv6 duplicate address detection.
	for _, key := range []string{"net/ipv6/conf/all/accept_dad", "net/ipv6/conf/default/accept_dad"} {
		if err := ns.Sysctl(key, "0"); err != nil {
			t.Fatalf("sysctl %s in %s: %v", key, name, err)
		}
	}
	lo, err := ns.Netlink.LinkByName("lo")
	if err == nil {
		err = ns.Netlink.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("set lo up in %s: %v", name, err)
	}
	return ns
}

// createNamed creates and bind-mounts a new network namespace. Creating it moves the
// calling thread into it, so that happens on a locked thread that is thrown away.
func createNamed(name string) (vnetns.NsHandle, error) {
	type result struct {
		h   vnetns.NsHandle
		err error
	}
	done := make(chan result, 1)
	go func() {
		// No UnlockOSThread: the thread ends inside the new namespace and must exit
		// with this goroutine instead of running other goroutines.
		runtime.LockOSThread()
		h, err := vnetns.NewNamed(name)
		done <- result{h, err}
	}()
	r := <-done
	return r.h, r.err
}

func (ns *NS) delete() error {
	if ns.Netlink != nil {
		ns.Netlink.Close()
	}
	ns.Handle.Close()
	return vnetns.DeleteNamed(ns.NetnsName)
}

// Path is the namespace's bind-mount path, as nsenter --net= and setns take it.
func (ns *NS) Path() string { return filepath.Join(runDir, ns.NetnsName) }

// Do runs fn on an OS thread that is inside the namespace. Sockets fn creates belong
// to the namespace for their whole life, so a listener or connection made inside fn
// can be used from any goroutine afterwards; goroutines fn starts do not run inside.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// No UnlockOSThread: the thread is in a foreign namespace and must exit with
		// this goroutine rather than go back to the scheduler.
		runtime.LockOSThread()
		if err := vnetns.Set(ns.Handle); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", ns.NetnsName, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Command returns a command that runs inside the namespace (through nsenter).
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + ns.Path(), "--", name}, args...)...)
}

// Run runs a command inside the namespace, fails the test if it fails, and returns
// its standard output.
func (ns *NS) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := ns.Command(context.Background(), name, args...).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = strings.TrimSpace(string(ee.Stderr))
		}
		t.Fatalf("in %s (%s): %s %s: %v: %s", ns.Label, ns.NetnsName, name, strings.Join(args, " "), err, stderr)
	}
	return string(out)
}

// Save runs iptables-save or ip6tables-save (cmd) with args and returns its output.
// iptables-nft's save fails now and then when another process commits meanwhile
// ("Set with index N in kernel doesn't exist"); tests read while a daemon writes, so
// a failed read is tried again a few times before the test fails.
func (ns *NS) Save(t testing.TB, cmd string, args ...string) string {
	t.Helper()
	var failure string
	for range 5 {
		out, err := ns.Command(context.Background(), cmd, args...).Output()
		if err == nil {
			return string(out)
		}
		failure = err.Error()
		if ee, ok := err.(*exec.ExitError); ok {
			failure += ": " + strings.TrimSpace(string(ee.Stderr))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("in %s (%s): %s %s, 5 tries: %s", ns.Label, ns.NetnsName, cmd, strings.Join(args, " "), failure)
	return ""
}

// Sysctl writes a sysctl of the namespace, for example ("net/ipv4/ip_forward", "1").
func (ns *NS) Sysctl(key, value string) error {
	return ns.Do(func() error {
		// /proc/sys/net resolves to the namespace of the thread that opens it.
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
}

// sweepStale deletes namespaces left by test processes that died without cleaning
// up, and any with this process's PID (a PID reused from such a process).
func sweepStale(t testing.TB) {
	entries, err := os.ReadDir(runDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, ok := ownerPID(e.Name())
		if !ok || (pid != os.Getpid() && processAlive(pid)) {
			continue
		}
		if err := vnetns.DeleteNamed(e.Name()); err != nil {
			t.Logf("delete stale network namespace %s: %v", e.Name(), err)
		}
	}
}

// ownerPID extracts the creating PID from a namespace name made by NewNS.
func ownerPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, namePrefix)
	if !ok {
		return 0, false
	}
	pidText, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(pidText)
	return pid, err == nil && pid > 0
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}

// FlushNeighbours empties the namespace's neighbour tables, IPv4 and IPv6, as
// `ip neigh flush all` does: the next packet to each neighbour resolves its link
// address again, as after a pod starts or an entry went stale.
func (ns *NS) FlushNeighbours(t testing.TB) {
	t.Helper()
	neighs, err := ns.Netlink.NeighList(0, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatalf("list neighbours in %s: %v", ns.Label, err)
	}
	for _, n := range neighs {
		if n.State&(netlink.NUD_NOARP|netlink.NUD_PERMANENT) != 0 {
			continue // multicast and static entries, which ip neigh flush keeps too
		}
		if err := ns.Netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			t.Fatalf("delete neighbour %s in %s: %v", n.IP, ns.Label, err)
		}
	}
}
