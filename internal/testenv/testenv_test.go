package testenv

import (
	"testing"
)

// recordingTB records how a helper ended the test instead of ending it.
type recordingTB struct {
	testing.TB
	skipped, failed bool
}

func (r *recordingTB) Helper()               {}
func (r *recordingTB) Skipf(string, ...any)  { r.skipped = true }
func (r *recordingTB) Fatalf(string, ...any) { r.failed = true }

func TestUnavailableSkipsOutsideCIAndFailsInCI(t *testing.T) {
	for _, tc := range []struct {
		name        string
		ci          string
		wantSkipped bool
		wantFailed  bool
	}{
		{"a developer run skips", "", true, false},
		{"CI=true fails instead of skipping", "true", false, true},
		{"CI set to something else still skips", "1", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			r := &recordingTB{}
			Unavailable(r, "no %s", "kube-apiserver")
			if r.skipped != tc.wantSkipped || r.failed != tc.wantFailed {
				t.Errorf("skipped=%v failed=%v, want skipped=%v failed=%v", r.skipped, r.failed, tc.wantSkipped, tc.wantFailed)
			}
		})
	}
}

func TestNodeObject(t *testing.T) {
	n := NodeObject(NodeSpec{
		Name:        "node-a",
		PodCIDRs:    []string{"10.244.1.0/24", "fd00:10:244:1::/64"},
		InternalIPs: []string{"192.168.200.11", "fd00:200::b"},
	})
	if n.Spec.PodCIDR != "10.244.1.0/24" || len(n.Spec.PodCIDRs) != 2 {
		t.Errorf("pod CIDRs: podCIDR=%q podCIDRs=%v", n.Spec.PodCIDR, n.Spec.PodCIDRs)
	}
	if len(n.Status.Addresses) != 2 || n.Status.Addresses[1].Address != "fd00:200::b" || n.Status.Addresses[1].Type != "InternalIP" {
		t.Errorf("addresses: %v", n.Status.Addresses)
	}
	if len(n.Status.Conditions) != 1 || n.Status.Conditions[0].Type != "Ready" || n.Status.Conditions[0].Status != "True" {
		t.Errorf("conditions: %v", n.Status.Conditions)
	}
}

func TestPodObject(t *testing.T) {
	p := PodObject(PodSpec{Namespace: "ns", Name: "p", NodeName: "node-a", IPs: []string{"10.244.1.2", "fd00:10:244:1::2"}, HostIP: "192.168.200.11"})
	if p.Status.Phase != "Running" || p.Status.PodIP != "10.244.1.2" || len(p.Status.PodIPs) != 2 || p.Status.PodIPs[1].IP != "fd00:10:244:1::2" {
		t.Errorf("status: %+v", p.Status)
	}
	if p.Spec.NodeName != "node-a" || p.Status.HostIP != "192.168.200.11" || len(p.Status.HostIPs) != 1 {
		t.Errorf("placement: nodeName=%q hostIP=%q hostIPs=%v", p.Spec.NodeName, p.Status.HostIP, p.Status.HostIPs)
	}
}

func TestParseStat(t *testing.T) {
	comm, ppid, ok := parseStat("1234 (kube-apiserver) S 99 1234 1234 0 -1")
	if !ok || comm != "kube-apiserver" || ppid != 99 {
		t.Errorf("parseStat = %q, %d, %v", comm, ppid, ok)
	}
	comm, ppid, ok = parseStat("7 (a (weird) name) R 1 7 7")
	if !ok || comm != "a (weird) name" || ppid != 1 {
		t.Errorf("parseStat with parentheses in the name = %q, %d, %v", comm, ppid, ok)
	}
	if _, _, ok := parseStat("garbage"); ok {
		t.Error("parseStat accepted garbage")
	}
}

func TestUniqueNameDiffersEachCall(t *testing.T) {
	a, b := UniqueName("node"), UniqueName("node-")
	if a == b {
		t.Errorf("UniqueName returned %q twice", a)
	}
}
