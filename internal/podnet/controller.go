package podnet

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

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/sysctl"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
	"github.com/kube-routerd/kube-routerd/internal/loop"
)

// Node addresses and pod CIDRs change rarely and are cheap to apply; the periodic
// full sync repairs drift.
const (
	minSyncInterval = 100 * time.Millisecond
	syncPeriod      = 5 * time.Minute
)

// defaultLinkMTU is assumed when the node's address is on no local interface.
const defaultLinkMTU = 1500

// Controller is the pod network controller (daemon.Controller).
type Controller struct {
	opts     Options
	nodeName string
	log      *slog.Logger
	dp       Dataplane
	metrics  *metrics
	cni      CNIFile
	runner   *loop.Runner
	nodes    corelisters.NodeLister
	// changes records that some node's addresses or pod CIDRs changed; the sync then
	// recomputes from every node (cheap: a set diff).
	changes *loop.Tracker[struct{}]

	// Owned by the sync loop.
	egress  *egressWriter
	parsed  map[string]parsedNode
	linkMTU int
	lastCNI CNIState

	mu      sync.Mutex
	details Details
}

type parsedNode struct {
	resourceVersion string
	addrs           k8s.NodeAddresses
}

var _ daemon.Controller = (*Controller)(nil)
var _ daemon.StatusReporter = (*Controller)(nil)

// New builds the controller and registers its Node handler. opts.Config must be valid.
func New(env daemon.Env, opts Options, dp Dataplane) (*Controller, error) {
	m, err := newMetrics(env)
	if err != nil {
		return nil, err
	}
	log := env.Logger("podnet")
	c := &Controller{
		opts:     opts,
		nodeName: env.NodeName,
		log:      log,
		dp:       dp,
		metrics:  m,
		cni:      CNIFile{Path: opts.Config.CNIConfigFile},
		egress:   newEgressWriter(dp, log),
		parsed:   map[string]parsedNode{},
		nodes:    env.Informers.Core().V1().Nodes().Lister(),
	}
	c.runner = loop.NewRunner("podnet", c.sync, minSyncInterval, syncPeriod)
	c.changes = loop.NewTracker[struct{}](c.runner.Request)
	if err := c.changes.WatchAll(env.Informers.Core().V1().Nodes().Informer(), placesANode); err != nil {
		return nil, fmt.Errorf("podnet: registering node handler: %w", err)
	}
	return c, nil
}

// placesANode reports whether a Node event changes what this controller reads: a
// node's addresses or pod CIDRs (its status changes often, in conditions and images).
func placesANode(ch loop.Change) bool {
	o, ok1 := ch.Old.(*corev1.Node)
	n, ok2 := ch.New.(*corev1.Node)
	return !ok1 || !ok2 || !equality.Semantic.DeepEqual(o.Status.Addresses, n.Status.Addresses) ||
		!slices.Equal(o.Spec.PodCIDRs, n.Spec.PodCIDRs) || o.Spec.PodCIDR != n.Spec.PodCIDR
}

// Name implements daemon.Controller.
func (c *Controller) Name() string { return "podnet" }

// Run implements daemon.Controller.
func (c *Controller) Run(ctx context.Context, hb *daemon.Heartbeat) error {
	loop.Run(ctx, c.changes, c.runner, hb)
	return nil
}

// forwardingSysctls let the node route its pods' traffic.
var forwardingSysctls = []sysctl.KV{
	{Key: "net/ipv4/ip_forward", Value: "1"},
	{Key: "net/ipv6/conf/all/forwarding", Value: "1"},
}

// bridgeSysctls send traffic between pods of one bridge through iptables, where
// network policies apply. Their keys exist only once br_netfilter is loaded (the
// package loads it), so ensureSysctls sets them only when present.
var bridgeSysctls = []sysctl.KV{
	{Key: "net/bridge/bridge-nf-call-iptables", Value: "1"},
	{Key: "net/bridge/bridge-nf-call-ip6tables", Value: "1"},
}

func (c *Controller) sync(_ context.Context, full bool) (string, error) {
	c.changes.Take()
	self, nodes, err := c.readNodes()
	if err != nil {
		return "", err
	}
	var errs []error
	if full {
		errs = append(errs, c.ensureSysctls())
	}
	// A partial sync can come first; without the link's MTU the conflist would say
	// 0 less the tunnel header.
	if full || c.linkMTU == 0 {
		c.linkMTU = c.readLinkMTU(self)
	}
	want := compute(c.opts, self, nodes, c.linkMTU)
	errs = append(errs, c.syncCNI(want, self))
	if err := c.egress.sync(want.Egress, full); err != nil {
		errs = append(errs, fmt.Errorf("pod egress: %w", err))
	}
	err = errors.Join(errs...)
	c.metrics.record(want)
	c.setDetails(want, self, err)
	return c.summary(want), err
}

// readNodes parses every Node once per resourceVersion, so a bad value is logged
// once per change, and returns this node's addresses and everyone's.
func (c *Controller) readNodes() (k8s.NodeAddresses, []k8s.NodeAddresses, error) {
	list, err := c.nodes.List(labels.Everything())
	if err != nil {
		return k8s.NodeAddresses{}, nil, fmt.Errorf("listing nodes: %w", err)
	}
	seen := make(map[string]bool, len(list))
	all := make([]k8s.NodeAddresses, 0, len(list))
	var self k8s.NodeAddresses
	for _, n := range list {
		p, ok := c.parsed[n.Name]
		if !ok || p.resourceVersion != n.ResourceVersion {
			p = parsedNode{resourceVersion: n.ResourceVersion, addrs: k8s.ParseNodeAddresses(n, c.log)}
			c.parsed[n.Name] = p
		}
		seen[n.Name] = true
		all = append(all, p.addrs)
		if n.Name == c.nodeName {
			self = p.addrs
		}
	}
	for name := range c.parsed {
		if !seen[name] {
			delete(c.parsed, name)
		}
	}
	return self, all, nil
}

func (c *Controller) ensureSysctls() error {
	want := slices.Clone(forwardingSysctls)
	for _, kv := range bridgeSysctls {
		if _, err := c.dp.Sysctls.Get(kv.Key); err == nil {
			want = append(want, kv)
		}
	}
	_, err := sysctl.Ensure(c.dp.Sysctls, want)
	return err
}

func (c *Controller) readLinkMTU(self k8s.NodeAddresses) int {
	for _, a := range []netip.Addr{self.IPv4, self.IPv6} {
		if !a.IsValid() {
			continue
		}
		mtu, err := c.dp.LinkMTU(a)
		if err == nil {
			return mtu
		}
		c.log.Warn("cannot read the MTU of the node's interface", "address", a, "err", err)
	}
	if c.linkMTU > 0 {
		return c.linkMTU
	}
	return defaultLinkMTU
}

func (c *Controller) syncCNI(want desired, self k8s.NodeAddresses) error {
	state := CNIDisabled
	var err error
	switch {
	case !c.opts.Config.WriteCNIConfig:
	case want.CNI == nil:
		state = CNIWaiting
		if c.lastCNI != state {
			c.log.Info("no pod CIDR on this node's Node object yet; CNI config not written", "file", c.cni.Path)
		}
	default:
		var wrote bool
		wrote, err = c.cni.Sync(want.CNI)
		var foreign *foreignFileError
		switch {
		case errors.As(err, &foreign):
			state = CNIForeign
			if c.lastCNI != state {
				c.log.Warn(err.Error(), "file", c.cni.Path)
			}
			err = nil // not ours to fix: status says so, the rest of the node works
		case err == nil:
			state = CNIWritten
			if wrote {
				c.log.Info("wrote CNI config", "file", c.cni.Path, "podCIDRs", self.PodCIDRs, "mtu", want.MTU)
			}
		}
	}
	c.lastCNI = state
	return err
}

func (c *Controller) summary(want desired) string {
	return fmt.Sprintf("CNI config %s, pod MTU %d, egress masquerade %s", c.lastCNI, want.MTU, egressFamilies(want.Egress))
}

func egressFamilies(fs []egressFamily) string {
	if len(fs) == 0 {
		return "off"
	}
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.Family.String()
	}
	return strings.Join(names, "+")
}
