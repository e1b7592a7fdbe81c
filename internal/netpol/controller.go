package netpol

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	netlisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/daemon"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
	"github.com/kube-routerd/kube-routerd/internal/loop"
)

// Controller enforces NetworkPolicies and ClusterNetworkPolicies for the pods on
// this node.
type Controller struct {
	log      *slog.Logger
	opts     options
	cfg      config.NetworkPolicy
	runner   *loop.Runner
	families []*familyState
	metrics  *metrics

	// pods is the pod informer's cache: compact pods (k8s.Pod) in the daemon, whole
	// ones where a test feeds the informers directly.
	pods       cache.Indexer
	namespaces corelisters.NamespaceLister
	policies   netlisters.NetworkPolicyLister
	nodes      corelisters.NodeLister
	// cluster reads ClusterNetworkPolicies; nil without a PolicyClient.
	cluster *clusterSource
	// clusterPrepared: the API server served them when New asked.
	clusterPrepared bool
	// node is this node's pod CIDRs as last read, by the Node's resourceVersion.
	node struct {
		read            bool
		resourceVersion string
		podCIDRs        []netip.Prefix
	}

	// crossNamespace are the policies pods of other namespaces can affect
	// (reachesOtherNamespaces), as of the last sync that listed every policy.
	crossNamespace []*networkingv1.NetworkPolicy

	// changes collects the pods and policies that changed; "all" when a namespace
	// changed (selectors and the beta annotation read them) or the last apply failed.
	changes *loop.Tracker[changed]

	// modelMu is held by a sync while it changes the index, the compiled policies and
	// the assemblers, and by Explain while it reads them.
	modelMu sync.Mutex
	idx     *index
	// selectors are the policies' parsed selectors, for telling which policies a
	// pod's change touches; a sync with a policy change starts them over.
	selectors selectorCache
	// compiled says the last sync succeeded: the index and the compiled policies
	// are what the informer caches say.
	compiled bool
	// lastCompile and lastApply split the last successful sync's time between
	// compiling (index, policies, assembly) and writing the kernel.
	lastCompile, lastApply time.Duration

	detailsMu sync.Mutex
	details   Details
}

// changed names one changed object: a pod or a policy, by "namespace/name", or a
// ClusterNetworkPolicy (cluster), by name.
type changed struct {
	policy  bool
	cluster bool
	key     string
}

// familyState is the compiled policies and netfilter writer of one IP family.
type familyState struct {
	opts      options
	compiled  map[string]*compiledPolicy
	asm       *assembler
	netfilter netfilter.Interface
}

// New builds the controller and registers its informer handlers and metrics.
func New(env daemon.Env, cfg config.NetworkPolicy, dp Dataplane) (*Controller, error) {
	c := &Controller{
		cfg: cfg,
		log: env.Logger("netpol"),
		opts: options{
			NodeName:               env.NodeName,
			MarkBit:                defaultMarkBit,
			ServiceLedger:          dp.ServiceLedger,
			BetaNamespaceIsolation: cfg.BetaNamespaceIsolation,
			IsolateUntilEnforced:   cfg.IsolatePodsUntilEnforced,
			LogDrops:               cfg.LogDrops,
			NFLOGGroup:             cfg.NFLOGGroup,
			LogRatePerMinute:       cfg.LogRatePerMinute,
		},
		idx: newIndex(env.NodeName),
	}
	if dp.ServiceLedger {
		// Our INPUT jump names the ledger sets, which the service proxy may not have
		// made yet; making them is what the proxy's first look at its ledger does.
		if _, err := (&ipvs.IPSetLedger{Sets: dp.IPSets}).Keys(); err != nil {
			return nil, fmt.Errorf("service proxy ledger sets: %w", err)
		}
	}
	for _, ipt := range dp.IPTables {
		o := c.opts
		o.Family = ipt.Family()
		c.families = append(c.families, &familyState{opts: o, compiled: map[string]*compiledPolicy{},
			asm: newAssembler(o), netfilter: newWriter(ipt, dp.IPSets, c.log)})
	}
	m, err := newMetrics(env)
	if err != nil {
		return nil, err
	}
	c.metrics = m
	c.runner = loop.NewRunner("netpol", c.sync, cfg.MinSyncInterval.Duration, cfg.SyncPeriod.Duration)

	c.changes = loop.NewTracker[changed](c.runner.Request)

	podInf := env.Informers.Core().V1().Pods()
	nsInf := env.Informers.Core().V1().Namespaces()
	polInf := env.Informers.Networking().V1().NetworkPolicies()
	nodeInf := env.Informers.Core().V1().Nodes()
	c.pods, c.namespaces, c.policies, c.nodes = podInf.Informer().GetIndexer(), nsInf.Lister(), polInf.Lister(), nodeInf.Lister()
	if env.PolicyClient != nil {
		c.cluster = &clusterSource{client: env.PolicyClient, log: c.log, changes: c.changes, request: c.runner.Request, synced: make(chan struct{})}
		c.clusterPrepared = c.cluster.prepare()
	}
	nodeChanged := podCIDRsChanged(env.NodeName)
	if err := errors.Join(
		c.changes.Watch(podInf.Informer(), podKeys),
		c.changes.Watch(polInf.Informer(), loop.Both(keyOf(true))),
		c.changes.WatchAll(nsInf.Informer(), func(loop.Change) bool { return true }),
		c.changes.WatchAll(nodeInf.Informer(), func(ch loop.Change) bool { return nodeChanged(ch) || c.cluster.nodePeersChanged(ch) }),
	); err != nil {
		return nil, fmt.Errorf("registering informer handlers: %w", err)
	}
	return c, nil
}

// podKeys names a changed pod for the change tracker. Most pod updates are kubelet
// writing statuses the cache does not keep: those arrive as equal compact pods and
// need no sync.
func podKeys(ch loop.Change) []changed {
	if o, ok := ch.Old.(*k8s.Pod); ok {
		if n, ok := ch.New.(*k8s.Pod); ok && o.Equal(n) {
			return nil
		}
	}
	return loop.Both(keyOf(false))(ch)
}

// keyOf names a pod or policy object for the change tracker.
func keyOf(policy bool) func(obj any) (changed, bool) {
	return func(obj any) (changed, bool) {
		key, err := cache.MetaNamespaceKeyFunc(obj)
		return changed{policy: policy, key: key}, err == nil
	}
}

// podCIDRsChanged reports whether a Node event changes the pod CIDRs of node, which
// the enforced ledger's rules name. They change about once in a node's life.
func podCIDRsChanged(node string) func(loop.Change) bool {
	return func(ch loop.Change) bool {
		o, ok1 := ch.Old.(*corev1.Node)
		n, ok2 := ch.New.(*corev1.Node)
		switch {
		case ok2 && n.Name != node, ok1 && !ok2 && o.Name != node:
			return false
		case !ok1 || !ok2:
			return true
		}
		return !slices.Equal(o.Spec.PodCIDRs, n.Spec.PodCIDRs) || o.Spec.PodCIDR != n.Spec.PodCIDR
	}
}

// readPodCIDRs brings c.node up to date with this node's Node object. Without one
// (not registered yet, or deleted) the node has no pod CIDRs: nothing is isolated
// until enforced, as nothing can tell a pod's address from any other.
func (c *Controller) readPodCIDRs() {
	n, err := c.nodes.Get(c.opts.NodeName)
	rv := ""
	if err == nil {
		rv = n.ResourceVersion
	}
	if c.node.read && rv == c.node.resourceVersion {
		return
	}
	var cidrs []netip.Prefix
	if err == nil {
		cidrs = k8s.ParseNodeAddresses(n, c.log).PodCIDRs
	}
	if c.opts.IsolateUntilEnforced && (!c.node.read || !slices.Equal(cidrs, c.node.podCIDRs)) {
		if len(cidrs) == 0 {
			c.log.Warn("this node has no pod CIDRs: its pods are not isolated until enforced", "node", c.opts.NodeName)
		} else {
			c.log.Info("isolating this node's pods until their policies are in force", "podCIDRs", cidrs)
		}
	}
	c.node.read, c.node.resourceVersion, c.node.podCIDRs = true, rv, cidrs
}

// Name implements daemon.Controller.
func (c *Controller) Name() string { return "netpol" }

// Run implements daemon.Controller.
func (c *Controller) Run(ctx context.Context, hb *daemon.Heartbeat) error {
	if c.cluster != nil {
		go c.cluster.run(ctx, c.clusterPrepared)
		if c.clusterPrepared {
			wait, cancel := context.WithTimeout(ctx, clusterSyncWait)
			if !c.cluster.waitSynced(wait) && ctx.Err() == nil {
				c.log.Warn("ClusterNetworkPolicies not read yet (can this node list them? see packaging/rbac.yaml): enforcing without them until they are",
					"waited", clusterSyncWait)
			}
			cancel()
		}
	}
	loop.Run(ctx, c.changes, c.runner, hb)
	return nil
}

var _ daemon.Preparer = (*Controller)(nil)

// Prepare implements daemon.Preparer: it reads each family's chains and sets back
// while the informers list, which on a restart at scale takes the longest read (a
// few hundred thousand set entries) off the first sync's path.
func (c *Controller) Prepare(context.Context) error {
	c.modelMu.Lock()
	defer c.modelMu.Unlock()
	for _, fs := range c.families {
		if err := fs.netfilter.ReadAhead(); err != nil {
			return fmt.Errorf("reading IPv%d chains and sets back: %w", fs.opts.Family, err)
		}
	}
	return nil
}

// clusterSyncWait bounds how long the first sync waits for the ClusterNetworkPolicy
// cache; one that syncs later is enforced from then on.
const clusterSyncWait = 30 * time.Second

// sync recompiles what changed and applies it. Every policy is recompiled from the
// informer caches when the tracker says so (a namespace changed), and when no sync
// has succeeded since the start or since a failure. A full sync (the first, and the
// periodic one) also reads the kernel back and rewrites what differs there. The
// periodic sync recompiles nothing: the index and the compiled policies follow every
// event, and rebuilding them every few minutes cost a node of a 150,000-pod cluster
// seconds of CPU and a peak of garbage each time, for no change.
func (c *Controller) sync(ctx context.Context, full bool) (_ string, err error) {
	c.modelMu.Lock()
	defer c.modelMu.Unlock()
	dirty, all := c.changes.Take()
	compileStart := time.Now()
	var applyTime time.Duration
	recompileAll := all || !c.compiled
	defer func() { c.compiled = err == nil }()
	if recompileAll || !onlyPods(dirty) {
		// A policy event may bring a new object (an update, or the same policy again
		// after a relist): the parses of the old one go, or they would pile up
		// until the next recompile, which now comes rarely.
		c.selectors.reset()
	}
	var changedPods []podChange
	if recompileAll {
		if err := c.rebuildIndex(); err != nil {
			return "", err
		}
	} else {
		for ch := range dirty {
			if ch.policy || ch.cluster {
				continue
			}
			key := ch.key
			ns, name, _ := cache.SplitMetaNamespaceKey(key)
			change := podChange{old: c.idx.Pod(ns, name)}
			if obj, exists, err := c.pods.GetByKey(key); err == nil && exists {
				change.new = policedPod(obj)
			}
			if change.new != nil {
				c.idx.SetPod(change.new)
			} else {
				c.idx.DeletePod(ns, name)
			}
			changedPods = append(changedPods, change)
		}
	}

	if !recompileAll && !full && onlyPods(dirty) {
		done, err := c.syncSetsOnly(changedPods)
		if err != nil || done {
			c.lastCompile = time.Since(compileStart) - c.lastApply
			c.metrics.phaseDuration.WithLabelValues("compile").Observe(c.lastCompile.Seconds())
			c.metrics.phaseDuration.WithLabelValues("apply").Observe(c.lastApply.Seconds())
			return "", err // the counts of the last full path stand
		}
	}

	policies, err := c.policies.List(labels.Everything())
	if err != nil {
		return "", fmt.Errorf("listing network policies: %w", err)
	}
	byKey := make(map[string]*networkingv1.NetworkPolicy, len(policies))
	c.crossNamespace = c.crossNamespace[:0]
	for _, p := range policies {
		byKey[p.Namespace+"/"+p.Name] = p
		if reachesOtherNamespaces(p) {
			c.crossNamespace = append(c.crossNamespace, p)
		}
	}
	clusterPolicies, err := c.cluster.list()
	if err != nil {
		return "", fmt.Errorf("listing cluster network policies: %w", err)
	}
	clusterByKey := make(map[string]*policyv1beta1.ClusterNetworkPolicy, len(clusterPolicies))
	for _, p := range clusterPolicies {
		clusterByKey[clusterKey(p.Name)] = p
	}

	c.readPodCIDRs()
	details := Details{Problems: map[string][]string{}, LastApply: map[ipfamily.Family]netfilter.Stats{}}
	for _, fs := range c.families {
		fs.asm.SetPodCIDRs(slices.DeleteFunc(slices.Clone(c.node.podCIDRs), func(p netip.Prefix) bool { return !fs.opts.Family.Has(p.Addr()) }))
		// A family no local pod has needs no policy chains or sets: on a node without
		// IPv6 pods, compiling for IPv6 made thousands of empty sets. The family's first
		// pod finds fs.compiled empty and has every policy compiled.
		active := fs.opts.hasLocalPods(c.idx)
		for key, cp := range fs.compiled {
			if (cp.Cluster && clusterByKey[key] == nil) || (!cp.Cluster && byKey[key] == nil) || !active {
				delete(fs.compiled, key)
			}
		}
		for key, p := range byKey {
			if !active {
				break
			}
			old := fs.compiled[key]
			if _, marked := dirty[changed{policy: true, key: key}]; !recompileAll && old != nil && !marked && !c.touches(p, changedPods) {
				continue
			}
			c.keep(fs, old, compilePolicy(p, c.idx, fs.opts))
		}
		for key, p := range clusterByKey {
			if !active {
				break
			}
			old := fs.compiled[key]
			if _, marked := dirty[changed{cluster: true, key: key}]; !recompileAll && old != nil && !marked && !c.touchesCluster(p, changedPods) {
				continue
			}
			c.keep(fs, old, compileCluster(p, c.idx, fs.opts))
		}
		list := make([]*compiledPolicy, 0, len(fs.compiled))
		for _, key := range sortedKeys(fs.compiled) {
			list = append(list, fs.compiled[key])
			if cp := fs.compiled[key]; len(cp.Problems) > 0 && cp.Cluster {
				details.Problems["clusternetworkpolicy/"+key] = cp.Problems
			} else if len(cp.Problems) > 0 {
				details.Problems[key] = cp.Problems
			}
		}
		desired := fs.asm.Assemble(list, c.idx)
		applyStart := time.Now()
		st, err := fs.netfilter.Apply(&desired.Ruleset, full)
		applyTime += time.Since(applyStart)
		details.LastApply[fs.opts.Family] = st
		if st.Drifted > 0 {
			c.log.Warn("repaired network policy state changed by someone else", "family", fs.opts.Family, "drifted", st.Drifted)
			c.metrics.driftRepairs.WithLabelValues(strconv.Itoa(int(fs.opts.Family))).Add(float64(st.Drifted))
		}
		if err != nil {
			// Recompile everything next time (the runner retries with a kernel re-read).
			c.changes.MarkAll()
			return "", err
		}
		c.metrics.record(fs.opts.Family, len(byKey), len(clusterByKey), desired)
		details.Policies = len(byKey)
		details.ClusterPolicies = len(clusterByKey)
		details.Pods = max(details.Pods, desired.Pods)
		details.Rules += desired.Rules
		details.Sets += len(desired.Sets)
		details.Entries += desired.SetEntriesCount()
		for _, l := range desired.Ledgers {
			details.EnforcedPods = max(details.EnforcedPods, len(l.Entries))
		}
	}
	// The same totals as the details, over both families.
	summary := fmt.Sprintf("%d policies, %d cluster policies, %d isolated pods, %d rules, %d sets",
		details.Policies, details.ClusterPolicies, details.Pods, details.Rules, details.Sets)
	c.lastCompile, c.lastApply = time.Since(compileStart)-applyTime, applyTime
	c.metrics.phaseDuration.WithLabelValues("compile").Observe(c.lastCompile.Seconds())
	c.metrics.phaseDuration.WithLabelValues("apply").Observe(c.lastApply.Seconds())
	c.detailsMu.Lock()
	c.details = details
	c.detailsMu.Unlock()
	return summary, ctx.Err()
}

// podChange is one pod before and after a change; old is nil for a new pod, new is
// nil for a deleted one.
type podChange struct{ old, new *Pod }

// onlyPods reports whether every change is a pod's.
func onlyPods(dirty map[changed]struct{}) bool {
	for ch := range dirty {
		if ch.policy || ch.cluster {
			return false
		}
	}
	return true
}

// syncSetsOnly is the sync of pod changes that move only set members, the common
// case of a pod of another node appearing, leaving or being relabelled: it
// recompiles the policies the pods touch, and when each differs from its last
// compilation in set members alone, writes those over netlink, without assembling
// the chains again or starting iptables-restore. Its cost follows the policies that
// can see the pods' namespace, not the cluster's size. done is false, with nothing
// written, when the changes need the full path: a pod of this node (its chains, the
// dispatch and the ledger), or a policy whose chains or targets change.
func (c *Controller) syncSetsOnly(changedPods []podChange) (done bool, err error) {
	namespaces := map[string]bool{}
	for _, ch := range changedPods {
		for _, p := range []*Pod{ch.old, ch.new} {
			if p == nil {
				continue
			}
			if p.NodeName == c.opts.NodeName {
				return false, nil
			}
			namespaces[p.Namespace] = true
		}
	}
	candidates := slices.Clone(c.crossNamespace)
	for ns := range namespaces {
		inNS, err := c.policies.NetworkPolicies(ns).List(labels.Everything())
		if err != nil {
			return false, fmt.Errorf("listing network policies: %w", err)
		}
		for _, p := range inNS {
			if !reachesOtherNamespaces(p) { // those are candidates already
				candidates = append(candidates, p)
			}
		}
	}
	clusterPolicies, err := c.cluster.list()
	if err != nil {
		return false, fmt.Errorf("listing cluster network policies: %w", err)
	}
	type update struct {
		old, cp *compiledPolicy
		sets    []ipset.SetEntries
	}
	updates := make([][]update, len(c.families))
	for i, fs := range c.families {
		if !fs.opts.hasLocalPods(c.idx) {
			continue // nothing compiled, and no local pod changed
		}
		// consider recompiles a policy the pods touch; false sends the sync to the
		// full path.
		consider := func(key string, touched func() bool, compile func() *compiledPolicy) bool {
			old := fs.compiled[key]
			if old != nil && len(old.Targets) == 0 {
				// It selects no pod of this node, so it has nothing in this kernel
				// (Assemble leaves it out), and another node's pod cannot give it a
				// target here. It is compiled again by the full path, which a local pod
				// it selects, a change of it or of a namespace takes. At the envelope a
				// remote pod's change met about 50 policies, 2 of them with local targets.
				return true
			}
			if !touched() {
				return true
			}
			if old == nil {
				return false
			}
			cp := compile()
			sets, ok := setsOnlyChange(old, cp)
			if ok && len(sets) > 0 {
				updates[i] = append(updates[i], update{old: old, cp: cp, sets: sets})
			}
			return ok
		}
		for _, p := range candidates {
			if !consider(p.Namespace+"/"+p.Name, func() bool { return c.touches(p, changedPods) },
				func() *compiledPolicy { return compilePolicy(p, c.idx, fs.opts) }) {
				return false, nil
			}
		}
		for _, p := range clusterPolicies {
			if !consider(clusterKey(p.Name), func() bool { return c.touchesCluster(p, changedPods) },
				func() *compiledPolicy { return compileCluster(p, c.idx, fs.opts) }) {
				return false, nil
			}
		}
	}

	c.detailsMu.Lock()
	details := c.details
	c.detailsMu.Unlock()
	details.LastApply = map[ipfamily.Family]netfilter.Stats{}
	applyStart := time.Now()
	for i, fs := range c.families {
		// Policies with the same peers share a set: each once. Sets of policies that
		// select no local pod are not in the kernel (Assemble leaves them out).
		var sets []ipset.SetEntries
		seen := map[string]bool{}
		for _, u := range updates[i] {
			for _, s := range u.sets {
				if !seen[s.Name] && fs.asm.holds(s.Name) {
					seen[s.Name] = true
					sets = append(sets, s)
				}
			}
		}
		before := fs.asm.setEntries(sets)
		st, err := fs.netfilter.ApplySets(sets)
		details.LastApply[fs.opts.Family] = st
		if err != nil {
			c.changes.MarkAll()
			return true, err
		}
		for _, u := range updates[i] {
			fs.asm.ReplaceSets(u.cp)
			c.keep(fs, u.old, u.cp)
		}
		delta := fs.asm.setEntries(sets) - before
		details.Entries += delta
		c.metrics.entries.WithLabelValues(fs.opts.familyTag()).Add(float64(delta))
	}
	c.lastApply = time.Since(applyStart)
	c.detailsMu.Lock()
	c.details = details
	c.detailsMu.Unlock()
	return true, nil
}

// setsOnlyChange returns the sets of cp whose members differ from old's, if cp differs
// from old in nothing else (ok).
func setsOnlyChange(old, cp *compiledPolicy) (sets []ipset.SetEntries, ok bool) {
	if old.Ingress != cp.Ingress || old.Egress != cp.Egress || !slices.Equal(old.Targets, cp.Targets) ||
		!slices.Equal(old.Problems, cp.Problems) || !maps.Equal(old.SetMeaning, cp.SetMeaning) ||
		len(old.Chains) != len(cp.Chains) || len(old.Sets) != len(cp.Sets) {
		return nil, false
	}
	for i, ch := range cp.Chains {
		if o := old.Chains[i]; o.Table != ch.Table || o.Name != ch.Name || !slices.Equal(o.Rules, ch.Rules) {
			return nil, false
		}
	}
	for i, s := range cp.Sets {
		if old.Sets[i].Set != s.Set {
			return nil, false
		}
		if !slices.Equal(old.Sets[i].Entries, s.Entries) {
			sets = append(sets, s)
		}
	}
	return sets, true
}

// keep stores a policy's compilation, logging its problems when they changed.
func (c *Controller) keep(fs *familyState, old, cp *compiledPolicy) {
	if old == nil || !slices.Equal(old.Problems, cp.Problems) {
		kind, msg := "policy", "network policy partly not enforceable"
		if cp.Cluster {
			kind, msg = "clusterNetworkPolicy", "cluster network policy partly not enforceable"
		}
		for _, problem := range cp.Problems {
			c.log.Warn(msg, kind, cp.Key, "family", fs.opts.Family, "problem", problem)
		}
	}
	fs.compiled[cp.Key] = cp
}

// touchesCluster reports whether any changed pod may affect ClusterNetworkPolicy p.
func (c *Controller) touchesCluster(p *policyv1beta1.ClusterNetworkPolicy, changed []podChange) bool {
	for _, ch := range changed {
		pod := ch.new
		if pod == nil {
			pod = ch.old
		}
		if pod != nil && affectsCluster(p, ch.old, ch.new, c.idx.Namespaces[pod.Namespace], c.selectors.parse) {
			return true
		}
	}
	return false
}

// touches reports whether any changed pod may affect policy p.
func (c *Controller) touches(p *networkingv1.NetworkPolicy, changed []podChange) bool {
	for _, ch := range changed {
		pod := ch.new
		if pod == nil {
			pod = ch.old
		}
		if pod != nil && affects(p, ch.old, ch.new, c.idx.Namespaces[pod.Namespace], c.selectors.parse) {
			return true
		}
	}
	return false
}

// rebuildIndex reloads every pod and namespace from the informer caches.
func (c *Controller) rebuildIndex() error {
	idx := newIndex(c.opts.NodeName)
	nss, err := c.namespaces.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("listing namespaces: %w", err)
	}
	for _, ns := range nss {
		n, err := namespaceFromAPI(ns)
		if err != nil && c.opts.BetaNamespaceIsolation {
			c.log.Warn("ignoring malformed namespace annotation", "namespace", ns.Name, "annotation", betaIsolationAnnotation, "err", err)
		}
		idx.Namespaces[ns.Name] = n
	}
	for _, p := range c.pods.List() {
		if pod := policedPod(p); pod != nil {
			idx.SetPod(pod)
		}
	}
	if c.cluster != nil {
		nodes, err := c.nodes.List(labels.Everything())
		if err != nil {
			return fmt.Errorf("listing nodes: %w", err)
		}
		for _, n := range nodes {
			idx.Nodes[n.Name] = nodeFromAPI(n)
		}
	}
	c.idx = idx
	return nil
}
