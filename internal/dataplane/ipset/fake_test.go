package ipset

import (
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

func TestCanonical(t *testing.T) {
	tests := []struct {
		name  string
		typ   Type
		entry string
		want  string
	}{
		{"hash:ip keeps an ipfamily.IPv4 address", HashIP, "10.0.0.1", "10.0.0.1"},
		{"hash:ip unmaps ipfamily.IPv4-in-ipfamily.IPv6", HashIP, "::ffff:10.0.0.1", "10.0.0.1"},
		{"hash:net adds /32 to a bare address", HashNet, "10.0.0.1", "10.0.0.1/32"},
		{"hash:net masks host bits", HashNet, "10.0.0.1/24", "10.0.0.0/24"},
		{"hash:net ipfamily.IPv6", HashNet, "fd00::1/64", "fd00::/64"},
		{"hash:ip,port defaults to tcp", HashIPPort, "10.0.0.1,80", "10.0.0.1,tcp:80"},
		{"hash:ip,port lowercases the protocol", HashIPPort, "fd00::1,SCTP:9", "fd00::1,sctp:9"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Canonical(tc.typ, tc.entry)
			if err != nil || got != tc.want {
				t.Fatalf("Canonical(%s, %q) = %q, %v; want %q", tc.typ, tc.entry, got, err, tc.want)
			}
		})
	}
	for _, bad := range []string{"10.0.0.1,icmp:1", "x", "10.0.0.1,tcp:70000"} {
		if _, err := Canonical(HashIPPort, bad); err == nil {
			t.Errorf("Canonical(hash:ip,port, %q) succeeded; want an error", bad)
		}
	}
}

func TestFakeSetLifecycle(t *testing.T) {
	f := NewFake()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(f.Create(Set{Name: "KUBE-ROUTER-A", Type: HashIP, Family: ipfamily.IPv4}))
	must(f.Create(Set{Name: "KUBE-ROUTER-A", Type: HashIP, Family: ipfamily.IPv4}))
	if err := f.Create(Set{Name: "KUBE-ROUTER-A", Type: HashNet, Family: ipfamily.IPv4}); err == nil {
		t.Error("re-creating a set with another type succeeded")
	}
	must(f.Add("KUBE-ROUTER-A", "10.0.0.2"))
	must(f.Add("KUBE-ROUTER-A", "10.0.0.1"))
	must(f.Add("KUBE-ROUTER-A", "10.0.0.1"))
	if err := f.Add("KUBE-ROUTER-A", "fd00::1"); err == nil {
		t.Error("adding an ipfamily.IPv6 address to an ipfamily.IPv4 set succeeded")
	}
	must(f.Create(Set{Name: "KUBE-ROUTER-B", Type: HashIPPort, Family: ipfamily.IPv6}))
	must(f.Add("KUBE-ROUTER-B", "fd00::1,udp:53"))
	must(f.Create(Set{Name: "KUBE-ROUTER-T", Type: HashIP, Family: ipfamily.IPv4}))
	must(f.Add("KUBE-ROUTER-T", "10.9.9.9"))
	must(f.Swap("KUBE-ROUTER-A", "KUBE-ROUTER-T"))
	must(f.Del("KUBE-ROUTER-T", "10.0.0.2"))
	must(f.Del("KUBE-ROUTER-T", "10.0.0.2"))
	must(f.Destroy("KUBE-ROUTER-missing"))
	want := `set KUBE-ROUTER-A hash:ip inet
  10.9.9.9
set KUBE-ROUTER-B hash:ip,port inet6
  fd00::1,udp:53
set KUBE-ROUTER-T hash:ip inet
  10.0.0.1
`
	if got := f.Dump(); got != want {
		t.Errorf("Dump:\n%s\nwant:\n%s", got, want)
	}
}
