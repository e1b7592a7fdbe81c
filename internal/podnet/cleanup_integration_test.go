//go:build integration

package podnet

import (
	"errors"
	"log/slog"
	"testing"

	"github.com/vishvananda/netlink"

	tnetns "github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

// TestCleanupDeletesThePodBridgeOnlyWithoutPods: cleanup keeps a pod bridge that pods
// are still attached to and deletes it once the last one is gone.
func TestCleanupDeletesThePodBridgeOnlyWithoutPods(t *testing.T) {
	node := tnetns.NewNode(t, tnetns.NodeOptions{})
	pod := node.AddPod(t, tnetns.PodOptions{})
	cleanup := func() {
		t.Helper()
		if err := node.Do(func() error { return deleteBridge(node.Bridge, slog.Default()) }); err != nil {
			t.Fatal(err)
		}
	}

	cleanup()
	if _, err := node.Netlink.LinkByName(node.Bridge); err != nil {
		t.Fatalf("cleanup deleted %s with a pod on it: %v", node.Bridge, err)
	}
	veth, err := node.Netlink.LinkByName(pod.HostVeth)
	if err == nil {
		err = node.Netlink.LinkDel(veth)
	}
	if err != nil {
		t.Fatal(err)
	}
	cleanup()
	if _, err := node.Netlink.LinkByName(node.Bridge); !errors.As(err, new(netlink.LinkNotFoundError)) {
		t.Fatalf("cleanup left %s without pods (%v)", node.Bridge, err)
	}
}
