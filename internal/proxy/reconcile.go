package proxy

import (
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/conntrack"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
)

// drainKey identifies a destination being drained.
type drainKey struct {
	vs   ipvs.Key
	dest ipvs.DestKey
}

// reconciler diffs desired virtual services against the kernel and applies only the
// difference. It is used by one goroutine (the sync loop).
type reconciler struct {
	dp    Dataplane
	log   *slog.Logger
	grace time.Duration
	now   func() time.Time
	// owned mirrors the ledger.
	owned map[ipvs.Key]bool
	// onDummy mirrors the addresses on the dummy interface.
	onDummy map[netip.Addr]bool
	// draining holds when each draining destination got weight 0.
	draining map[drainKey]time.Time
	// writes counts kernel changes made by the last sync (for logs and tests).
	writes int
	// queue holds IPVS changes until the next flush, which sends them in batches.
	queue []queuedChange
	// toOwn holds keys to record in the ledger at the next flush.
	toOwn map[ipvs.Key]bool
	// timeouts are the configured IPVS timeouts (zero: the kernel's), set at each
	// full sync where they differ; kernelTimeouts is what the kernel had after it.
	timeouts, kernelTimeouts ipvs.Timeouts
	// dsr keeps DSR virtual addresses in the local endpoints' pods.
	dsr *dsrPods
}

func newReconciler(dp Dataplane, grace time.Duration, log *slog.Logger) *reconciler {
	return &reconciler{dp: dp, log: log, grace: grace, now: time.Now, draining: map[drainKey]time.Time{},
		toOwn: map[ipvs.Key]bool{}, dsr: newDSRPods(dp.Tunnels, log)}
}

// full compares every virtual service in the kernel with the desired state: it
// repairs drift, deletes what we own and no longer want, and leaves the rest alone.
func (r *reconciler) full(d *desiredState) error {
	r.writes = 0
	if err := r.dp.Dummy.Ensure(); err != nil {
		return err
	}
	addrs, err := r.dp.Dummy.Addrs()
	if err != nil {
		return err
	}
	r.onDummy = make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		r.onDummy[a] = true
	}
	ledger, err := r.dp.Ledger.Keys()
	if err != nil {
		return err
	}
	r.owned = make(map[ipvs.Key]bool, len(ledger))
	for _, k := range ledger {
		r.owned[k] = true
	}
	list, err := r.dp.IPVS.Services()
	if err != nil {
		return err
	}
	actual := make(map[ipvs.Key]ipvs.Service, len(list))
	for _, s := range list {
		actual[s.Key] = s
	}
	dests, err := r.dp.IPVS.AllDestinations(list)
	if err != nil {
		return err
	}

	errs := []error{r.syncTimeouts(), r.syncVIPs(maps.Keys(d.vipUsers), d)}
	if err := r.dsr.reread(); err != nil {
		errs = append(errs, err)
	} else {
		errs = append(errs, r.dsr.grow(d))
	}
	for k, vs := range d.byKey {
		var cur *ipvs.Service
		if s, ok := actual[k]; ok {
			cur = &s
		}
		errs = append(errs, r.syncVirtualServer(vs, cur, dests[k]))
		if len(r.queue) >= flushThreshold {
			errs = append(errs, r.flush())
		}
	}
	for k := range actual {
		if d.byKey[k] == nil && r.owned[k] {
			r.deleteVirtualServer(k, dests[k])
		}
	}
	// Records of services that no longer exist (a crash between ledger and kernel
	// update, or a service deleted by hand that we no longer want).
	for k := range r.owned {
		if _, exists := actual[k]; !exists && d.byKey[k] == nil {
			errs = append(errs, r.disown(k))
		}
	}
	// Addresses come off the interface only after their services are gone.
	errs = append(errs, r.flush())
	errs = append(errs, r.syncVIPs(maps.Keys(r.onDummy), d), r.dsr.shrink(d))
	for dk := range r.draining {
		if d.byKey[dk.vs] == nil {
			delete(r.draining, dk)
		}
	}
	return errors.Join(errs...)
}

// partial brings only the given keys (and their addresses) in line with d, reading
// just those services from the kernel: its cost grows with the change, not with
// the number of Services. It needs a full sync to have run first, and the DSR pods
// to have grown to d (the firewall needs their MTU before IPVS tunnels to them).
func (r *reconciler) partial(d *desiredState, keys []ipvs.Key) error {
	r.writes = 0
	var errs []error
	addrs := map[netip.Addr]bool{}
	for _, k := range keys {
		addrs[k.Addr] = true
	}
	// New VIPs go on the interface before their services exist, and old ones come off
	// after, so a client never finds a programmed service it has no route to.
	errs = append(errs, r.syncVIPs(func(yield func(netip.Addr) bool) {
		for a := range addrs {
			if d.vipUsers[a] > 0 && !yield(a) {
				return
			}
		}
	}, d))
	for _, k := range keys {
		vs := d.byKey[k]
		cur, exists, err := r.dp.IPVS.Service(k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var dests []ipvs.Destination
		switch {
		case exists && vs != nil && !vs.Frozen:
			if dests, err = r.dp.IPVS.Destinations(k); err != nil {
				errs = append(errs, fmt.Errorf("service %s: %w", vs.Owner, err))
				continue
			}
		case exists && vs == nil && k.Proto == ipvs.UDP:
			dests, _ = r.dp.IPVS.Destinations(k) // best effort, only for conntrack cleanup
		}
		switch {
		case vs != nil && exists:
			errs = append(errs, r.syncVirtualServer(vs, &cur, dests))
		case vs != nil:
			errs = append(errs, r.syncVirtualServer(vs, nil, nil))
		case exists && r.owned[k]:
			r.deleteVirtualServer(k, dests)
		case r.owned[k]:
			errs = append(errs, r.disown(k))
		}
	}
	errs = append(errs, r.flush())
	errs = append(errs, r.syncVIPs(maps.Keys(addrs), d), r.dsr.shrink(d))
	return errors.Join(errs...)
}

// drainingKeys lists virtual services with destinations still draining.
func (r *reconciler) drainingKeys() []ipvs.Key {
	seen := map[ipvs.Key]bool{}
	var out []ipvs.Key
	for dk := range r.draining {
		if !seen[dk.vs] {
			seen[dk.vs] = true
			out = append(out, dk.vs)
		}
	}
	return out
}

// syncVIPs puts the addresses d wants on the VIP interface and takes off those it
// no longer wants, of the given ones.
func (r *reconciler) syncVIPs(addrs iter.Seq[netip.Addr], d *desiredState) error {
	var add, remove []netip.Addr
	for a := range addrs {
		switch want := d.vipUsers[a] > 0; {
		case want && !r.onDummy[a]:
			add = append(add, a)
		case !want && r.onDummy[a]:
			remove = append(remove, a)
		}
	}
	var errs []error
	if len(add) > 0 {
		for i, err := range r.dp.Dummy.AddAddrs(add) {
			if err != nil {
				errs = append(errs, err)
				continue
			}
			r.onDummy[add[i]] = true
			r.writes++
		}
	}
	for _, a := range remove {
		if err := r.dp.Dummy.DelAddr(a); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(r.onDummy, a)
		r.writes++
	}
	return errors.Join(errs...)
}

// own queues k for the ledger; flush records it before any IPVS change.
func (r *reconciler) own(k ipvs.Key) {
	if !r.owned[k] {
		r.toOwn[k] = true
	}
}

func (r *reconciler) disown(k ipvs.Key) error {
	if err := r.dp.Ledger.Remove(k); err != nil {
		return err
	}
	delete(r.owned, k)
	return nil
}

// syncVirtualServer creates or corrects one virtual service and its destinations.
// cur and actual are what the kernel has (cur nil when it has nothing). The IPVS
// changes are queued for the next flush.
func (r *reconciler) syncVirtualServer(vs *virtualServer, cur *ipvs.Service, actual []ipvs.Destination) error {
	if vs.Frozen {
		// Keep whatever is programmed; the Service's settings are invalid.
		if cur != nil {
			r.own(vs.Key)
		}
		return nil
	}
	if cur != nil && !r.owned[vs.Key] {
		// The API says this address and port are a Service's: take the entry over.
		r.log.Info("adopting existing IPVS service", "service", vs.Owner.String(), "vip", vs.Key.String())
	}
	r.own(vs.Key)
	switch {
	case cur == nil:
		r.enqueue(queuedChange{Change: ipvs.Change{Op: ipvs.OpAddService, Service: vs.Service}, owner: vs.Owner})
		actual = nil
	case *cur != vs.Service:
		r.enqueue(queuedChange{Change: ipvs.Change{Op: ipvs.OpUpdateService, Service: vs.Service}, owner: vs.Owner})
	}
	r.syncDestinations(vs, actual)
	return nil
}

func (r *reconciler) syncDestinations(vs *virtualServer, actual []ipvs.Destination) {
	have := make(map[ipvs.DestKey]ipvs.Destination, len(actual))
	for _, d := range actual {
		have[d.DestKey] = d
	}
	for _, want := range vs.Destinations {
		cur, exists := have[want.DestKey]
		delete(have, want.DestKey)
		if want.Terminating {
			if exists {
				r.drain(vs, cur)
			}
			continue
		}
		delete(r.draining, drainKey{vs.Key, want.DestKey})
		d := ipvs.Destination{DestKey: want.DestKey, Weight: want.Weight, Forward: vs.forward()}
		switch {
		case !exists:
			r.enqueue(queuedChange{Change: ipvs.Change{Op: ipvs.OpAddDestination, Service: vs.Service, Dest: d}, owner: vs.Owner})
		case cur.Weight != want.Weight || cur.Forward != d.Forward:
			r.enqueue(queuedChange{Change: ipvs.Change{Op: ipvs.OpUpdateDestination, Service: vs.Service, Dest: d}, owner: vs.Owner})
		}
	}
	// Endpoints that disappeared from the API are drained like terminating ones, but
	// UDP ones go at once: UDP has no connection end to wait for, IPVS counts a UDP flow
	// until it idles out (minutes), and the flow would keep reaching the gone endpoint.
	for _, cur := range have {
		if vs.Proto == ipvs.UDP {
			delete(r.draining, drainKey{vs.Key, cur.DestKey})
			r.deleteDestination(vs, cur.DestKey)
			continue
		}
		r.drain(vs, cur)
	}
}

// drain quiesces a destination (weight 0: no new connections) and removes it once
// its connections are gone or the grace period is over.
func (r *reconciler) drain(vs *virtualServer, cur ipvs.Destination) {
	dk := drainKey{vs.Key, cur.DestKey}
	since, ok := r.draining[dk]
	if !ok {
		since = r.now()
	}
	if cur.ActiveConns+cur.InactiveConns == 0 || r.now().Sub(since) >= r.grace {
		delete(r.draining, dk)
		r.deleteDestination(vs, cur.DestKey)
		return
	}
	r.draining[dk] = since
	if cur.Weight != 0 {
		quiesced := ipvs.Destination{DestKey: cur.DestKey, Weight: 0, Forward: cur.Forward}
		r.enqueue(queuedChange{Change: ipvs.Change{Op: ipvs.OpUpdateDestination, Service: vs.Service, Dest: quiesced}, owner: vs.Owner})
	}
}

func (r *reconciler) deleteDestination(vs *virtualServer, d ipvs.DestKey) {
	q := queuedChange{
		Change:     ipvs.Change{Op: ipvs.OpDeleteDestination, Service: vs.Service, Dest: ipvs.Destination{DestKey: d}},
		owner:      vs.Owner,
		goneIsDone: true,
	}
	if vs.Proto == ipvs.UDP {
		q.done = func() error {
			r.clearUDP(vs.Key, d.Addr)
			return nil
		}
	}
	r.enqueue(q)
}

// clearUDP deletes conntrack entries that would keep sending a client's UDP packets
// to an endpoint that is gone. A failure only delays recovery, so it is logged.
func (r *reconciler) clearUDP(k ipvs.Key, endpoint netip.Addr) {
	f := conntrack.Flow{ServiceAddr: k.Addr, ServicePort: k.Port, Endpoint: endpoint}
	if _, err := r.dp.Conntrack.DeleteUDP(f); err != nil {
		r.log.Warn("clearing conntrack entries failed", "flow", f.String(), "err", err)
	}
}

// deleteVirtualServer queues the deletion of a service we own; once it is gone, the
// UDP flows to its destinations are cleared and the ledger forgets it.
func (r *reconciler) deleteVirtualServer(k ipvs.Key, dests []ipvs.Destination) {
	r.enqueue(queuedChange{
		Change:     ipvs.Change{Op: ipvs.OpDeleteService, Service: ipvs.Service{Key: k}},
		goneIsDone: true,
		done: func() error {
			if k.Proto == ipvs.UDP {
				for _, d := range dests {
					r.clearUDP(k, d.Addr)
				}
			}
			for dk := range r.draining {
				if dk.vs == k {
					delete(r.draining, dk)
				}
			}
			return r.disown(k)
		},
	})
}

// flushThreshold bounds the changes a full sync holds before sending them: a first
// sync of 10,000 Services makes over 100,000, and holding them all cost tens of MiB.
const flushThreshold = 8192

// queuedChange is an IPVS change waiting for the next flush.
type queuedChange struct {
	ipvs.Change
	// owner is the Service the change is for, named in its error.
	owner types.NamespacedName
	// goneIsDone counts "not found" as success (deleting what is already gone).
	goneIsDone bool
	// done runs once the change is made.
	done func() error
}

func (r *reconciler) enqueue(q queuedChange) { r.queue = append(r.queue, q) }

// flush records the queued keys in the ledger, then makes the queued IPVS changes in
// order, in batches, and runs what each successful change was waiting for. Changes to
// a service the ledger could not record are not made: a crash must never leave a
// service of ours that the ledger does not know.
func (r *reconciler) flush() error {
	var errs []error
	unrecorded := map[ipvs.Key]bool{}
	if len(r.toOwn) > 0 {
		keys := slices.Collect(maps.Keys(r.toOwn))
		clear(r.toOwn)
		for i, err := range r.dp.Ledger.AddAll(keys) {
			if err != nil {
				unrecorded[keys[i]] = true
				errs = append(errs, err)
			} else {
				r.owned[keys[i]] = true
			}
		}
	}
	queue := slices.DeleteFunc(r.queue, func(q queuedChange) bool { return unrecorded[q.Service.Key] })
	r.queue = nil
	if len(queue) == 0 {
		return errors.Join(errs...)
	}
	changes := make([]ipvs.Change, len(queue))
	for i, q := range queue {
		changes[i] = q.Change
	}
	for i, err := range r.dp.IPVS.Apply(changes) {
		q := queue[i]
		if err != nil && !(q.goneIsDone && errors.Is(err, ipvs.ErrNotFound)) {
			if q.owner != (types.NamespacedName{}) {
				err = fmt.Errorf("service %s: %w", q.owner, err)
			}
			errs = append(errs, err)
			continue
		}
		r.writes++
		if q.done != nil {
			errs = append(errs, q.done())
		}
	}
	return errors.Join(errs...)
}
