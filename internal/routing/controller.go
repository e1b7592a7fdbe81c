package routing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	api "github.com/osrg/gobgp/v3/api"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/runner"
)

// Controller is the routing controller (daemon.Controller).
type Controller struct {
	cfg      config.Routing
	nodeName string
	log      *slog.Logger
	kernel   route.Interface
	runner   *runner.Runner
	metrics  *metrics

	nodes     corelisters.NodeLister
	services  corelisters.ServiceLister
	endpoints discoverylisters.EndpointSliceLister

	// Owned by the sync loop.
	speaker     *Speaker
	parsed      map[string]parsedNode
	heardFrom   map[string]bool // peers established at least once since start
	downSince   map[string]time.Time
	silentCheck *time.Timer
	drift       driftDetector
	// unreachable holds the routes last refused for an off-link next hop, to warn once.
	unreachable map[netip.Prefix]route.Route
	// listenAddress overrides the wildcard addresses of the families the node has.
	listenAddress []string

	mu      sync.Mutex
	details Details
}

type parsedNode struct {
	resourceVersion string
	info            NodeInfo
}

var _ daemon.Controller = (*Controller)(nil)
var _ daemon.StatusReporter = (*Controller)(nil)

// New builds the routing controller and registers its informer handlers and metrics.
func New(env daemon.Env, cfg config.Routing) (*Controller, error) {
	c := &Controller{
		cfg:       cfg,
		nodeName:  env.NodeName,
		log:       slog.Default().With("controller", "routing"),
		kernel:    route.Netlink{},
		parsed:    map[string]parsedNode{},
		heardFrom: map[string]bool{},
		downSince: map[string]time.Time{},
		nodes:     env.Informers.Core().V1().Nodes().Lister(),
		services:  env.Informers.Core().V1().Services().Lister(),
		endpoints: env.Informers.Discovery().V1().EndpointSlices().Lister(),
	}
	c.runner = runner.New("routing", c.sync, cfg.MinSyncInterval.Duration, cfg.SyncPeriod.Duration)
	m, err := newMetrics(env.Registry)
	if err != nil {
		return nil, err
	}
	c.metrics = m
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.runner.Request() },
		UpdateFunc: func(any, any) { c.runner.Request() },
		DeleteFunc: func(any) { c.runner.Request() },
	}
	for _, inf := range []cache.SharedIndexInformer{
		env.Informers.Core().V1().Nodes().Informer(),
		env.Informers.Core().V1().Services().Informer(),
		env.Informers.Discovery().V1().EndpointSlices().Informer(),
	} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return nil, fmt.Errorf("routing: registering informer handler: %w", err)
		}
	}
	return c, nil
}

// Name implements daemon.Controller.
func (c *Controller) Name() string { return "routing" }

// Run implements daemon.Controller. With graceful restart on, the speaker is left to
// die with the process: sessions drop without a NOTIFICATION, so peers keep our routes
// for graceful_restart_time while the daemon restarts.
func (c *Controller) Run(ctx context.Context, hb *daemon.Heartbeat) error {
	c.runner.Run(ctx, hb)
	if c.speaker != nil && !c.cfg.GracefulRestart {
		c.speaker.Stop()
	}
	return nil
}

func (c *Controller) nodeInfos() ([]NodeInfo, error) {
	nodes, err := c.nodes.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	infos := make([]NodeInfo, 0, len(nodes))
	seen := map[string]bool{}
	for _, n := range nodes {
		seen[n.Name] = true
		p, ok := c.parsed[n.Name]
		// Parse (and log bad annotations) once per change of the node.
		if !ok || p.resourceVersion != n.ResourceVersion || n.ResourceVersion == "" {
			p = parsedNode{resourceVersion: n.ResourceVersion, info: ParseNode(n, c.cfg, c.log)}
			c.parsed[n.Name] = p
		}
		infos = append(infos, p.info)
	}
	for name := range c.parsed {
		if !seen[name] {
			delete(c.parsed, name)
		}
	}
	slices.SortFunc(infos, func(a, b NodeInfo) int { return strings.Compare(a.Name, b.Name) })
	return infos, nil
}

func (c *Controller) sync(ctx context.Context, full bool) (string, error) {
	nodes, err := c.nodeInfos()
	if err != nil {
		return "", err
	}
	i := slices.IndexFunc(nodes, func(n NodeInfo) bool { return n.Name == c.nodeName })
	if i < 0 {
		return "", fmt.Errorf("node %s not found", c.nodeName)
	}
	self := nodes[i]
	if c.speaker == nil {
		if err := c.startSpeaker(ctx, self); err != nil {
			return "", err
		}
	}
	services, err := c.services.List(labels.Everything())
	if err != nil {
		return "", fmt.Errorf("listing services: %w", err)
	}
	endpointSlices, err := c.endpoints.List(labels.Everything())
	if err != nil {
		return "", fmt.Errorf("listing endpoint slices: %w", err)
	}
	peers := DesiredPeers(c.cfg, self, nodes)
	adv := DesiredAdvertisements(c.cfg, self, nodes, services, LocalEndpoints(endpointSlices, c.nodeName), c.log)

	// Policies first, so a new peer is classified before its session can come up.
	if err := c.speaker.SetPolicy(ctx, adv, peers); err != nil {
		return "", err
	}
	peerErr := c.speaker.SetPeers(ctx, peers)
	pathErr := c.speaker.SetPaths(ctx, adv.Prefixes)

	learned, err := c.speaker.Learned(ctx)
	if err != nil {
		return "", err
	}
	localPrefixes, err := c.kernel.LocalPrefixes()
	if err != nil {
		return "", err
	}
	routes, tunnels := DesiredKernel(c.cfg.Overlay, self, nodes, learned, localPrefixes)

	states := c.speaker.PeerStates(ctx)
	for addr, st := range states {
		if st.State == api.PeerState_ESTABLISHED.String() {
			c.heardFrom[addr] = true
		}
	}
	for addr := range c.heardFrom {
		if _, ok := states[addr]; !ok {
			delete(c.heardFrom, addr)
		}
	}
	if due := c.warnAboutSilentPeers(peers, states, time.Now()); due > 0 {
		// A peer that never answers produces no BGP event that would run a sync.
		if c.silentCheck == nil {
			c.silentCheck = time.AfterFunc(due, c.runner.Request)
		} else {
			c.silentCheck.Reset(due)
		}
	}
	drifted, err := c.drift.count(c.kernel, routes, tunnels)
	if err != nil {
		return "", err
	}
	installed, unreachable, kernelErr := reconcileKernel(c.kernel, routes, tunnels, c.keepUntilHeardFrom(nodes), c.log)
	c.reportUnreachable(unreachable, nodes)
	c.drift.remember(withoutRoutes(routes, unreachable), tunnels, kernelErr == nil)
	if drifted > 0 {
		c.log.Warn("repaired routes or tunnels changed by someone else", "drifted", drifted)
		c.metrics.driftRepairs.Add(float64(drifted))
	}

	c.metrics.update(states, len(adv.Prefixes), installed)
	c.setDetails(self, peers, states, adv, routes, tunnels)
	up := 0
	for _, st := range states {
		if st.State == api.PeerState_ESTABLISHED.String() {
			up++
		}
	}
	summary := fmt.Sprintf("%d/%d peers up, %d prefixes announced, %d routes installed", up, len(peers), len(adv.Prefixes), installed)
	if err := errors.Join(peerErr, pathErr, kernelErr); err != nil {
		return summary, fmt.Errorf("routing sync: %w", err)
	}
	return summary, nil
}

// keepUntilHeardFrom spares a route into the pod CIDR of an existing node whose
// session has not been up since we started: after a restart the kernel still has
// the route and the node will announce it again as soon as the session is up.
func (c *Controller) keepUntilHeardFrom(nodes []NodeInfo) func(route.Route) bool {
	owner := map[netip.Prefix]NodeInfo{}
	for _, n := range nodes {
		for _, p := range n.PodCIDRs {
			owner[p] = n
		}
	}
	return func(r route.Route) bool {
		n, ok := owner[r.Dst]
		if !ok || n.Name == c.nodeName {
			return false
		}
		addr := n.AddressFor(r.Dst.Addr())
		return addr.IsValid() && !c.heardFrom[addr.String()]
	}
}

// warnAboutSilentPeers logs, once per outage, a peer whose session has not been
// established for a whole hold time since it was configured or went down. GoBGP
// sees nothing of a refused or unanswered connection, nor of a TCP MD5 mismatch,
// whose segments the kernel drops, so this is the only trace of those faults. It
// returns when the next warning is due, 0 for none.
func (c *Controller) warnAboutSilentPeers(peers []Peer, states map[string]PeerState, now time.Time) (due time.Duration) {
	wanted := map[string]bool{}
	for _, p := range peers {
		addr := p.Address.String()
		wanted[addr] = true
		if states[addr].State == api.PeerState_ESTABLISHED.String() {
			delete(c.downSince, addr)
			continue
		}
		since, seen := c.downSince[addr]
		if !seen {
			since = now
			c.downSince[addr] = now
		}
		if since.IsZero() {
			continue // warned already
		}
		if left := max(p.HoldTime, 3*time.Second) - now.Sub(since); left > 0 {
			if due == 0 || left < due {
				due = left
			}
			continue
		}
		c.log.Warn("BGP session is not established; check reachability, AS numbers and passwords",
			"peer", addr, "asn", p.ASN, "node", p.Node, "state", states[addr].State,
			"down", now.Sub(since).Round(time.Second), "password", p.Password != "")
		c.downSince[addr] = time.Time{} // warned; the zero time waits for the session
	}
	for addr := range c.downSince {
		if !wanted[addr] {
			delete(c.downSince, addr)
		}
	}
	return due
}

func (c *Controller) startSpeaker(ctx context.Context, self NodeInfo) error {
	routerID := c.cfg.RouterID.Addr
	if !routerID.IsValid() {
		routerID = self.Address
	}
	if !routerID.IsValid() && self.AddressV6.IsValid() {
		routerID = routerIDFromIPv6(self.AddressV6)
	}
	if !routerID.IsValid() {
		return fmt.Errorf("node %s has no InternalIP and routing.router_id is not set", self.Name)
	}
	// GoBGP listens on IPv4 or IPv6 per address, so each family the node has needs its
	// wildcard.
	listen := c.listenAddress
	if listen == nil {
		if self.Address.IsValid() {
			listen = append(listen, "0.0.0.0")
		}
		if self.AddressV6.IsValid() {
			listen = append(listen, "::")
		}
	}
	s, err := StartSpeaker(ctx, SpeakerConfig{
		ASN:             uint32(c.cfg.ASN),
		RouterID:        routerID,
		ListenPort:      int32(c.cfg.ListenPort),
		ListenAddresses: listen,
		GracefulRestart: c.cfg.GracefulRestart,
		RestartTime:     c.cfg.GracefulRestartTime.Duration,
		Communities:     c.cfg.Communities,
		Log:             c.log,
	})
	if err != nil {
		return err
	}
	onPeer := func(addr string, old, next PeerState) {
		if next.Flaps > old.Flaps {
			c.metrics.flaps.Inc()
			c.log.Warn("BGP session went down", "peer", addr, "state", next.State)
		}
		c.runner.Request()
	}
	if err := s.Watch(ctx, onPeer, c.runner.Request); err != nil {
		s.Stop()
		return fmt.Errorf("watching BGP events: %w", err)
	}
	c.speaker = s
	c.log.Info("BGP speaker started", "asn", c.cfg.ASN, "routerID", routerID, "port", c.cfg.ListenPort)
	return nil
}

// routerIDFromIPv6 derives a BGP router id (an IPv4-shaped number) for a node without
// an IPv4 address from the last 32 bits of its IPv6 address, which differ between
// nodes of one IPv6 subnet; 0.0.0.0 is not allowed, so it becomes 0.0.0.1.
func routerIDFromIPv6(a netip.Addr) netip.Addr {
	b := a.As16()
	id := netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	if id.IsUnspecified() {
		return netip.AddrFrom4([4]byte{0, 0, 0, 1})
	}
	return id
}

// Details is the routing controller's state for `kube-routerd status`.
type Details struct {
	Node       string        `json:"node"`
	Address    string        `json:"address"`
	AddressV6  string        `json:"addressV6,omitempty"`
	PodCIDRs   []string      `json:"podCIDRs"`
	Peers      []PeerDetails `json:"peers"`
	Announced  []string      `json:"announced"`
	ToExternal []string      `json:"toExternal"`
	Routes     []string      `json:"routes"`
	Tunnels    []string      `json:"tunnels,omitempty"`
}

// PeerDetails describes one BGP neighbour.
type PeerDetails struct {
	Address  string `json:"address"`
	ASN      uint32 `json:"asn"`
	Node     string `json:"node,omitempty"`
	State    string `json:"state"`
	Flaps    int    `json:"flaps"`
	RRClient bool   `json:"rrClient,omitempty"`
}

// Details implements daemon.StatusReporter.
func (c *Controller) Details() any {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.details
}

func (c *Controller) setDetails(self NodeInfo, peers []Peer, states map[string]PeerState, adv Advertisements, routes []route.Route, tunnels []route.Tunnel) {
	d := Details{Node: self.Name, Address: self.Address.String()}
	if self.AddressV6.IsValid() {
		d.AddressV6 = self.AddressV6.String()
	}
	for _, p := range self.PodCIDRs {
		d.PodCIDRs = append(d.PodCIDRs, p.String())
	}
	for _, p := range peers {
		st := states[p.Address.String()]
		d.Peers = append(d.Peers, PeerDetails{Address: p.Address.String(), ASN: p.ASN, Node: p.Node, State: st.State, Flaps: st.Flaps, RRClient: p.RRClient})
	}
	for _, p := range adv.Prefixes {
		d.Announced = append(d.Announced, p.String())
	}
	for _, p := range adv.ToExternal {
		d.ToExternal = append(d.ToExternal, p.String())
	}
	for _, r := range routes {
		d.Routes = append(d.Routes, r.String())
	}
	for _, t := range tunnels {
		d.Tunnels = append(d.Tunnels, t.String())
	}
	c.mu.Lock()
	c.details = d
	c.mu.Unlock()
}

type metrics struct {
	peers        *prometheus.GaugeVec
	advertised   prometheus.Gauge
	received     prometheus.Gauge
	installed    prometheus.Gauge
	flaps        prometheus.Counter
	driftRepairs prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		peers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kube_routerd_routing_bgp_peers", Help: "BGP peers by session state.",
		}, []string{"state"}),
		advertised: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kube_routerd_routing_routes_advertised", Help: "Prefixes this node announces (pod CIDRs and Service IPs) before export policy.",
		}),
		received: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kube_routerd_routing_routes_received", Help: "Routes accepted from BGP peers, summed over peers.",
		}),
		installed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kube_routerd_routing_routes_installed", Help: "Routes kube-routerd installed in the kernel.",
		}),
		flaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kube_routerd_routing_bgp_session_flaps_total", Help: "Times an established BGP session went down.",
		}),
		driftRepairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kube_routerd_routing_drift_repairs_total",
			Help: "Routes and tunnels of ours that someone else removed or changed, and a sync repaired.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, col := range []prometheus.Collector{m.peers, m.advertised, m.received, m.installed, m.flaps, m.driftRepairs} {
		if err := reg.Register(col); err != nil {
			return nil, fmt.Errorf("routing: registering metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) update(states map[string]PeerState, originated, installed int) {
	counts := map[string]int{}
	for name := range api.PeerState_SessionState_value {
		counts[name] = 0
	}
	var received uint64
	for _, st := range states {
		counts[st.State]++
		received += st.Received
	}
	for state, n := range counts {
		m.peers.WithLabelValues(state).Set(float64(n))
	}
	m.advertised.Set(float64(originated))
	m.received.Set(float64(received))
	m.installed.Set(float64(installed))
}

// reportUnreachable warns once about each route the kernel refused because its next
// hop is on no connected network (a node in another subnet with overlay = "never"),
// naming the node behind it.
func (c *Controller) reportUnreachable(routes []route.Route, nodes []NodeInfo) {
	now := make(map[netip.Prefix]route.Route, len(routes))
	for _, r := range routes {
		now[r.Dst] = r
		if c.unreachable[r.Dst] == r {
			continue
		}
		node := ""
		for _, n := range nodes {
			if n.Address == r.Gateway || n.AddressV6 == r.Gateway {
				node = n.Name
			}
		}
		c.log.Warn("route not installed: its next hop is on no network this node is attached to; "+
			"use overlay = \"cross-subnet\" or \"always\" for nodes in other subnets (IPv4 only)",
			"route", r.String(), "node", node, "overlay", c.cfg.Overlay)
	}
	c.unreachable = now
}

// withoutRoutes returns routes minus those in drop.
func withoutRoutes(routes, drop []route.Route) []route.Route {
	if len(drop) == 0 {
		return routes
	}
	return slices.DeleteFunc(slices.Clone(routes), func(r route.Route) bool { return slices.Contains(drop, r) })
}
