package takeover

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/dummy"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
)

// The takeover runs on every start, without a switch: kube-router's objects are
// recognised by names and protocols no other software uses, kube-routerd's first
// syncs already take over the names both share (KUBE-ROUTER-FORWARD, kube-router-svip,
// the VIPs on kube-dummy-if), and half of kube-router's dataplane left next to ours
// would keep enforcing stale policy and routing into stale tunnels. A node that never
// ran kube-router has nothing to find, which costs one read of the tables per start.

// retryInterval is how often the takeover looks again while objects of kube-router's
// are still needed (routes the routing controller has not replaced yet).
const retryInterval = 5 * time.Second

// Options configure a takeover.
type Options struct {
	// Enabled lists the controllers that run; see Domain.
	Enabled map[Domain]bool
	// DummyInterface holds the service VIPs of both daemons.
	DummyInterface string
}

// Controller takes the node over from kube-router: Adopt before the other
// controllers start, Run once they have synced.
type Controller struct {
	opts   Options
	kernel Kernel
	nodes  corelisters.NodeLister
	// othersReady is closed when every controller finished its first full sync.
	othersReady <-chan struct{}

	// Owned by Adopt, then by Run.
	zebraBefore []route.TableRoute
	waitLogged  map[string]bool

	mu      sync.Mutex
	details Details // Found set once kube-router's objects were seen
}

// New returns a takeover for the node; it registers the Node informer.
func New(env daemon.Env, opts Options, kernel Kernel) *Controller {
	return &Controller{
		opts:       opts,
		kernel:     kernel,
		nodes:      env.Informers.Core().V1().Nodes().Lister(),
		waitLogged: map[string]bool{},
	}
}

// StartAfter makes Run wait for ready (the daemon's "every controller synced").
func (c *Controller) StartAfter(ready <-chan struct{}) { c.othersReady = ready }

// Name implements daemon.Controller.
func (c *Controller) Name() string { return "takeover" }

// Adopt runs before the other controllers: it records kube-router's virtual services
// in our IPVS ledger, so the service proxy's first sync updates the ones a Service
// wants in place (established connections keep their destinations) and deletes the
// others, and it notes kube-router's routes, to report those replaced in place.
func (c *Controller) Adopt(ctx context.Context) error {
	v, err := c.kernel.Read()
	if err != nil {
		return fmt.Errorf("reading kube-router's leftovers: %w", err)
	}
	c.zebraBefore = v.ZebraRoutes
	services, err := c.adoptServices()
	if err != nil {
		return err
	}
	plan := Compute(c.withPodCIDRs(v), c.opts.Enabled)
	found := len(services) > 0 || !plan.Empty()
	c.setFound(found)
	if found && slices.ContainsFunc(v.Links, func(l route.Link) bool { return l.Name == bridgeName }) {
		c.adopted(Object{Kind: KindBridge, Domain: DomainPodNet, Name: bridgeName},
			"kube-routerd's CNI configuration uses the same bridge, so running pods stay attached")
	}
	return nil
}

// adoptServices records kube-router's virtual services in our ledger.
func (c *Controller) adoptServices() ([]ipvs.Key, error) {
	if !c.opts.Enabled[DomainProxy] {
		return nil, nil
	}
	if loaded, err := ipvs.Loaded(); err != nil || !loaded {
		return nil, err // no IPVS, no services
	}
	addrs, err := (&dummy.Link{Name: c.opts.DummyInterface}).Addrs()
	if err != nil {
		return nil, nil // no dummy interface, no VIPs
	}
	kernel, err := ipvs.NewKernelAt("")
	if err != nil {
		return nil, err
	}
	services, err := kernel.Services()
	if err != nil {
		return nil, err
	}
	ledger := &ipvs.IPSetLedger{Sets: c.kernel.IPSets}
	keys, err := ledger.Keys()
	if err != nil {
		return nil, err
	}
	theirs := TheirServices(services, keys, addrs)
	for i, err := range ledger.AddAll(theirs) {
		o := Object{Kind: KindIPVS, Domain: DomainProxy, Service: theirs[i]}
		if err != nil {
			return nil, fmt.Errorf("adopting %s: %w", o, err)
		}
		c.adopted(o, "the service proxy keeps it if a Service wants it and deletes it otherwise")
	}
	return theirs, nil
}

// Run implements daemon.Controller. It counts as synced at once (the node's
// dataplane does not depend on it), waits for the other controllers' first syncs,
// then removes kube-router's objects, looking again while some are still needed
// and may become removable.
func (c *Controller) Run(ctx context.Context, hb *daemon.Heartbeat) error {
	hb.SyncDone(true, 0, nil, c.summary())
	tick := time.NewTicker(retryInterval)
	defer tick.Stop()
	// The others' first syncs take minutes at the top of the scale envelope: beat
	// meanwhile, or this loop counts as stuck and the watchdog pings stop.
	for waiting := true; waiting; {
		select {
		case <-c.othersReady:
			waiting = false
		case <-tick.C:
			hb.Beat()
		case <-ctx.Done():
			return nil
		}
	}
	for {
		start := time.Now()
		more, err := c.pass()
		hb.SyncDone(true, time.Since(start), err, c.summary())
		if !more && err == nil {
			return waitDone(ctx, hb)
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil
		}
	}
}

// waitDone beats until ctx ends: there is nothing more to do.
func waitDone(ctx context.Context, hb *daemon.Heartbeat) error {
	tick := time.NewTicker(retryInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			hb.Beat()
		case <-ctx.Done():
			return nil
		}
	}
}

// pass reads, plans and removes once; more says that objects are still waiting.
func (c *Controller) pass() (more bool, err error) {
	v, err := c.kernel.Read()
	if err != nil {
		return true, err
	}
	v = c.withPodCIDRs(v)
	if ours, err := c.kernel.Routes.Routes(); err == nil {
		dsts := make([]netip.Prefix, len(ours))
		for i, r := range ours {
			dsts[i] = r.Dst
		}
		for _, r := range ReplacedInPlace(c.zebraBefore, v.ZebraRoutes, dsts) {
			c.adopted(Object{Kind: KindRoute, Domain: DomainRouting, Route: r}, "replaced in place by kube-routerd's route")
		}
		c.zebraBefore = v.ZebraRoutes
	}
	plan := Compute(v, c.opts.Enabled)
	if !plan.Empty() {
		c.setFound(true)
	}
	for _, o := range plan.Adopt {
		c.adopted(o, "kube-routerd has no rule of its own for this")
	}
	removed, errs := c.kernel.Remove(plan.Remove)
	for _, o := range removed {
		slog.Info("removed kube-router's object", "object", o.String())
	}
	var waiting []string
	for _, w := range plan.Wait {
		waiting = append(waiting, w.String())
		more = more || w.Retry
		if !c.waitLogged[w.Object.String()] {
			c.waitLogged[w.Object.String()] = true
			slog.Info("keeping kube-router's object for now", "object", w.Object.String(), "reason", w.Reason)
		}
	}
	c.record(removed, waiting, errs)
	if len(errs) > 0 {
		return true, fmt.Errorf("%d of kube-router's objects could not be removed; first: %w", len(errs), errs[0])
	}
	return more, nil
}

// withPodCIDRs adds every Node's pod CIDRs to v.
func (c *Controller) withPodCIDRs(v View) View {
	nodes, err := c.nodes.List(labels.Everything())
	if err != nil {
		return v
	}
	for _, n := range nodes {
		v.PodCIDRs = append(v.PodCIDRs, k8s.ParseNodeAddresses(n, slog.Default()).PodCIDRs...)
	}
	return v
}

// adopted records and logs o the first time it is adopted.
func (c *Controller) adopted(o Object, how string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if slices.Contains(c.details.Adopted, o.String()) {
		return
	}
	slog.Info("adopted kube-router's object", "object", o.String(), "how", how)
	c.details.Adopted = append(c.details.Adopted, o.String())
}
