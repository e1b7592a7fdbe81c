package proxy

import (
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"slices"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/podtunnel"
)

// dsrPods keeps the virtual addresses inside the pods of this node's DSR endpoints in
// line with the desired state. Addresses go into a pod before IPVS tunnels to it and
// come out after IPVS stopped, so no tunnelled packet reaches a pod that would drop
// it. Used by the sync loop only.
type dsrPods struct {
	tunnels podtunnel.Interface
	log     *slog.Logger
	// have mirrors the pods' tunnels, by pod address.
	have map[netip.Addr]podtunnel.Pod
	// missing holds the endpoints with no pod namespace found, logged once each.
	missing map[netip.Addr]bool
	writes  int
}

func newDSRPods(t podtunnel.Interface, log *slog.Logger) *dsrPods {
	return &dsrPods{tunnels: t, log: log, have: map[netip.Addr]podtunnel.Pod{}, missing: map[netip.Addr]bool{}}
}

// reread replaces the mirror with what the pods hold (a full sync).
func (p *dsrPods) reread() error {
	have, err := p.tunnels.List()
	if err != nil {
		return err
	}
	p.have = have
	return nil
}

// grow adds the addresses d wants to the pods, keeping those they have.
func (p *dsrPods) grow(d *desiredState) error {
	var errs []error
	for pod, want := range d.dsrVIPs() {
		have := p.have[pod].VIPs
		union := slices.Compact(slices.SortedFunc(slices.Values(append(slices.Clone(have), want...)), netip.Addr.Compare))
		if !slices.Equal(union, have) {
			errs = append(errs, p.set(d, pod, union))
		}
	}
	return errors.Join(errs...)
}

// shrink takes the addresses d no longer wants out of the pods.
func (p *dsrPods) shrink(d *desiredState) error {
	want := d.dsrVIPs()
	var errs []error
	for _, pod := range slices.Collect(maps.Keys(p.have)) {
		if !slices.Equal(want[pod], p.have[pod].VIPs) {
			errs = append(errs, p.set(d, pod, want[pod]))
		}
	}
	return errors.Join(errs...)
}

func (p *dsrPods) set(d *desiredState, pod netip.Addr, vips []netip.Addr) error {
	mtu, err := p.tunnels.Set(pod, vips)
	switch {
	case errors.Is(err, podtunnel.ErrNoPod):
		delete(p.have, pod)
		if len(vips) > 0 && !p.missing[pod] {
			p.missing[pod] = true
			p.log.Warn("DSR endpoint has no pod network namespace on this node (a hostNetwork pod?): its replies will not reach clients",
				"endpoint", pod.String(), "services", d.dsrOwners(pod))
		}
		return nil
	case err != nil:
		return err
	}
	delete(p.missing, pod)
	p.writes++
	if len(vips) == 0 {
		delete(p.have, pod)
	} else {
		p.have[pod] = podtunnel.Pod{VIPs: vips, MTU: mtu}
	}
	return nil
}

// podMTU is the smallest MTU of the interfaces of the pods holding virtual addresses
// (0 without any): their connections' MSS is clamped to fit it.
func (p *dsrPods) podMTU() int {
	mtu := 0
	for _, pod := range p.have {
		if mtu == 0 || pod.MTU < mtu {
			mtu = pod.MTU
		}
	}
	return mtu
}

// removeAllDSR deletes every tunnel kube-routerd made in a pod it can find.
func removeAllDSR(t podtunnel.Interface) error {
	have, err := t.List()
	if err != nil {
		return err
	}
	var errs []error
	for pod := range have {
		if _, err := t.Set(pod, nil); err != nil && !errors.Is(err, podtunnel.ErrNoPod) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// details are the pods' tunnels and the endpoints not found, for the status.
func (p *dsrPods) details() (map[string][]string, []string) {
	var pods map[string][]string
	for pod, tun := range p.have {
		if pods == nil {
			pods = map[string][]string{}
		}
		for _, v := range tun.VIPs {
			pods[pod.String()] = append(pods[pod.String()], v.String())
		}
	}
	var missing []string
	for _, pod := range slices.SortedFunc(maps.Keys(p.missing), netip.Addr.Compare) {
		missing = append(missing, pod.String())
	}
	return pods, missing
}
