//go:build vm

package dummy

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestAddAddrsInBatches puts more addresses on the interface than one batch holds,
// some twice, and reads them back; IPv6 ones must be usable at once (no DAD).
func TestAddAddrsInBatches(t *testing.T) {
	testenv.RequireVM(t)
	ns := netns.NewNS(t, "node", "dummy")
	h, err := netlink.NewHandleAt(ns.Handle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	l := &Link{Name: "kube-dummy-if", Netlink: h, NS: ns.Handle}
	if err := l.Ensure(); err != nil {
		testenv.Unavailable(t, "dummy interface: %v", err)
	}
	var want []netip.Addr
	for i := range 600 {
		want = append(want, netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i%250 + 1)}))
	}
	for i := range 20 {
		want = append(want, netip.MustParseAddr(fmt.Sprintf("fd00:96::%x", i+1)))
	}
	for pass, addrs := range [][]netip.Addr{want[:300], want} {
		for i, err := range l.AddAddrs(addrs) {
			if err != nil {
				t.Fatalf("pass %d, %s: %v", pass, addrs[i], err)
			}
		}
	}
	got, err := l.Addrs()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, netip.Addr.Compare)
	slices.SortFunc(want, netip.Addr.Compare)
	if !slices.Equal(got, want) {
		t.Fatalf("interface has %d addresses, want %d", len(got), len(want))
	}
	link, err := h.LinkByName(l.Name)
	if err != nil {
		t.Fatal(err)
	}
	list, err := h.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range list {
		if ones, bits := a.Mask.Size(); a.IP.IsGlobalUnicast() && (ones != 128 || bits != 128 || a.Flags&unix.IFA_F_TENTATIVE != 0) {
			t.Errorf("%s: prefix %d/%d, flags %#x; want a /128 without DAD", a.IP, ones, bits, a.Flags)
		}
	}
	if err := l.DelAddr(want[0]); err != nil {
		t.Fatal(err)
	}
	if got, _ := l.Addrs(); slices.Contains(got, want[0]) {
		t.Errorf("%s is still there after DelAddr", want[0])
	}
}
