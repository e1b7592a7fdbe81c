// Package proxy is kube-routerd's service proxy: it turns Services and EndpointSlices
// into IPVS virtual services on this node. desired.go computes what IPVS should hold
// (pure), reconcile.go diffs that against the kernel and applies the difference.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
	"github.com/kube-routerd/kube-routerd/internal/loop"
)

// sliceIndex indexes EndpointSlices by the "namespace/name" of their Service.
const sliceIndex = "kube-routerd-proxy-by-service"

// drainPoll is how often draining destinations are looked at again.
const drainPoll = time.Second

// Controller is the service proxy controller.
type Controller struct {
	log      *slog.Logger
	cfg      config.ServiceProxy
	nodeName string
	services corelisters.ServiceLister
	slices   cache.Indexer
	nodes    corelisters.NodeLister
	runner   *loop.Runner
	rec      *reconciler
	fw       *firewall
	metrics  *metrics

	// changes collects the Services whose objects or EndpointSlices changed; "all"
	// when this node's NodePort addresses moved or a node appeared.
	changes *loop.Tracker[types.NamespacedName]

	mu        sync.Mutex
	nodeAddrs []netip.Addr
	nodeZone  string

	// Owned by the sync loop.
	desired  *desiredState
	fullDone bool
	// recomputed is how many Services the last sync recomputed.
	recomputed int
	// refused holds the addresses each Service was refused (outside the ranges).
	refused map[types.NamespacedName][]refusedAddr
	// drainPollPending is set while a drain re-check is scheduled.
	drainPollPending atomic.Bool
	// healthChecks holds the health check node port of each Service that has one.
	healthChecks map[types.NamespacedName]healthCheck
	// healthz is the open proxy healthz server (nil when off or not open yet), and
	// healthzErr its last failure to open, logged once.
	healthz    *http.Server
	healthzErr string

	// listen opens the healthz and health check node port listeners.
	listen listenFunc
	health *proxyHealth
	hcs    *healthServers

	detailsLock sync.Mutex
	details     Details
}

// New builds the service proxy on dp: KernelDataplane's in the daemon, fakes or kernel
// adapters inside a test namespace in tests.
func New(env daemon.Env, cfg config.ServiceProxy, dp Dataplane) (*Controller, error) {
	log := env.Logger("proxy")
	m, err := newMetrics(env)
	if err != nil {
		return nil, err
	}
	rec := newReconciler(dp, cfg.GracefulTerminationTimeout.Duration, log)
	c := &Controller{
		log:      log,
		cfg:      cfg,
		nodeName: env.NodeName,
		services: env.Informers.Core().V1().Services().Lister(),
		nodes:    env.Informers.Core().V1().Nodes().Lister(),
		rec:      rec,
		fw:       newFirewall(dp, firewallOptions(cfg), rec.dsr.podMTU, log),
		metrics:  m,
		desired:  newDesiredState(log),
		refused:  map[types.NamespacedName][]refusedAddr{},

		healthChecks: map[types.NamespacedName]healthCheck{},
		listen:       listenTCP,
		// kube-proxy's rule: a change may wait two sync periods.
		health: &proxyHealth{now: time.Now, timeout: 2 * cfg.SyncPeriod.Duration},
	}
	// Through c.listen, which tests replace after New.
	c.hcs = newHealthServers(log, func(addr string) (net.Listener, error) { return c.listen(addr) }, c.health.isHealthy)
	c.rec.timeouts = configuredTimeouts(cfg)
	if err := env.RegisterMetrics("proxy", newTrafficCollector(dp.IPVS, c.desired.portsOf, log)); err != nil {
		return nil, err
	}
	c.runner = loop.NewRunner("proxy", c.sync, cfg.MinSyncInterval.Duration, cfg.SyncPeriod.Duration)
	c.changes = loop.NewTracker[types.NamespacedName](func() {
		c.health.queued()
		c.runner.Request()
	})

	svcInformer := env.Informers.Core().V1().Services().Informer()
	sliceInformer := env.Informers.Discovery().V1().EndpointSlices().Informer()
	nodeInformer := env.Informers.Core().V1().Nodes().Informer()
	if err := sliceInformer.AddIndexers(cache.Indexers{sliceIndex: sliceServiceIndex}); err != nil {
		return nil, fmt.Errorf("indexing EndpointSlices by service: %w", err)
	}
	c.slices = sliceInformer.GetIndexer()
	if err := errors.Join(
		c.changes.Watch(svcInformer, loop.Both(serviceName)),
		c.changes.Watch(sliceInformer, sliceKeys),
		c.changes.WatchAll(nodeInformer, c.changesThisNode),
	); err != nil {
		return nil, fmt.Errorf("registering informer handlers: %w", err)
	}
	return c, nil
}

func firewallOptions(cfg config.ServiceProxy) FirewallOptions {
	opts := FirewallOptions{MasqueradeAll: cfg.MasqueradeAll}
	for _, p := range cfg.ClusterCIDRs {
		opts.ClusterCIDRs = append(opts.ClusterCIDRs, p.Prefix)
	}
	return opts
}

// Name implements daemon.Controller.
func (c *Controller) Name() string { return "proxy" }

// Run implements daemon.Controller. The health endpoints close when it returns: the
// process is stopping, and load balancers should see this node go.
func (c *Controller) Run(ctx context.Context, hb *daemon.Heartbeat) error {
	c.openHealthz()
	defer c.closeHealth()
	loop.Run(ctx, c.changes, c.runner, hb)
	return nil
}

func serviceName(obj any) (types.NamespacedName, bool) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, true
}

func sliceServiceName(obj any) (types.NamespacedName, bool) {
	s := k8s.CachedEndpointSlice(obj)
	if s == nil || s.ServiceName == "" {
		return types.NamespacedName{}, false
	}
	return types.NamespacedName{Namespace: s.Namespace, Name: s.ServiceName}, true
}

// sliceKeys names the Service of a changed EndpointSlice for the change tracker;
// an update that reads the same needs no sync.
func sliceKeys(ch loop.Change) []types.NamespacedName {
	if k8s.UnchangedEndpointSlice(ch.Old, ch.New) {
		return nil
	}
	return loop.Both(sliceServiceName)(ch)
}

func sliceServiceIndex(obj any) ([]string, error) {
	if n, ok := sliceServiceName(obj); ok {
		return []string{n.String()}, nil
	}
	return nil, nil
}

// changesThisNode reports whether a Node event may change every Service: a node
// appeared (ours, perhaps), this node's addresses changed (every NodePort moves) or
// its zone did (every Service with zone hints).
func (c *Controller) changesThisNode(ch loop.Change) bool {
	if ch.Old == nil {
		return true
	}
	n, ok := ch.New.(*corev1.Node)
	if !ok || n.Name != c.nodeName {
		return false
	}
	addrs := nodePortAddrs(n, c.cfg.NodePortAddresses)
	c.mu.Lock()
	defer c.mu.Unlock()
	return !slices.Equal(addrs, c.nodeAddrs) || n.Labels[corev1.LabelTopologyZone] != c.nodeZone
}

// nodePortAddrs returns the node's InternalIP and ExternalIP addresses inside the
// configured NodePort CIDRs (all of them when none is configured), sorted.
func nodePortAddrs(n *corev1.Node, cidrs []config.Prefix) []netip.Addr {
	var out []netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil {
			continue
		}
		ip = ip.Unmap()
		inRange := len(cidrs) == 0
		for _, p := range cidrs {
			inRange = inRange || p.Prefix.Contains(ip)
		}
		if inRange && !slices.Contains(out, ip) {
			out = append(out, ip)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// sync is the runner's SyncFunc: recompute the dirty Services (all of them when
// full) and apply what changed.
func (c *Controller) sync(ctx context.Context, full bool) (summary string, err error) {
	dirty, all := c.changes.Take()
	pendingSince := c.health.syncing()
	defer func() { c.health.synced(pendingSince, err) }()
	full = full || all || !c.fullDone

	node := Node{Name: c.nodeName}
	if n, err := c.nodes.Get(c.nodeName); err == nil {
		node.NodePortAddrs = nodePortAddrs(n, c.cfg.NodePortAddresses)
		node.Zone = n.Labels[corev1.LabelTopologyZone]
		c.fw.nodeAddrs = nodePortAddrs(n, nil)
	} else if !apierrors.IsNotFound(err) {
		return "", fmt.Errorf("reading node %s: %w", c.nodeName, err)
	}
	c.mu.Lock()
	if !slices.Equal(node.NodePortAddrs, c.nodeAddrs) || node.Zone != c.nodeZone {
		full = true // every NodePort moves, or every topology-aware Service
	}
	c.nodeAddrs, c.nodeZone = node.NodePortAddrs, node.Zone
	c.mu.Unlock()

	if full {
		svcs, err := c.services.List(labels.Everything())
		if err != nil {
			return "", fmt.Errorf("listing services: %w", err)
		}
		dirty = make(map[types.NamespacedName]struct{}, len(svcs)+len(c.desired.byService))
		for name := range c.desired.byService {
			dirty[name] = struct{}{}
		}
		for _, s := range svcs {
			dirty[types.NamespacedName{Namespace: s.Namespace, Name: s.Name}] = struct{}{}
		}
	}
	names := make([]types.NamespacedName, 0, len(dirty))
	for n := range dirty {
		names = append(names, n)
	}
	// A stable order decides which Service wins a clash over the same address and port.
	slices.SortFunc(names, func(a, b types.NamespacedName) int {
		return strings.Compare(a.String(), b.String())
	})
	opts := desiredOptions(c.cfg)
	var changed []ipvs.Key
	for _, name := range names {
		changed = append(changed, c.desired.setService(name, c.compute(name, node, opts))...)
	}
	c.recomputed = len(names)

	c.rec.dsr.writes = 0
	if full {
		// IPVS first: it creates the ledger set the firewall rules refer to.
		err = errors.Join(c.rec.full(c.desired), c.fw.full(c.desired))
		c.fullDone = err == nil
	} else {
		changed = append(changed, c.rec.drainingKeys()...)
		// DSR pods get their addresses first: the firewall clamps the MSS of their
		// connections to the MTU they report. Then the firewall: a new load-balancer
		// IP with source ranges is never reachable before the rules that restrict it
		// are in place.
		dsrErr := c.rec.dsr.grow(c.desired)
		fwErr := c.fw.partial(c.desired, changed)
		err = errors.Join(dsrErr, fwErr, c.rec.partial(c.desired, changed))
	}
	c.scheduleDrainPoll()
	c.applyHealthChecks(node)
	c.publish(node)
	summary = fmt.Sprintf("%d virtual services, %d destinations", c.desired.services, c.desired.endpoints)
	if err != nil {
		return summary, fmt.Errorf("programming IPVS: %w", err)
	}
	if w := c.writes(); w > 0 {
		c.log.Debug("proxy sync applied changes", "full", full, "writes", w, "servicesRecomputed", c.recomputed)
	}
	return summary, ctx.Err()
}

// compute returns the desired virtual services of one Service (nil when it is gone).
func (c *Controller) compute(name types.NamespacedName, node Node, opts options) []virtualServer {
	svc, err := c.services.Services(name.Namespace).Get(name.Name)
	if err != nil {
		c.noteRefused(name, nil)
		delete(c.healthChecks, name)
		return nil
	}
	objs, err := c.slices.ByIndex(sliceIndex, name.String())
	if err != nil {
		c.log.Error("reading endpoint slices", "service", name.String(), "err", err)
	}
	epSlices := make([]*k8s.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if s := k8s.CachedEndpointSlice(o); s != nil {
			epSlices = append(epSlices, s)
		}
	}
	if hc, ok := desiredHealthCheck(svc, epSlices, node.Name); ok {
		c.healthChecks[name] = hc
	} else {
		delete(c.healthChecks, name)
	}
	vss, refused, err := desiredForService(svc, epSlices, node, opts)
	if err != nil {
		c.log.Warn("service partly or wholly skipped", "service", name.String(), "err", err)
	}
	c.noteRefused(name, refused)
	return vss
}

// applyHealthChecks opens, updates and closes the health check node ports, and the
// healthz endpoint if it could not be opened before. Health check ports listen where
// NodePorts are served: on every address unless nodeport_addresses narrows them.
func (c *Controller) applyHealthChecks(node Node) {
	c.openHealthz()
	want, clashes := byPort(c.healthChecks)
	for _, hc := range clashes {
		c.log.Warn("health check node port already used by another service, skipping",
			"service", hc.Service.String(), "other", want[hc.Port].Service.String(), "port", hc.Port)
	}
	var addrs []netip.Addr
	if len(c.cfg.NodePortAddresses) > 0 {
		addrs = append([]netip.Addr{}, node.NodePortAddrs...)
	}
	c.hcs.apply(want, addrs)
}

// scheduleDrainPoll asks for another sync soon while destinations are draining, so
// they are removed once their connections end or the grace period is over.
func (c *Controller) scheduleDrainPoll() {
	if len(c.rec.draining) == 0 || !c.drainPollPending.CompareAndSwap(false, true) {
		return
	}
	time.AfterFunc(drainPoll, func() {
		c.drainPollPending.Store(false)
		c.runner.Request()
	})
}

// writes counts the kernel changes of the last sync.
func (c *Controller) writes() int { return c.rec.writes + c.rec.dsr.writes + c.fw.writes }
