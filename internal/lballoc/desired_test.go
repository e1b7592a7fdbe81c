package lballoc

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func pool(s string) config.IPPool {
	var p config.IPPool
	if err := p.UnmarshalText([]byte(s)); err != nil {
		panic(err)
	}
	return p
}

func params(v4, v6 []string) Params {
	p := Params{Pools: map[ipfamily.Family][]config.IPPool{}, Class: "kube-router", DefaultClass: true}
	for _, s := range v4 {
		p.Pools[ipfamily.IPv4] = append(p.Pools[ipfamily.IPv4], pool(s))
	}
	for _, s := range v6 {
		p.Pools[ipfamily.IPv6] = append(p.Pools[ipfamily.IPv6], pool(s))
	}
	return p
}

// lb is a LoadBalancer Service created age minutes after epoch, of the given
// families ("4", "6", "46", "64"), with the given status IPs.
func lb(name string, age int, families string, ingress ...string) Service {
	s := Service{Key: "ns/" + name, Created: epoch.Add(time.Duration(age) * time.Minute), LoadBalancer: true}
	for _, c := range families {
		s.Families = append(s.Families, map[rune]ipfamily.Family{'4': ipfamily.IPv4, '6': ipfamily.IPv6}[c])
	}
	for _, ip := range ingress {
		s.Ingress = append(s.Ingress, netip.MustParseAddr(ip))
	}
	return s
}

func (s Service) class(c string) Service       { s.Class = c; return s }
func (s Service) requesting(ip string) Service { s.Requested = netip.MustParseAddr(ip); return s }
func (s Service) notLoadBalancer() Service     { s.LoadBalancer = false; return s }

// statusText prints an allocation's status writes as sorted "ns/name=ip,ip" lines.
func statusText(a Allocation) string {
	var lines []string
	for k, ips := range a.Status {
		var ss []string
		for _, ip := range ips {
			ss = append(ss, ip.String())
		}
		lines = append(lines, k+"="+strings.Join(ss, ","))
	}
	slices.Sort(lines)
	return strings.Join(lines, " ")
}

func problemsText(a Allocation) []string {
	var out []string
	for _, p := range a.Problems {
		out = append(out, fmt.Sprintf("%s %s: %s", p.Service, p.Reason, p.Message))
	}
	return out
}

func TestAllocate(t *testing.T) {
	v4 := []string{"192.0.2.0/30"}
	v6 := []string{"2001:db8::10-2001:db8::11"}
	for _, tc := range []struct {
		name     string
		params   Params
		services []Service
		want     string
		problems []string
	}{
		{"new Services get the lowest free addresses, oldest first", params(v4, v6),
			[]Service{lb("b", 2, "4"), lb("a", 1, "4"), lb("c", 2, "4")},
			"ns/a=192.0.2.0 ns/b=192.0.2.1 ns/c=192.0.2.2", nil},
		{"a second pool is used once the first is full", params([]string{"192.0.2.0/31", "198.51.100.7-198.51.100.9"}, nil),
			[]Service{lb("a", 1, "4"), lb("b", 2, "4"), lb("c", 3, "4")},
			"ns/a=192.0.2.0 ns/b=192.0.2.1 ns/c=198.51.100.7", nil},
		{"a dual-stack Service gets one address of each family, primary first", params(v4, v6),
			[]Service{lb("v6first", 1, "64"), lb("v4first", 2, "46"), lb("single6", 3, "6")},
			"ns/single6= ns/v4first=192.0.2.1,2001:db8::11 ns/v6first=2001:db8::10,192.0.2.0",
			[]string{"ns/single6 PoolExhausted: no free IPv6 address in the pools"}},
		{"a dual-stack Service gets the family that has pools", params(v4, nil),
			[]Service{lb("dual", 1, "64")},
			"ns/dual=192.0.2.0", nil},
		{"a Service of a family without pools gets nothing and is reported", params(v4, nil),
			[]Service{lb("v6", 1, "6")},
			"ns/v6=", []string{"ns/v6 NoPool: no pool of its IP families [IPv6]"}},
		{"addresses in status are kept, whatever their order in the pool", params(v4, v6),
			[]Service{lb("a", 1, "4", "192.0.2.3"), lb("b", 2, "46", "192.0.2.1", "2001:db8::11"), lb("new", 3, "4")},
			"ns/a=192.0.2.3 ns/b=192.0.2.1,2001:db8::11 ns/new=192.0.2.0", nil},
		{"a Service that became single-stack keeps its address of that family", params(v4, v6),
			[]Service{lb("a", 1, "6", "192.0.2.3", "2001:db8::11")},
			"ns/a=2001:db8::11", nil},
		{"the older of two Services with one address keeps it, the newer gets another", params(v4, nil),
			[]Service{lb("new", 5, "4", "192.0.2.1"), lb("old", 1, "4", "192.0.2.1")},
			"ns/new=192.0.2.0 ns/old=192.0.2.1",
			[]string{"ns/new Conflict: 192.0.2.1 is also held by ns/old, which keeps it; assigning another"}},
		{"an address outside the pools after a pool change is replaced", params(v4, nil),
			[]Service{lb("a", 1, "4", "203.0.113.5")},
			"ns/a=192.0.2.0", []string{"ns/a OutsidePools: 203.0.113.5 is in no IPv4 pool; assigning another"}},
		{"an exhausted pool is reported per Service and nothing is taken from others", params([]string{"192.0.2.0/31"}, nil),
			[]Service{lb("a", 1, "4"), lb("b", 2, "4"), lb("c", 3, "4")},
			"ns/a=192.0.2.0 ns/b=192.0.2.1 ns/c=",
			[]string{"ns/c PoolExhausted: no free IPv4 address in the pools"}},
		{"a Service of our class is answered, one of another class left alone but its pool address held",
			params(v4, nil),
			[]Service{lb("other", 1, "4", "192.0.2.0").class("example.com/other"), lb("ours", 2, "4").class("kube-router"), lb("default", 3, "4")},
			"ns/default=192.0.2.2 ns/ours=192.0.2.1", nil},
		{"without the default class a Service without class is left alone",
			Params{Pools: params(v4, nil).Pools, Class: "kube-router"},
			[]Service{lb("noclass", 1, "4"), lb("ours", 2, "4").class("kube-router")},
			"ns/ours=192.0.2.0", nil},
		{"a Service no longer of type LoadBalancer is not written and its address is free", params(v4, nil),
			[]Service{lb("was", 1, "4").notLoadBalancer().class("kube-router"), lb("new", 2, "4")},
			"ns/new=192.0.2.0", nil},
		{"a deleted Service's address goes to the next Service", params([]string{"192.0.2.0/31"}, nil),
			[]Service{lb("b", 2, "4", "192.0.2.1"), lb("c", 3, "4")},
			"ns/b=192.0.2.1 ns/c=192.0.2.0", nil},
		{"spec.loadBalancerIP is given when free and in a pool", params(v4, v6),
			[]Service{lb("a", 1, "4").requesting("192.0.2.2"), lb("b", 2, "4")},
			"ns/a=192.0.2.2 ns/b=192.0.2.0", nil},
		{"spec.loadBalancerIP moves a Service to the requested address when it is free", params(v4, v6),
			[]Service{lb("a", 1, "4", "192.0.2.0").requesting("192.0.2.3"), lb("b", 2, "4")},
			"ns/a=192.0.2.3 ns/b=192.0.2.0", nil},
		{"spec.loadBalancerIP held by another Service: the holder keeps it, the asker keeps its own", params(v4, v6),
			[]Service{lb("asker", 1, "4", "192.0.2.0").requesting("192.0.2.1"), lb("holder", 2, "4", "192.0.2.1")},
			"ns/asker=192.0.2.0 ns/holder=192.0.2.1",
			[]string{"ns/asker RequestUnavailable: spec.loadBalancerIP 192.0.2.1 is held by ns/holder"}},
		{"spec.loadBalancerIP outside the pools is not given", params(v4, v6),
			[]Service{lb("a", 1, "4").requesting("203.0.113.9")},
			"ns/a=", []string{"ns/a RequestUnavailable: spec.loadBalancerIP 203.0.113.9 is in no IPv4 pool"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := Allocate(tc.params, tc.services)
			if got := statusText(a); got != tc.want {
				t.Errorf("status:\n got: %s\nwant: %s", got, tc.want)
			}
			if got := problemsText(a); !slices.Equal(got, tc.problems) {
				t.Errorf("problems:\n got: %q\nwant: %q", got, tc.problems)
			}
		})
	}
}

// The allocation read back from the status it wrote is the same, in any order of
// the Services: what a new leader, or this one after a restart, decides.
func TestAllocationRebuiltFromStatusIsStable(t *testing.T) {
	p := params([]string{"192.0.2.0/28"}, []string{"2001:db8::/124"})
	var svcs []Service
	for i := range 12 {
		svcs = append(svcs, lb(fmt.Sprintf("s%02d", i), i%4, []string{"4", "6", "46", "64"}[i%4]))
	}
	first := Allocate(p, svcs)
	written := func(in []Service) []Service {
		out := slices.Clone(in)
		for i := range out {
			out[i].Ingress = first.Status[out[i].Key]
		}
		return out
	}
	// Services deleted meanwhile free their addresses and change nobody else's.
	again := written(svcs)
	slices.Reverse(again)
	gone := again[5].Key
	again = slices.Delete(again, 5, 6)
	second := Allocate(p, again)
	for k, ips := range first.Status {
		if k != gone && !slices.Equal(second.Status[k], ips) {
			t.Errorf("%s: %v after the rebuild, %v before", k, second.Status[k], ips)
		}
	}
	if len(second.Problems) > 0 {
		t.Errorf("problems after the rebuild: %v", second.Problems)
	}
	if second.Used[ipfamily.IPv4]+second.Used[ipfamily.IPv6] != first.Used[ipfamily.IPv4]+first.Used[ipfamily.IPv6]-len(first.Status[gone]) {
		t.Errorf("used %v, before %v less %s's", second.Used, first.Used, gone)
	}
}

func TestPoolSizesAndFree(t *testing.T) {
	p := params([]string{"192.0.2.0/24", "198.51.100.10-198.51.100.19"}, []string{"2001:db8::/64"})
	a := Allocate(p, []Service{lb("a", 1, "46"), lb("b", 2, "4")})
	if a.Size[ipfamily.IPv4] != 266 || a.Free(ipfamily.IPv4) != 264 || a.Used[ipfamily.IPv4] != 2 {
		t.Errorf("IPv4: size %v, free %v, used %d; want 266, 264, 2", a.Size[ipfamily.IPv4], a.Free(ipfamily.IPv4), a.Used[ipfamily.IPv4])
	}
	if a.Size[ipfamily.IPv6] != 1<<64 || a.Used[ipfamily.IPv6] != 1 {
		t.Errorf("IPv6: size %v, used %d; want 2^64, 1", a.Size[ipfamily.IPv6], a.Used[ipfamily.IPv6])
	}
}

func TestServiceOfReadsTheAllocatorsFields(t *testing.T) {
	created := metav1.NewTime(epoch)
	s := serviceOf(&corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web", CreationTimestamp: created, ResourceVersion: "42"},
		Spec: corev1.ServiceSpec{
			Type:              corev1.ServiceTypeLoadBalancer,
			LoadBalancerClass: ptr.To("kube-router"),
			IPFamilies:        []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol},
			LoadBalancerIP:    "192.0.2.7",
		},
		Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{
			{IP: "2001:db8::1"}, {Hostname: "lb.example.com"}, {IP: "192.0.2.7"}}}},
	})
	want := Service{Key: "ns/web", Created: epoch, LoadBalancer: true, Class: "kube-router",
		Families:  []ipfamily.Family{ipfamily.IPv6, ipfamily.IPv4},
		Requested: netip.MustParseAddr("192.0.2.7"), Ingress: []netip.Addr{netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("192.0.2.7")},
		IngressOther: true, ResourceVersion: "42"}
	if fmt.Sprint(s) != fmt.Sprint(want) {
		t.Errorf("got  %+v\nwant %+v", s, want)
	}
}
