package netpol

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
)

// policyTypes applies the API's defaulting when spec.policyTypes is empty: Ingress
// always, Egress when the policy has egress rules.
func policyTypes(p *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(p.Spec.PolicyTypes) == 0 {
		return true, len(p.Spec.Egress) > 0
	}
	for _, t := range p.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

// compilePolicy compiles one policy against the index.
func compilePolicy(p *networkingv1.NetworkPolicy, idx *index, o options) *compiledPolicy {
	key := p.Namespace + "/" + p.Name
	c := &compiledPolicy{Key: key, SetMeaning: map[string]string{}}
	c.Ingress, c.Egress = policyTypes(p)
	targetSel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
	if err != nil {
		c.Problems = append(c.Problems, fmt.Sprintf("podSelector: %v (policy selects no pods)", err))
		return c
	}
	var targets []*Pod
	for _, pod := range sortedPods(idx.Pods[p.Namespace]) {
		if o.isLocalTarget(pod) && targetSel.Matches(labels.Set(pod.Labels)) {
			targets = append(targets, pod)
			c.Targets = append(c.Targets, pod.Key())
		}
	}
	b := &policyBuilder{policy: key, idx: idx, o: o, namespace: p.Namespace, out: c, targets: targets}
	if c.Ingress {
		chain := netfilter.Chain{Table: iptables.TableFilter, Name: name(polIngressKind, key, o.familyTag())}
		for i, rule := range p.Spec.Ingress {
			chain.Rules = append(chain.Rules, b.rule("ingress", i, rule.From, rule.Ports)...)
		}
		c.Chains = append(c.Chains, chain)
	}
	if c.Egress {
		chain := netfilter.Chain{Table: iptables.TableFilter, Name: name(polEgressKind, key, o.familyTag())}
		for i, rule := range p.Spec.Egress {
			chain.Rules = append(chain.Rules, b.rule("egress", i, rule.To, rule.Ports)...)
		}
		c.Chains = append(c.Chains, chain)
	}
	sort.Slice(c.Sets, func(i, j int) bool { return c.Sets[i].Name < c.Sets[j].Name })
	return c
}

type policyBuilder struct {
	policy    string
	namespace string
	idx       *index
	o         options
	out       *compiledPolicy
	targets   []*Pod
}

func (b *policyBuilder) problem(format string, args ...any) {
	b.out.Problems = append(b.out.Problems, fmt.Sprintf(format, args...))
}

// addSet adds a set of this policy's, named after the policy and parts.
func (b *policyBuilder) addSet(kind string, t ipset.Type, entries map[string]struct{}, parts ...string) string {
	return b.addNamedSet(name(kind, append([]string{b.policy, b.o.familyTag()}, parts...)...), t, entries)
}

// addSharedSet adds a set named after what decides its members (key), so that every
// policy with the same peers uses one set: in a cluster where many policies admit the
// same namespaces, sets per policy held the same thousands of addresses many times
// over. Policies sharing a set are recompiled together, since a change that moves its
// members touches each of them.
func (b *policyBuilder) addSharedSet(kind string, t ipset.Type, entries map[string]struct{}, key string) string {
	return b.addNamedSet(name(kind, "shared", b.o.familyTag(), key), t, entries)
}

// sharedPeerSet adds the shared set of the pods peer selects (key names them) and
// returns its name. A policy compiled since the last change to those pods built the
// same entries: their one copy is used, never changed, and the pods are not looked
// up again.
func (b *policyBuilder) sharedPeerSet(key string, peer parsedPeer) string {
	set := name(peerSetKind, "shared", b.o.familyTag(), key)
	if memo, ok := b.idx.peerSets[set]; ok {
		b.out.Sets = append(b.out.Sets, memo.set)
		return set
	}
	entries := map[string]struct{}{}
	for _, p := range b.selectedPods(peer) {
		if ip, ok := b.o.podIPText(p); ok {
			entries[ip] = struct{}{}
		}
	}
	b.addSharedSet(peerSetKind, ipset.HashIP, entries, key)
	if b.idx.peerSets == nil {
		b.idx.peerSets = map[string]*memoSet{}
	}
	b.idx.peerSets[set] = &memoSet{set: b.out.Sets[len(b.out.Sets)-1], peer: peer}
	return set
}

func (b *policyBuilder) addNamedSet(setName string, t ipset.Type, entries map[string]struct{}) string {
	list := make([]string, 0, len(entries))
	for e := range entries {
		list = append(list, e)
	}
	sort.Strings(list)
	b.out.Sets = append(b.out.Sets, ipset.SetEntries{
		Set:     ipset.Set{Name: setName, Type: t, Family: b.o.Family},
		Entries: list,
	})
	return setName
}

// rule compiles one ingress or egress rule into iptables rules that set the allow
// mark. dir is "ingress" or "egress"; peers are From or To.
func (b *policyBuilder) rule(dir string, i int, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) []string {
	ruleID := dir + "/" + strconv.Itoa(i)
	peerSide, portSide := "src", "dst"
	addrFlag := "-s"
	if dir == "egress" {
		peerSide, addrFlag = "dst", "-d"
	}
	// Peer pods (selector peers), ipBlocks, or "anyone" when the rule lists no peers.
	var blocks []ipBlockPeer
	// One set per selector peer, not one for the rule's union: a peer such as "the
	// namespaces of team X" recurs across many policies whose other peers differ,
	// and its one set serves them all. Unions would repeat its members in every
	// policy's set (at half the scalability envelope, 1.9 million entries where the
	// distinct peers hold about 100,000). A peer's pods are looked up only when its
	// set is not memoised: with every policy walking the cluster's pods, a full sync
	// grew with policies times pods.
	selectorPeers := map[string]parsedPeer{} // by what selects the pods
	for j, peer := range peers {
		peerID := ruleID + "/peer/" + strconv.Itoa(j)
		if peer.IPBlock != nil {
			if blk, ok := b.ipBlock(peer.IPBlock, peerID, peerSide, addrFlag); ok {
				blocks = append(blocks, blk)
			}
			continue
		}
		key, parsed, err := parsePeer(peer, b.namespace)
		if err != nil {
			b.problem("%s rule %d peer %d: %v (matches nothing)", dir, i, j, err)
			continue
		}
		selectorPeers[key] = parsed
	}
	anyPeer := len(peers) == 0
	keys := slices.Sorted(maps.Keys(selectorPeers))
	peerPods := b.peersPods(keys, selectorPeers)

	var peerMatches []string
	if anyPeer {
		peerMatches = []string{""}
	}
	for _, key := range keys {
		set := b.sharedPeerSet(key, selectorPeers[key])
		b.out.SetMeaning[set] = peerWords(key)
		peerMatches = append(peerMatches, "-m set --match-set "+set+" "+peerSide)
	}
	for _, blk := range blocks {
		peerMatches = append(peerMatches, blk.match)
	}

	var portMatches []string
	if len(ports) == 0 {
		portMatches = []string{""}
	}
	namedPortHolders := sync.OnceValues(func() ([]*Pod, string) { return b.namedPortHolders(dir, anyPeer, peerPods, blocks) })
	for j, port := range ports {
		proto := corev1.ProtocolTCP
		if port.Protocol != nil {
			proto = *port.Protocol
		}
		protoName := strings.ToLower(string(proto))
		switch proto {
		case corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
		default:
			b.problem("%s rule %d port %d: unsupported protocol %q (matches nothing)", dir, i, j, proto)
			continue
		}
		switch {
		case port.Port == nil:
			portMatches = append(portMatches, "-p "+protoName)
		case port.Port.Type == 0: // numeric
			dport := strconv.Itoa(int(port.Port.IntVal))
			if port.EndPort != nil {
				if *port.EndPort < port.Port.IntVal {
					b.problem("%s rule %d port %d: endPort %d below port %d (matches nothing)", dir, i, j, *port.EndPort, port.Port.IntVal)
					continue
				}
				dport += ":" + strconv.Itoa(int(*port.EndPort))
			}
			portMatches = append(portMatches, fmt.Sprintf("-p %s -m %s --dport %s", protoName, protoName, dport))
		default:
			holders, what := namedPortHolders()
			set := b.namedPortSet(dir, i, j, proto, port.Port.StrVal, holders, what)
			portMatches = append(portMatches, "-m set --match-set "+set+" "+portSide+","+portSide)
		}
	}

	comment := fmt.Sprintf(`-m comment --comment "%s"`, truncate(b.policy+" "+ruleID, commentMaxBytes))
	mark := fmt.Sprintf("-j MARK --set-xmark 0x%x/0x%x", b.o.MarkBit, b.o.MarkBit)
	var out []string
	for _, pm := range portMatches {
		for _, peer := range peerMatches {
			out = append(out, saveOrder(joinNonEmpty(comment, peer, pm, mark)))
		}
	}
	return out
}

// namedPortHolders returns the pods a rule's named ports resolve on, those the
// traffic goes to, and what they are for reports ("" when finding none is no
// problem). For ingress they are the policy's targets on this node; a node without
// targets has nothing to enforce. For egress they are every pod when the rule has no
// peers, else the selected peer pods and the pods inside the rule's ipBlocks: a named
// port is a port of a pod, so an address that is no pod has none. Each row of the
// rule also matches its own peer, so one set serves all of the rule's peers.
// peerPods is called only for egress: listing the peers of every policy's ingress
// rule, whose named ports resolve on its targets, walked the cluster's pods once
// per policy.
func (b *policyBuilder) namedPortHolders(dir string, anyPeer bool, peerPods func() []*Pod, blocks []ipBlockPeer) ([]*Pod, string) {
	switch {
	case dir == "ingress" && len(b.targets) == 0:
		return nil, ""
	case dir == "ingress":
		return b.targets, "target on this node"
	case anyPeer:
		return b.allPods(), "pod"
	case len(blocks) == 0:
		return peerPods(), "peer pod"
	}
	holders := slices.Clone(peerPods())
	for _, p := range b.allPods() {
		ip, _ := b.o.podIP(p)
		if slices.ContainsFunc(blocks, func(blk ipBlockPeer) bool { return blk.contains(ip) }) {
			holders = append(holders, p)
		}
	}
	return uniquePods(holders), "peer pod"
}

// namedPortSet adds the hash:ip,port set of the holders' ports called name on proto
// (any protocol when proto is empty, as a ClusterNetworkPolicy's destinationNamedPort
// means), for port j of rule i, and returns the set's name. what names the holders
// for the problem of a set that stays empty; empty: no such problem.
func (b *policyBuilder) namedPortSet(dir string, i, j int, proto corev1.Protocol, name string, holders []*Pod, what string) string {
	entries := map[string]struct{}{}
	for _, p := range holders {
		ip, ok := b.o.podIP(p)
		if !ok {
			continue
		}
		for _, np := range p.Ports() {
			if np.Name == name && (proto == "" || np.Protocol == proto) {
				entries[fmt.Sprintf("%s,%s:%d", ip, strings.ToLower(string(np.Protocol)), np.Port)] = struct{}{}
			}
		}
	}
	if len(entries) == 0 && what != "" {
		b.problem("%s rule %d port %d: no %s exposes named port %s/%s (matches nothing yet)", dir, i, j, what, proto, name)
	}
	set := b.addSet(namedPortKind, ipset.HashIPPort, entries, dir+"/"+strconv.Itoa(i), "port", strconv.Itoa(j))
	meaning := "named port " + name
	if proto != "" {
		meaning = "named port " + string(proto) + "/" + name
	}
	b.out.SetMeaning[set] = meaning
	return set
}

// ipBlockPeer is an ipBlock peer compiled for one family.
type ipBlockPeer struct {
	match  string // iptables match: in cidr and in none of the excepts
	cidr   netip.Prefix
	except []netip.Prefix
}

// contains reports whether addr is in the block and outside its excepts.
func (blk ipBlockPeer) contains(addr netip.Addr) bool {
	return blk.cidr.Contains(addr) && !slices.ContainsFunc(blk.except, func(e netip.Prefix) bool { return e.Contains(addr) })
}

// ipBlock compiles one ipBlock peer, or returns false if it does not apply to this
// family or cannot be compiled.
func (b *policyBuilder) ipBlock(block *networkingv1.IPBlock, peerID, side, addrFlag string) (ipBlockPeer, bool) {
	cidr, err := netip.ParsePrefix(block.CIDR)
	if err != nil {
		b.problem("%s: ipBlock cidr %q: %v (matches nothing)", peerID, block.CIDR, err)
		return ipBlockPeer{}, false
	}
	if !b.o.Family.Has(cidr.Addr()) {
		return ipBlockPeer{}, false
	}
	blk := ipBlockPeer{match: addrFlag + " " + cidr.Masked().String(), cidr: cidr.Masked()}
	if len(block.Except) == 0 {
		return blk, true
	}
	entries := map[string]struct{}{}
	for _, e := range block.Except {
		p, err := netip.ParsePrefix(e)
		if err != nil {
			// Leaving out an except would widen the peer, so drop the whole peer.
			b.problem("%s: ipBlock except %q: %v (peer matches nothing)", peerID, e, err)
			return ipBlockPeer{}, false
		}
		if p.Addr().Is4() == cidr.Addr().Is4() {
			entries[p.Masked().String()] = struct{}{}
			blk.except = append(blk.except, p.Masked())
		}
	}
	excepts := make([]string, 0, len(entries))
	for e := range entries {
		excepts = append(excepts, e)
	}
	slices.Sort(excepts)
	set := b.addSharedSet(exceptSetKind, ipset.HashNet, entries, strings.Join(excepts, ","))
	b.out.SetMeaning[set] = "except " + strings.Join(excepts, ", ")
	blk.match += " -m set ! --match-set " + set + " " + side
	return blk, true
}

// parsePeer parses a podSelector/namespaceSelector peer of a policy in namespace
// and returns a key that is the same for every peer that selects the same pods: the
// namespace or the canonical namespace selector, and the canonical pod selector.
func parsePeer(peer networkingv1.NetworkPolicyPeer, namespace string) (string, parsedPeer, error) {
	podSel := labels.Everything()
	if peer.PodSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
		if err != nil {
			return "", parsedPeer{}, fmt.Errorf("podSelector: %w", err)
		}
		podSel = s
	}
	if peer.NamespaceSelector == nil {
		return "namespace " + namespace + " pods " + podSel.String(), parsedPeer{pods: podSel, namespace: namespace}, nil
	}
	nsSel, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
	if err != nil {
		return "", parsedPeer{}, fmt.Errorf("namespaceSelector: %w", err)
	}
	return selectorKey(nsSel, podSel), parsedPeer{namespaces: nsSel, pods: podSel}, nil
}

// selectorKey is the shared set key of a peer selecting pods by namespace and pod
// selectors, the same for a NetworkPolicy's and a ClusterNetworkPolicy's peer that
// select the same pods, so both share one set.
func selectorKey(namespaces, pods labels.Selector) string {
	return "namespaces " + namespaces.String() + " pods " + pods.String()
}

// peersPods returns the union of the pods the peers (keys in order) select, made
// on the first call: only named ports need it.
func (b *policyBuilder) peersPods(keys []string, peers map[string]parsedPeer) func() []*Pod {
	return sync.OnceValue(func() []*Pod {
		var pods []*Pod
		for _, key := range keys {
			pods = append(pods, b.selectedPods(peers[key])...)
		}
		return uniquePods(pods)
	})
}

// selectedPods returns the pods pp selects, in every node, that have an address of
// the compiled family and are not host-network pods.
func (b *policyBuilder) selectedPods(pp parsedPeer) []*Pod {
	namespaces := []string{pp.namespace}
	if pp.namespace == "" {
		namespaces = nil
		for nsName, ns := range b.idx.Namespaces {
			if pp.namespaces.Matches(labels.Set(ns.Labels)) {
				namespaces = append(namespaces, nsName)
			}
		}
	}
	var out []*Pod
	for _, nsName := range namespaces {
		for _, p := range b.idx.Pods[nsName] {
			if p.HostNetwork {
				continue
			}
			if _, ok := b.o.podIP(p); ok && pp.pods.Matches(labels.Set(p.Labels)) {
				out = append(out, p)
			}
		}
	}
	return out
}

// allPods returns every non-host-network pod with an address of the compiled family.
func (b *policyBuilder) allPods() []*Pod {
	var out []*Pod
	for _, byName := range b.idx.Pods {
		for _, p := range byName {
			if _, ok := b.o.podIP(p); ok && !p.HostNetwork {
				out = append(out, p)
			}
		}
	}
	return out
}

// peerWords turns a selector peer's key (parsePeer) into words for explain.
func peerWords(key string) string {
	where, podSel, _ := strings.Cut(key, " pods ")
	pods := "all pods"
	if podSel != "" {
		pods = "pods " + podSel
	}
	switch {
	case strings.HasPrefix(where, "namespace "):
		return pods + " in namespace " + strings.TrimPrefix(where, "namespace ")
	case where == "namespaces ":
		return pods + " in every namespace"
	}
	return pods + " in namespaces " + strings.TrimPrefix(where, "namespaces ")
}
