package netpol

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// assemble combines compiled policies with the local pods into the full desired
// state: per-pod chains, the top chain, and every policy's chains and sets.
func assemble(policies []*compiledPolicy, idx *index, o options) *Desired {
	return newAssembler(o).Assemble(policies, idx)
}

// repliesRule opens the top chain: replies to connections policy allowed pass, and
// so do the ICMP and ICMPv6 errors about them (Packet Too Big, Port Unreachable),
// which conntrack marks RELATED. Errors about no allowed connection stay under
// policy, as in Calico and OVN.
const repliesRule = `-m comment --comment "kube-routerd: replies to allowed connections" -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN`

// neighbourDiscoveryRules follow repliesRule in the IPv6 top chain. Neighbour
// discovery is IPv6's ARP: pods on one bridge resolve each other with solicitations
// (135) and advertisements (136) that bridge netfilter sends through FORWARD and
// conntrack ties to no connection, so without these rules an isolated pod could not
// resolve its allowed peers. Cilium, OVN and kube-router exempt them from policy
// too. Only hop limit 255 passes, which is all a receiver accepts (RFC 4861), so
// nothing routed rides on the exemption. Router solicitations and advertisements
// stay under policy: a pod's router is the node, whose exchanges with its pods never
// reach these chains, and an advertisement from another pod is a rogue router.
var neighbourDiscoveryRules = []string{
	`-p ipv6-icmp -m comment --comment "kube-routerd: neighbour solicitation" -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j RETURN`,
	`-p ipv6-icmp -m comment --comment "kube-routerd: neighbour advertisement" -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j RETURN`,
}

// topChainHead is the start of the top chain, before the dispatch to pod chains.
func (o options) topChainHead() []string {
	head := []string{repliesRule}
	if o.Family == ipfamily.IPv6 {
		head = append(head, neighbourDiscoveryRules...)
	}
	return append(head, o.notEnforcedRules()...)
}

// The enforced ledger closes the window between a pod getting its address from the
// CNI plugin and its chains reaching the kernel, in which nothing would police it.
// The kernel cannot tell which policies select a pod whose labels it has never seen,
// so until the controller has seen a pod, the pod is isolated: the ledger lists every
// local pod the controller knows (policed or not), and the top chain drops new
// connections from and to the node's pod CIDRs by any address not in it. The writer
// adds an address only after the write that brings in its pod's chains and dispatch
// rules, and removes it before the write that takes them away
// (netfilter.Ruleset.Ledgers): an address in the ledger always has its policies in
// force, from a new pod's first packet on. The ledger and the rules stay in the
// kernel while the daemon restarts, so pods already enforced keep their traffic and
// pods that start meanwhile stay isolated until it is back.
//
// The rules come after repliesRule (replies of allowed connections pass) and the
// neighbour discovery exemption. The node's own addresses in the pod CIDRs (the
// bridge gateway) are no pods; the node's own connections to its pods never enter the
// top chain (outputJumpRule), so kubelet probes reach a pod not enforced yet.

// enforcedLedger returns the ledger of the local pods whose state is in the kernel,
// over their addresses (sorted, canonical).
func (o options) enforcedLedger(addrs []string) ipset.SetEntries {
	return ipset.SetEntries{Set: ipset.Set{Name: enforcedSet + o.familyTag(), Type: ipset.HashIP, Family: o.Family}, Entries: addrs}
}

// isolating says whether pods are isolated until enforced: asked to, and with pod
// CIDRs of the family to tell pods by (without, there is no ledger either).
func (o options) isolating() bool { return o.IsolateUntilEnforced && len(o.PodCIDRs) > 0 }

// notEnforcedRules drop new traffic from and to pods not in the enforced ledger.
func (o options) notEnforcedRules() []string {
	if !o.isolating() {
		return nil
	}
	ledger := enforcedSet + o.familyTag()
	var rules []string
	for _, cidr := range o.PodCIDRs {
		rules = append(rules,
			fmt.Sprintf(`-s %s -m comment --comment "kube-routerd: from a pod not enforced yet" -m addrtype ! --src-type LOCAL -m set ! --match-set %s src -j DROP`, cidr, ledger),
			fmt.Sprintf(`-d %s -m comment --comment "kube-routerd: to a pod not enforced yet" -m addrtype ! --dst-type LOCAL -m set ! --match-set %s dst -j DROP`, cidr, ledger))
	}
	return rules
}

// assembler is assemble with a memory of its last result, for the controller's
// syncs. It keeps which policies select each local pod up to date from the policies
// that changed, rebuilds only the chains of pods whose inputs (address, selecting
// policies, beta isolation) changed, and the top chain only when a pod's dispatch
// changed. Unchanged chains and sets are the very slices applied last time, which
// the reconciler skips cheaply.
type assembler struct {
	o        options
	policies map[string]*compiledPolicy // by key, as last assembled
	// ingressOf and egressOf are the chains of the policies selecting each local pod,
	// sorted; clusterIngressOf and clusterEgressOf the orderKeys of the
	// ClusterNetworkPolicies whose subject it is. A list is replaced when it changes,
	// never modified in place.
	ingressOf, egressOf               map[podRef][]string
	clusterIngressOf, clusterEgressOf map[podRef][]string
	pods                              map[podRef]*assembledPod
	gen                               uint64 // stamps the pods seen by the current Assemble
	order                             []*assembledPod
	// enforced are the addresses of the enforced ledger, as last assembled.
	enforced []string
	// headChanged: the pod CIDRs changed since the last Assemble.
	headChanged bool
	last        *Desired
	// setAt is the index of each set in last.Sets.
	setAt map[string]int
}

// assembledPod is one local pod's chains and dispatch rules with the inputs they
// were built from.
type assembledPod struct {
	ip netip.Addr
	podPolicies
	chains          []netfilter.Chain
	dispatchIngress string // top chain rule sending traffic to the pod to its ingress chain
	dispatchEgress  string
	gen             uint64
}

// newAssembler returns an assembler that remembers nothing yet.
func newAssembler(o options) *assembler {
	return &assembler{o: o, policies: map[string]*compiledPolicy{},
		ingressOf: map[podRef][]string{}, egressOf: map[podRef][]string{},
		clusterIngressOf: map[podRef][]string{}, clusterEgressOf: map[podRef][]string{}, pods: map[podRef]*assembledPod{}}
}

// SetPodCIDRs sets the node's pod networks of the assembler's family.
func (a *assembler) SetPodCIDRs(cidrs []netip.Prefix) {
	if !slices.Equal(a.o.PodCIDRs, cidrs) {
		a.o.PodCIDRs = slices.Clone(cidrs)
		a.headChanged = true
	}
}

// Assemble returns the desired state for policies over idx, like the function
// assemble. The result shares slices with later results and must not be modified.
func (a *assembler) Assemble(policies []*compiledPolicy, idx *index) *Desired {
	o := a.o
	policiesChanged := a.trackPolicies(policies)
	a.gen++
	a.order = a.order[:0]
	// podsChanged: a pod's chains changed; dispatchChanged: a top chain rule did too.
	podsChanged, dispatchChanged := false, a.headChanged
	a.headChanged = false
	var enforced []string
	if o.isolating() {
		enforced = make([]string, 0, len(a.enforced))
	}
	for _, pod := range idx.podsOnNode(o.NodeName) {
		if pod == nil || !o.isLocalTarget(pod) {
			continue
		}
		if o.isolating() {
			ip, _ := o.podIPText(pod)
			enforced = append(enforced, ip)
		}
		ref := podRef{pod.Namespace, pod.Name}
		ns := idx.Namespaces[pod.Namespace]
		beta := o.BetaNamespaceIsolation && ns != nil && ns.BetaIngressIsolation
		pp := podPolicies{ingress: a.ingressOf[ref], egress: a.egressOf[ref], beta: beta,
			clusterIngress: a.clusterIngressOf[ref], clusterEgress: a.clusterEgressOf[ref]}
		if !pp.any() {
			continue
		}
		ip, _ := o.podIP(pod)
		ap := a.pods[ref]
		if ap == nil || ap.ip != ip || !ap.podPolicies.equal(pp) {
			rebuilt := assemblePod(pod.Key(), ip, pp, o)
			dispatchChanged = dispatchChanged || ap == nil ||
				ap.dispatchIngress != rebuilt.dispatchIngress || ap.dispatchEgress != rebuilt.dispatchEgress
			ap = rebuilt
			a.pods[ref] = ap
			podsChanged = true
		}
		ap.gen = a.gen
		a.order = append(a.order, ap)
	}
	if len(a.order) < len(a.pods) {
		for ref, ap := range a.pods {
			if ap.gen != a.gen {
				delete(a.pods, ref)
			}
		}
		podsChanged, dispatchChanged = true, true
	}
	// Two pods may share an address for a moment (one terminating): one entry.
	slices.Sort(enforced)
	enforced = slices.Compact(enforced)
	ledgerChanged := !slices.Equal(enforced, a.enforced)
	if ledgerChanged {
		a.enforced = enforced
	}
	if !podsChanged && !policiesChanged && !ledgerChanged && !dispatchChanged && a.last != nil {
		return a.last
	}

	d := &Desired{Pods: len(a.order)}
	d.Jumps = o.hookJumps()
	if o.isolating() {
		d.Ledgers = []ipset.SetEntries{o.enforcedLedger(a.enforced)}
	}
	if a.last != nil {
		d.Chains = make([]netfilter.Chain, 0, len(a.last.Chains)+2)
		d.Sets = make([]ipset.SetEntries, 0, len(a.last.Sets))
	}
	top := netfilter.Chain{Table: iptables.TableFilter, Name: topChain, Rules: o.topChainHead()}
	if !dispatchChanged && a.last != nil {
		top = a.last.Chains[len(a.last.Chains)-1]
	} else {
		for _, ap := range a.order {
			if ap.dispatchEgress != "" {
				top.Rules = append(top.Rules, ap.dispatchEgress)
			}
		}
		for _, ap := range a.order {
			if ap.dispatchIngress != "" {
				top.Rules = append(top.Rules, ap.dispatchIngress)
			}
		}
	}
	for _, ap := range a.order {
		d.Chains = append(d.Chains, ap.chains...)
	}
	// Policies with the same peers share their sets: each set once. A policy that
	// selects no pod of this node has its chains and sets left out: no rule could
	// jump to them, and at the scalability envelope they were most of the ruleset
	// (1,000 policies, of which a node's 30 pods meet a few dozen).
	sets := make(map[string]bool, cap(d.Sets))
	for _, c := range policies {
		if len(c.Targets) == 0 {
			continue
		}
		d.Chains = append(d.Chains, c.Chains...)
		for _, s := range c.Sets {
			if !sets[s.Name] {
				sets[s.Name] = true
				d.Sets = append(d.Sets, s)
			}
		}
	}
	d.Chains = append(d.Chains, top)
	for _, c := range d.Chains {
		d.Rules += len(c.Rules)
	}
	a.last = d
	a.setAt = make(map[string]int, len(d.Sets))
	for i, s := range d.Sets {
		a.setAt[s.Name] = i
	}
	return d
}

// holds reports whether the last result has the named set.
func (a *assembler) holds(set string) bool {
	_, ok := a.setAt[set]
	return ok && a.last != nil
}

// setEntries counts the entries the last result holds in the named sets.
func (a *assembler) setEntries(sets []ipset.SetEntries) int {
	n := 0
	for _, s := range sets {
		if i, ok := a.setAt[s.Name]; ok && a.last != nil {
			n += len(a.last.Sets[i].Entries)
		}
	}
	return n
}

// ReplaceSets records cp, a new compilation of a policy the last Assemble had that
// differs from it only in the members of its sets (setsOnlyChange), without
// assembling again: the last result holds cp's sets from now on.
func (a *assembler) ReplaceSets(cp *compiledPolicy) {
	a.policies[cp.Key] = cp
	if a.last == nil {
		return
	}
	for _, s := range cp.Sets {
		if i, ok := a.setAt[s.Name]; ok {
			a.last.Sets[i] = s
		}
	}
}

// trackPolicies brings ingressOf and egressOf up to date with the policies that were
// added, replaced or removed since the last call, and reports whether any were.
func (a *assembler) trackPolicies(policies []*compiledPolicy) bool {
	changed := false
	known, stillThere := len(a.policies), 0
	for _, c := range policies {
		old, ok := a.policies[c.Key]
		if ok {
			stillThere++
		}
		if old == c {
			continue
		}
		changed = true
		if ok {
			a.setTargets(old, false)
		}
		a.setTargets(c, true)
		a.policies[c.Key] = c
	}
	if stillThere < known {
		current := make(map[string]bool, len(policies))
		for _, c := range policies {
			current[c.Key] = true
		}
		for key, old := range a.policies {
			if !current[key] {
				a.setTargets(old, false)
				delete(a.policies, key)
			}
		}
		changed = true
	}
	return changed
}

// select_ adds (or removes) policy c's chains to (from) the lists of its targets.
func (a *assembler) setTargets(c *compiledPolicy, add bool) {
	for _, t := range c.Targets {
		ns, name, _ := strings.Cut(t, "/")
		ref := podRef{ns, name}
		if c.Cluster {
			if c.Ingress {
				a.clusterIngressOf[ref] = withChain(a.clusterIngressOf[ref], orderKey(c, c.Chains[0].Name), add)
			}
			if c.Egress {
				a.clusterEgressOf[ref] = withChain(a.clusterEgressOf[ref], orderKey(c, c.Chains[len(c.Chains)-1].Name), add)
			}
			continue
		}
		if c.Ingress {
			a.ingressOf[ref] = withChain(a.ingressOf[ref], c.Chains[0].Name, add)
		}
		if c.Egress {
			a.egressOf[ref] = withChain(a.egressOf[ref], c.Chains[len(c.Chains)-1].Name, add)
		}
	}
}

// withChain returns a new sorted list: list with chain added or removed.
func withChain(list []string, chain string, add bool) []string {
	i, found := slices.BinarySearch(list, chain)
	switch {
	case add && !found:
		return slices.Insert(slices.Clone(list), i, chain)
	case !add && found:
		if len(list) == 1 {
			return nil
		}
		return slices.Delete(slices.Clone(list), i, i+1)
	}
	return list
}

// podPolicies are what a local pod's chains are built from: the chains of the
// NetworkPolicies isolating it, the namespace's beta isolation, and the orderKeys of
// the ClusterNetworkPolicies whose subject it is, by direction.
type podPolicies struct {
	ingress, egress               []string
	beta                          bool
	clusterIngress, clusterEgress []string
}

// any says whether the pod needs chains at all.
func (pp podPolicies) any() bool {
	return len(pp.ingress) > 0 || pp.beta || len(pp.egress) > 0 || len(pp.clusterIngress) > 0 || len(pp.clusterEgress) > 0
}

func (pp podPolicies) equal(other podPolicies) bool {
	return pp.beta == other.beta && slices.Equal(pp.ingress, other.ingress) && slices.Equal(pp.egress, other.egress) &&
		slices.Equal(pp.clusterIngress, other.clusterIngress) && slices.Equal(pp.clusterEgress, other.clusterEgress)
}

// assemblePod builds a local pod's chains and the top chain rules dispatching to them.
func assemblePod(key string, ip netip.Addr, pp podPolicies, o options) *assembledPod {
	ap := &assembledPod{ip: ip, podPolicies: pp}
	if len(pp.ingress) > 0 || pp.beta || len(pp.clusterIngress) > 0 {
		chain := podChain(podIngressKind, key, pp.ingress, pp.clusterIngress, len(pp.ingress) > 0 || pp.beta, o)
		ap.chains = append(ap.chains, chain)
		ap.dispatchIngress = fmt.Sprintf(`-d %s -m comment --comment "ingress to %s" -j %s`, hostPrefix(ip), key, chain.Name)
	}
	if len(pp.egress) > 0 || len(pp.clusterEgress) > 0 {
		chain := podChain(podEgressKind, key, pp.egress, pp.clusterEgress, len(pp.egress) > 0, o)
		ap.chains = append(ap.chains, chain)
		ap.dispatchEgress = fmt.Sprintf(`-s %s -m comment --comment "egress from %s" -j %s`, hostPrefix(ip), key, chain.Name)
	}
	return ap
}

// podChain is a pod's ingress or egress chain: the Admin tier's decision, then the
// union of its NetworkPolicies' allows when they isolate it (isolated), else the
// Baseline tier's decision (see desired_cnp.go). cluster are orderKeys, in order.
func podChain(kind, podKey string, policyChains, cluster []string, isolated bool, o options) netfilter.Chain {
	dir := "ingress"
	if kind == podEgressKind {
		dir = "egress"
	}
	c := netfilter.Chain{Table: iptables.TableFilter, Name: name(kind, podKey, o.familyTag())}
	if kind == podIngressKind {
		// The node itself (kubelet probes) always reaches its pods.
		c.Rules = append(c.Rules, `-m comment --comment "node to its own pods" -m addrtype --src-type LOCAL -j RETURN`)
	}
	var admin, baseline []string
	for _, key := range cluster {
		chain, isAdmin := orderedChain(key)
		if isAdmin {
			admin = append(admin, chain)
		} else {
			baseline = append(baseline, chain)
		}
	}
	mark := fmt.Sprintf("0x%x/0x%x", o.MarkBit, o.MarkBit)
	decided := func(code uint32) string {
		return fmt.Sprintf("-m mark --mark 0x%x/0x%x", o.decisionMark(code), o.decisionMask())
	}
	drop := func(match, what string) []string {
		var rules []string
		if o.LogDrops {
			rules = append(rules, fmt.Sprintf(`%s -m limit --limit %d/min --limit-burst %d -j NFLOG --nflog-prefix "%s" --nflog-group %d`,
				match, o.LogRatePerMinute, o.LogRatePerMinute, truncate("DROP "+dir+" "+podKey, 63), o.NFLOGGroup))
		}
		return append(rules, fmt.Sprintf(`-m comment --comment "%s" %s -j DROP`, truncate(dir+" "+podKey+" "+what, commentMaxBytes), match))
	}
	for _, chain := range admin {
		c.Rules = append(c.Rules, "-j "+chain)
	}
	if len(admin) > 0 {
		c.Rules = append(c.Rules, drop(decided(decisionDeny), adminDenied)...)
		c.Rules = append(c.Rules,
			fmt.Sprintf(`-m comment --comment "%s" %s -j MARK --set-xmark 0x%x/0x%x`, truncate(dir+" "+podKey+" accepted by the Admin tier", commentMaxBytes),
				decided(decisionAccept), o.MarkBit, o.MarkBit|o.decisionMask()),
			fmt.Sprintf(`%s -j MARK --set-xmark 0x0/0x%x`, decided(decisionPass), o.decisionMask()))
	}
	if isolated {
		for _, pc := range slices.Sorted(slices.Values(policyChains)) {
			c.Rules = append(c.Rules, "-j "+pc)
		}
		c.Rules = append(c.Rules, drop("-m mark ! --mark "+mark, "not allowed by policy")...)
		c.Rules = append(c.Rules, fmt.Sprintf("-j MARK --set-xmark 0x0/0x%x", o.MarkBit))
		return c
	}
	for _, chain := range baseline {
		c.Rules = append(c.Rules, "-j "+chain)
	}
	if len(baseline) > 0 {
		c.Rules = append(c.Rules, drop(decided(decisionDeny), baselineDenied)...)
	}
	c.Rules = append(c.Rules, fmt.Sprintf("-j MARK --set-xmark 0x0/0x%x", o.MarkBit|o.decisionMask()))
	return c
}

// What the drops after each tier say in their comments; explain reads them back.
const (
	adminDenied    = "denied by the Admin tier"
	baselineDenied = "denied by the Baseline tier"
)

func hostPrefix(ip netip.Addr) string { return netip.PrefixFrom(ip, ip.BitLen()).String() }
