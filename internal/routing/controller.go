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

	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	api "github.com/osrg/gobgp/v3/api"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
	"github.com/kube-routerd/kube-routerd/internal/loop"
)

// Controller is the routing controller (daemon.Controller).
type Controller struct {
	cfg      config.Routing
	overlay  overlaySettings
	nodeName string
	log      *slog.Logger
	dp       Dataplane
	runner   *loop.Runner
	metrics  *metrics
	changes  *loop.Tracker[input]

	nodes    corelisters.NodeLister
	services corelisters.ServiceLister
	// endpoints is the EndpointSlice informer's cache: compact slices
	// (k8s.EndpointSlice) in the daemon, whole ones where a test feeds the informers.
	endpoints cache.Store

	// Owned by the sync loop.
	speaker     speaker
	parsed      map[string]parsedNode
	last        lastSync
	heardFrom   map[string]bool // peers established at least once since start
	downSince   map[string]time.Time
	silentCheck *time.Timer
	drift       driftDetector
	// unreachable holds the routes last refused for an off-link next hop, to warn once.
	unreachable map[netip.Prefix]route.Route
	// advertiseLog is the advertisement computation's logger; advertiseRounds makes
	// it drop what it logged last time, so a bad Service annotation is logged once.
	advertiseLog    *slog.Logger
	advertiseRounds *logRounds
	// listenAddress overrides the listen addresses of the node (tests).
	listenAddress []string
	// speakerListen are the addresses the running speaker listens on.
	speakerListen []string
	bfd           bfdTracker

	mu      sync.Mutex
	details Details
}

type parsedNode struct {
	resourceVersion string
	info            nodeInfo
}

// lastSync is what the syncs computed last; a sync recomputes only the parts its
// changes touch and takes the rest from here.
type lastSync struct {
	nodes     []nodeInfo
	self      nodeInfo
	peers     []Peer
	adv       advertisements
	states    map[string]peerState
	kernel    route.State
	installed int
}

// changeSet says which inputs of the sync changed.
type changeSet struct {
	// nodes (Node objects) feed the peers, the advertisements and the kernel routes.
	nodes bool
	// services (Services and EndpointSlices) feed the advertisements only.
	services bool
	// speaker (learned routes, session states) feeds the kernel routes.
	speaker bool
}

var everything = changeSet{nodes: true, services: true, speaker: true}

// input is one input of the sync, the key the change tracker records: so a Service
// change does not redo peers and kernel routes.
type input int

const (
	nodesInput input = iota
	servicesInput
	speakerInput
)

func (s changeSet) inputs() []input {
	var out []input
	for in, set := range map[input]bool{nodesInput: s.nodes, servicesInput: s.services, speakerInput: s.speaker} {
		if set {
			out = append(out, in)
		}
	}
	return out
}

func changeSetOf(inputs map[input]struct{}) changeSet {
	_, nodes := inputs[nodesInput]
	_, services := inputs[servicesInput]
	_, speaker := inputs[speakerInput]
	return changeSet{nodes: nodes, services: services, speaker: speaker}
}

var _ daemon.Controller = (*Controller)(nil)
var _ daemon.StatusReporter = (*Controller)(nil)

// New builds the routing controller on dp (KernelDataplane's in the daemon, fakes in
// tests) and registers its informer handlers and metrics.
func New(env daemon.Env, cfg config.Routing, dp Dataplane) (*Controller, error) {
	cfg.Peers = slices.Clone(cfg.Peers)
	for i, p := range cfg.Peers {
		if p.PasswordFile == "" {
			continue
		}
		pw, err := config.ReadSecretFile(p.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("routing: password of peer %s: %w", p.Address, err)
		}
		cfg.Peers[i].Password = pw
	}
	encap, err := route.ParseEncap(cfg.OverlayEncap)
	if err != nil {
		return nil, fmt.Errorf("routing: %w", err)
	}
	c := &Controller{
		cfg:             cfg,
		overlay:         overlaySettings{Mode: cfg.Overlay, Encap: encap, Port: cfg.EncapPort(), VNI: uint32(cfg.VXLANVNI)},
		nodeName:        env.NodeName,
		log:             env.Logger("routing"),
		dp:              dp,
		parsed:          map[string]parsedNode{},
		heardFrom:       map[string]bool{},
		downSince:       map[string]time.Time{},
		advertiseRounds: &logRounds{},
		nodes:           env.Informers.Core().V1().Nodes().Lister(),
		services:        env.Informers.Core().V1().Services().Lister(),
		endpoints:       env.Informers.Discovery().V1().EndpointSlices().Informer().GetStore(),
	}
	c.advertiseLog = slog.New(repeatFilter{next: c.log.Handler(), rounds: c.advertiseRounds})
	c.runner = loop.NewRunner("routing", c.sync, cfg.MinSyncInterval.Duration, cfg.SyncPeriod.Duration)
	m, err := newMetrics(env)
	if err != nil {
		return nil, err
	}
	c.metrics = m
	c.changes = loop.NewTracker[input](c.runner.Request)
	feeds := func(in input) func(loop.Change) []input { return func(loop.Change) []input { return []input{in} } }
	if err := errors.Join(
		c.changes.Watch(env.Informers.Core().V1().Nodes().Informer(), feeds(nodesInput)),
		c.changes.Watch(env.Informers.Core().V1().Services().Informer(), feeds(servicesInput)),
		c.changes.Watch(env.Informers.Discovery().V1().EndpointSlices().Informer(), func(ch loop.Change) []input {
			if k8s.UnchangedEndpointSlice(ch.Old, ch.New) {
				return nil
			}
			return []input{servicesInput}
		}),
	); err != nil {
		return nil, fmt.Errorf("routing: registering informer handlers: %w", err)
	}
	return c, nil
}

// request records what changed (speaker events, tests) and asks for a sync.
func (c *Controller) request(s changeSet) {
	c.changes.Mark(s.inputs()...)
	c.runner.Request()
}

// Name implements daemon.Controller.
func (c *Controller) Name() string { return "routing" }

// Run implements daemon.Controller. With graceful restart on, the speaker is left to
// die with the process: sessions drop without a NOTIFICATION, so peers keep our routes
// for graceful_restart_time while the daemon restarts.
func (c *Controller) Run(ctx context.Context, hb *daemon.Heartbeat) error {
	loop.Run(ctx, c.changes, c.runner, hb)
	if c.bfd.sessions != nil {
		c.bfd.sessions.Close()
	}
	if c.speaker != nil && !c.cfg.GracefulRestart {
		c.speaker.Stop()
	}
	return nil
}

func (c *Controller) nodeInfos() ([]nodeInfo, error) {
	nodes, err := c.nodes.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	infos := make([]nodeInfo, 0, len(nodes))
	seen := map[string]bool{}
	for _, n := range nodes {
		seen[n.Name] = true
		p, ok := c.parsed[n.Name]
		// Parse (and log bad annotations) once per change of the node.
		if !ok || p.resourceVersion != n.ResourceVersion || n.ResourceVersion == "" {
			p = parsedNode{resourceVersion: n.ResourceVersion, info: parseNode(n, c.cfg, c.log)}
			c.parsed[n.Name] = p
		}
		infos = append(infos, p.info)
	}
	for name := range c.parsed {
		if !seen[name] {
			delete(c.parsed, name)
		}
	}
	slices.SortFunc(infos, func(a, b nodeInfo) int { return strings.Compare(a.Name, b.Name) })
	return infos, nil
}

// sync recomputes what the changes since the last sync touched (everything when
// full) and applies it: Node changes redo peers, advertisements and kernel routes;
// Service and EndpointSlice changes only the advertisements; speaker events only the
// kernel routes.
func (c *Controller) sync(ctx context.Context, full bool) (string, error) {
	// Taking the changes before reading any lister loses nothing: a later event marks
	// them again and asks for another sync.
	inputs, _ := c.changes.Take()
	changed := changeSetOf(inputs)
	if full || c.speaker == nil { // nothing computed yet before the speaker runs
		changed = everything
	}
	if changed.nodes {
		if err := c.syncNodes(ctx); err != nil {
			return "", err
		}
	}
	c.resetDeadPeers(ctx)
	var advertiseErr, kernelErr, bfdErr error
	if changed.nodes || changed.services {
		var err error
		if advertiseErr, err = c.advertise(ctx, changed.nodes); err != nil {
			return "", err
		}
	}
	if changed.nodes {
		bfdErr = c.syncBFD(c.last.peers)
	}
	if changed.nodes || changed.speaker {
		var err error
		if kernelErr, err = c.syncKernel(ctx); err != nil {
			return "", err
		}
	}

	l := &c.last
	c.metrics.update(l.states, len(l.adv.Prefixes), l.installed)
	c.setDetails(l.self, l.peers, l.states, c.bfdStates(), l.adv, l.kernel)
	up := 0
	for _, st := range l.states {
		if st.State == api.PeerState_ESTABLISHED.String() {
			up++
		}
	}
	summary := fmt.Sprintf("%d/%d peers up, %d prefixes announced, %d routes installed", up, len(l.peers), len(l.adv.Prefixes), l.installed)
	if err := errors.Join(advertiseErr, kernelErr, bfdErr); err != nil {
		return summary, fmt.Errorf("routing sync: %w", err)
	}
	return summary, nil
}

// syncNodes re-reads the Nodes, finds ours (starting the speaker on the first sync)
// and recomputes the peers.
func (c *Controller) syncNodes(ctx context.Context) error {
	nodes, err := c.nodeInfos()
	if err != nil {
		return err
	}
	i := slices.IndexFunc(nodes, func(n nodeInfo) bool { return n.Name == c.nodeName })
	if i < 0 {
		return fmt.Errorf("node %s not found", c.nodeName)
	}
	self := nodes[i]
	if c.speaker != nil && !slices.Equal(c.listenAddresses(self), c.speakerListen) {
		// GoBGP takes its listen addresses only when it starts.
		c.log.Info("restarting the BGP speaker to listen on new addresses; its sessions restart",
			"old", strings.Join(c.speakerListen, ","), "new", strings.Join(c.listenAddresses(self), ","))
		c.speaker.Stop()
		c.speaker = nil
	}
	if c.speaker == nil {
		if err := c.startSpeaker(ctx, self); err != nil {
			return err
		}
	}
	if old := c.last.self; old.Name != "" && old.ASN != self.ASN {
		c.log.Info("this node's AS number changed; every BGP session restarts with it", "old", old.ASN, "new", self.ASN)
	}
	c.last.nodes, c.last.self = nodes, self
	c.last.peers = desiredPeers(c.cfg, self, nodes)
	return nil
}

// advertise recomputes what we announce and hands it to the speaker, with the peers
// when they changed. err stops the sync; applyErr (peers or paths the speaker
// refused) does not.
func (c *Controller) advertise(ctx context.Context, peersChanged bool) (applyErr, err error) {
	services, err := c.services.List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("listing services: %w", err)
	}
	var endpointSlices []*k8s.EndpointSlice
	for _, o := range c.endpoints.List() {
		if s := k8s.CachedEndpointSlice(o); s != nil {
			endpointSlices = append(endpointSlices, s)
		}
	}
	l := &c.last
	l.adv = desiredAdvertisements(c.cfg, l.self, l.nodes, services, localEndpoints(endpointSlices, c.nodeName), c.advertiseLog)
	c.advertiseRounds.next()

	// Policies first, so a new peer is classified before its session can come up.
	if err := c.speaker.SetPolicy(ctx, l.adv, l.peers); err != nil {
		return nil, err
	}
	var peerErr error
	if peersChanged {
		peerErr = c.speaker.SetPeers(ctx, l.peers)
	}
	return errors.Join(peerErr, c.speaker.SetPaths(ctx, l.adv.Prefixes)), nil
}

// syncKernel turns the speaker's learned routes into kernel routes and tunnels, and
// reads the sessions' states. err stops the sync; applyErr (routes or tunnels the
// kernel refused) does not.
func (c *Controller) syncKernel(ctx context.Context) (applyErr, err error) {
	l := &c.last
	learned, err := c.speaker.Learned(ctx)
	if err != nil {
		return nil, err
	}
	localPrefixes, err := c.dp.Routes.LocalPrefixes()
	if err != nil {
		return nil, err
	}
	want := desiredKernel(c.overlay, l.self, l.nodes, learned, localPrefixes)
	l.states = c.speaker.PeerStates(ctx)
	c.observePeers(l.states)

	drifted, err := c.drift.count(c.dp.Routes, want)
	if err != nil {
		return nil, err
	}
	installed, unreachable, kernelErr := reconcileKernel(c.dp.Routes, want, c.keepUntilHeardFrom(l.nodes, l.peers), c.log)
	c.reportUnreachable(unreachable, l.nodes)
	left := want
	left.Routes = withoutRoutes(want.Routes, unreachable)
	c.drift.remember(left, kernelErr == nil)
	if drifted > 0 {
		c.log.Warn("repaired routes or tunnels changed by someone else", "drifted", drifted)
		c.metrics.driftRepairs.Add(float64(drifted))
	}
	l.kernel, l.installed = want, installed
	return kernelErr, nil
}

// observePeers records which peers have been up since we started and warns about
// those that stay silent.
func (c *Controller) observePeers(states map[string]peerState) {
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
	if due := c.warnAboutSilentPeers(c.last.peers, states, time.Now()); due > 0 {
		// A peer that never answers produces no BGP event that would run a sync.
		recheck := func() { c.request(changeSet{speaker: true}) }
		if c.silentCheck == nil {
			c.silentCheck = time.AfterFunc(due, recheck)
		} else {
			c.silentCheck.Reset(due)
		}
	}
}

// keepUntilHeardFrom spares a route into the pod CIDR of an existing node that has
// not been heard from since we started: after a restart the kernel still has the
// route, and it comes back as soon as the session that carries it is up. That is the
// node's own session when we peer with it; otherwise the node's routes reach us only
// through our node peers (route reflectors), and the route is spared until one of
// them is up. Without any node peer nothing will announce it again.
func (c *Controller) keepUntilHeardFrom(nodes []nodeInfo, peers []Peer) func(route.Route) bool {
	owner := map[netip.Prefix]nodeInfo{}
	for _, n := range nodes {
		for _, p := range n.PodCIDRs {
			owner[p] = n
		}
	}
	direct := map[netip.Addr]bool{}
	relayed := false // a node peer is up: relayed routes are current
	for _, p := range peers {
		if !p.External() {
			direct[p.Address] = true
			relayed = relayed || c.heardFrom[p.Address.String()]
		}
	}
	return func(r route.Route) bool {
		n, ok := owner[r.Dst]
		if !ok || n.Name == c.nodeName {
			return false
		}
		addr := n.AddressFor(r.Dst.Addr())
		if !addr.IsValid() {
			return false
		}
		if direct[addr] {
			return !c.heardFrom[addr.String()]
		}
		return len(direct) > 0 && !relayed
	}
}

// warnAboutSilentPeers logs, once per outage, a peer whose session has not been
// established for a whole hold time since it was configured or went down. GoBGP
// sees nothing of a refused or unanswered connection, nor of a TCP MD5 mismatch,
// whose segments the kernel drops, so this is the only trace of those faults. It
// returns when the next warning is due, 0 for none.
func (c *Controller) warnAboutSilentPeers(peers []Peer, states map[string]peerState, now time.Time) (due time.Duration) {
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

func (c *Controller) startSpeaker(ctx context.Context, self nodeInfo) error {
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
	listen := c.listenAddresses(self)
	sc := speakerConfig{
		ASN:             self.ASN,
		RouterID:        routerID,
		ListenPort:      int32(c.cfg.ListenPort),
		ListenAddresses: listen,
		GracefulRestart: c.cfg.GracefulRestart,
		RestartTime:     c.cfg.GracefulRestartTime.Duration,
		Log:             c.log,
	}
	s, err := c.dp.startSpeaker(ctx, sc)
	if err != nil && len(self.ListenAddresses) > 0 {
		// An annotated address the node does not have must not stop routing.
		c.log.Warn("BGP speaker could not listen on the annotated addresses; listening on every address",
			"node", self.Name, "annotation", annotationLocalAddresses, "err", err)
		sc.ListenAddresses = wildcards(self)
		s, err = c.dp.startSpeaker(ctx, sc)
	}
	if err != nil {
		return err
	}
	onPeer := func(addr string, old, next peerState) {
		if next.Flaps > old.Flaps {
			c.metrics.flaps.Inc()
			c.log.Warn("BGP session went down", "peer", addr, "state", next.State)
		}
		c.request(changeSet{speaker: true})
	}
	onBestPath := func() { c.request(changeSet{speaker: true}) }
	if err := s.Watch(ctx, onPeer, onBestPath); err != nil {
		s.Stop()
		return fmt.Errorf("watching BGP events: %w", err)
	}
	c.speaker, c.speakerListen = s, listen
	c.log.Info("BGP speaker started", "asn", self.ASN, "routerID", routerID, "port", c.cfg.ListenPort, "listen", strings.Join(sc.ListenAddresses, ","))
	return nil
}

// listenAddresses are the addresses the speaker should listen on: the node's
// bgp-local-addresses, or the wildcard of each family the node has.
func (c *Controller) listenAddresses(self nodeInfo) []string {
	if c.listenAddress != nil {
		return c.listenAddress
	}
	if len(self.ListenAddresses) == 0 {
		return wildcards(self)
	}
	out := make([]string, 0, len(self.ListenAddresses))
	for _, a := range self.ListenAddresses {
		out = append(out, a.String())
	}
	return out
}

// wildcards are the wildcard addresses of the families the node has: GoBGP listens
// on IPv4 or IPv6 per address.
func wildcards(self nodeInfo) []string {
	var out []string
	if self.Address.IsValid() {
		out = append(out, "0.0.0.0")
	}
	if self.AddressV6.IsValid() {
		out = append(out, "::")
	}
	return out
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

func (c *Controller) reportUnreachable(routes []route.Route, nodes []nodeInfo) {
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
