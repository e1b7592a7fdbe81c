package proxy

import (
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
)

// desiredState is the whole desired IPVS state, indexed so that replacing one
// Service's virtual services costs the same whatever the number of other Services.
type desiredState struct {
	log       *slog.Logger
	byService map[types.NamespacedName][]*virtualServer
	byKey     map[ipvs.Key]*virtualServer
	// vipUsers counts the virtual services that need an address on the dummy interface.
	vipUsers map[netip.Addr]int
	// localEndpoints counts the destinations on this node by address (for hairpin
	// masquerading).
	localEndpoints map[netip.Addr]int
	// dsrPods counts, by local endpoint address, the DSR virtual services that need
	// each virtual address inside that endpoint's pod.
	dsrPods map[netip.Addr]map[netip.Addr]int
	// dsrLocal holds the DSR virtual services with an endpoint on this node, whose
	// connections' MSS this node clamps.
	dsrLocal map[ipvs.Key]*virtualServer
	// restricted holds the load-balancer virtual services with source ranges.
	restricted map[ipvs.Key]*virtualServer
	// ports names the Service port of each virtual service, for the traffic
	// metrics, which read it from the scrape's goroutine.
	portsMu sync.Mutex
	ports   map[ipvs.Key]servicePort
	// programmed counts non-frozen virtual services and their serving destinations.
	services, endpoints int
}

func newDesiredState(log *slog.Logger) *desiredState {
	return &desiredState{
		log:       log,
		byService: map[types.NamespacedName][]*virtualServer{},
		byKey:     map[ipvs.Key]*virtualServer{},
		vipUsers:  map[netip.Addr]int{},

		localEndpoints: map[netip.Addr]int{},
		dsrPods:        map[netip.Addr]map[netip.Addr]int{},
		dsrLocal:       map[ipvs.Key]*virtualServer{},
		restricted:     map[ipvs.Key]*virtualServer{},
		ports:          map[ipvs.Key]servicePort{},
	}
}

func (d *desiredState) count(vs *virtualServer, sign int) {
	if vs.OnDummy() {
		d.vipUsers[vs.Addr] += sign
		if d.vipUsers[vs.Addr] == 0 {
			delete(d.vipUsers, vs.Addr)
		}
	}
	if vs.Restricted {
		if sign > 0 {
			d.restricted[vs.Key] = vs
		} else {
			delete(d.restricted, vs.Key)
		}
	}
	if vs.Frozen {
		return
	}
	d.services += sign
	if vs.DSR && slices.ContainsFunc(vs.Destinations, func(dst destination) bool { return dst.Local }) {
		if sign > 0 {
			d.dsrLocal[vs.Key] = vs
		} else {
			delete(d.dsrLocal, vs.Key)
		}
	}
	for _, dst := range vs.Destinations {
		if !dst.Terminating {
			d.endpoints += sign
		}
		if dst.Local && vs.DSR {
			d.countDSR(dst.Addr, vs.Addr, sign)
		}
		if dst.Local {
			n := d.localEndpoints[dst.Addr] + sign
			if n == 0 {
				delete(d.localEndpoints, dst.Addr)
			} else {
				d.localEndpoints[dst.Addr] = n
			}
		}
	}
}

func (d *desiredState) countDSR(pod, vip netip.Addr, sign int) {
	vips := d.dsrPods[pod]
	if vips == nil {
		vips = map[netip.Addr]int{}
		d.dsrPods[pod] = vips
	}
	if vips[vip] += sign; vips[vip] == 0 {
		delete(vips, vip)
	}
	if len(vips) == 0 {
		delete(d.dsrPods, pod)
	}
}

// dsrVIPs returns the virtual addresses each local DSR endpoint's pod must hold,
// sorted.
func (d *desiredState) dsrVIPs() map[netip.Addr][]netip.Addr {
	out := make(map[netip.Addr][]netip.Addr, len(d.dsrPods))
	for pod, vips := range d.dsrPods {
		out[pod] = slices.SortedFunc(maps.Keys(vips), netip.Addr.Compare)
	}
	return out
}

// dsrOwners names the Services whose DSR virtual services have the endpoint pod, for
// logs.
func (d *desiredState) dsrOwners(pod netip.Addr) []string {
	var out []string
	for _, vs := range d.byKey {
		if vs.DSR && slices.ContainsFunc(vs.Destinations, func(dst destination) bool { return dst.Addr == pod }) &&
			!slices.Contains(out, vs.Owner.String()) {
			out = append(out, vs.Owner.String())
		}
	}
	slices.Sort(out)
	return out
}

// setService replaces the virtual services of one Service (nil removes it) and
// returns the keys whose desired state changed. A key already claimed by another
// Service stays with that Service; the clash is logged.
func (d *desiredState) setService(name types.NamespacedName, vss []virtualServer) []ipvs.Key {
	old := d.byService[name]
	d.portsMu.Lock()
	defer d.portsMu.Unlock()
	oldByKey := make(map[ipvs.Key]*virtualServer, len(old))
	for _, vs := range old {
		oldByKey[vs.Key] = vs
		d.count(vs, -1)
		delete(d.byKey, vs.Key)
		delete(d.ports, vs.Key)
	}
	var changed []ipvs.Key
	kept := make([]*virtualServer, 0, len(vss))
	for i := range vss {
		vs := &vss[i]
		if other, taken := d.byKey[vs.Key]; taken {
			d.log.Warn("virtual service already used by another service, skipping",
				"service", name.String(), "other", other.Owner.String(), "vip", vs.Key.String())
			continue
		}
		d.byKey[vs.Key] = vs
		d.ports[vs.Key] = servicePort{Service: name, Port: vs.PortName}
		d.count(vs, +1)
		kept = append(kept, vs)
		if prev, ok := oldByKey[vs.Key]; ok {
			delete(oldByKey, vs.Key)
			if sameVirtualServer(prev, vs) {
				continue
			}
		}
		changed = append(changed, vs.Key)
	}
	for k := range oldByKey {
		changed = append(changed, k)
	}
	if len(kept) == 0 {
		delete(d.byService, name)
	} else {
		d.byService[name] = kept
	}
	return changed
}

// servicePort is one port of one Service.
type servicePort struct {
	Service types.NamespacedName
	Port    string
}

// portsOf returns the Service port of each virtual service; safe to call from any
// goroutine.
func (d *desiredState) portsOf() map[ipvs.Key]servicePort {
	d.portsMu.Lock()
	defer d.portsMu.Unlock()
	return maps.Clone(d.ports)
}

func sameVirtualServer(a, b *virtualServer) bool {
	return a.Service == b.Service && a.Kind == b.Kind && a.LocalOnly == b.LocalOnly &&
		a.Restricted == b.Restricted && slices.Equal(a.SourceRanges, b.SourceRanges) &&
		a.Frozen == b.Frozen && a.DSR == b.DSR && slices.Equal(a.Destinations, b.Destinations)
}
