package netns

import (
	"net/netip"
	"testing"
)

func TestHostAddr(t *testing.T) {
	for _, tc := range []struct {
		name   string
		prefix string
		n      int
		want   string
	}{
		{"gateway is the first host of an IPv4 pod CIDR", "10.244.3.0/24", 1, "10.244.3.1"},
		{"host part of an unmasked prefix is ignored", "10.244.3.77/24", 2, "10.244.3.2"},
		{"carry crosses an octet", "10.0.0.0/16", 300, "10.0.1.44"},
		{"IPv6 pod CIDR", "fd00:10:244:1::/64", 2, "fd00:10:244:1::2"},
		{"IPv6 link address of node 1", "fd00:200::/64", 11, "fd00:200::b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := hostAddr(netip.MustParsePrefix(tc.prefix), tc.n)
			if got != netip.MustParseAddr(tc.want) {
				t.Errorf("hostAddr(%s, %d) = %s, want %s", tc.prefix, tc.n, got, tc.want)
			}
		})
	}
}

func TestOwnerPID(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ns      string
		wantPID int
		wantOK  bool
	}{
		{"our namespace names carry the PID", "krt-4242-pod7", 4242, true},
		{"namespaces of other tools are not ours", "cni-1234-abcd", 0, false},
		{"a name without a role is not ours", "krt-4242", 0, false},
		{"a non-numeric PID is not ours", "krt-x-node1", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pid, ok := ownerPID(tc.ns)
			if pid != tc.wantPID || ok != tc.wantOK {
				t.Errorf("ownerPID(%q) = %d, %v; want %d, %v", tc.ns, pid, ok, tc.wantPID, tc.wantOK)
			}
		})
	}
}

func TestParseReply(t *testing.T) {
	for _, tc := range []struct {
		name    string
		line    string
		want    Reply
		wantErr bool
	}{
		{"IPv4 client", "pod-a 10.244.1.2:40000\n", Reply{"pod-a", netip.MustParseAddrPort("10.244.1.2:40000")}, false},
		{"IPv6 client", "pod-a [fd00:10:244:1::2]:5\n", Reply{"pod-a", netip.MustParseAddrPort("[fd00:10:244:1::2]:5")}, false},
		{"IPv4-mapped client from a dual-stack listener is unmapped", "b [::ffff:10.0.0.1]:9", Reply{"b", netip.MustParseAddrPort("10.0.0.1:9")}, false},
		{"garbage is an error", "hello", Reply{}, true},
		{"bad address is an error", "pod-a nowhere", Reply{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseReply(tc.line)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("parseReply(%q) = %v, %v; want %v, error %v", tc.line, got, err, tc.want, tc.wantErr)
			}
		})
	}
}
