// Package netpol is kube-routerd's network policy controller: it compiles
// networking.k8s.io/v1 NetworkPolicies, the pods they select and the namespaces they
// name into iptables chains and ipsets for the pods on this node (desired.go), and
// applies only what changed (reconcile.go).
//
// Layout in the filter table (IPv4 and IPv6 alike):
//
//	FORWARD -> KUBE-ROUTER-FORWARD
//	OUTPUT, source not a node address (what IPVS forwards) -> KUBE-ROUTER-FORWARD
//	  conntrack RELATED,ESTABLISHED -> RETURN (replies to allowed connections)
//	  IPv6 neighbour solicitation and advertisement on the link -> RETURN
//	  -s <pod IP> -> KUBE-ROUTER-PE-<pod>  (pods isolated for egress)
//	  -d <pod IP> -> KUBE-ROUTER-PI-<pod>  (pods isolated for ingress)
//	KUBE-ROUTER-PI-<pod>: node's own addresses RETURN; jump to each selecting policy's
//	  ingress chain KUBE-ROUTER-NI-<policy>, whose rules set the allow mark; unmarked
//	  packets are (logged and) dropped; the mark is cleared and the packet returns.
//
// A pod's connection to a Service VIP never crosses FORWARD: IPVS takes it in INPUT
// and sends it to the backend through OUTPUT, with the client's address as source.
// The OUTPUT jump sends it through the same dispatch, so the client's egress and a
// local backend's ingress policies apply as they do to pod-to-pod traffic.
//
// Our chains only DROP or RETURN: allowed traffic continues through FORWARD (or
// OUTPUT) as if we were not there.
package netpol

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
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
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
)

// Names of what the compiler produces. Every chain and set carries the
// KUBE-ROUTER- prefix, so Cleanup and the full resync recognise them.
const (
	TopChain        = "KUBE-ROUTER-FORWARD"
	chainPrefix     = "KUBE-ROUTER-"
	podIngressKind  = "PI"
	podEgressKind   = "PE"
	polIngressKind  = "NI"
	polEgressKind   = "NE"
	peerSetKind     = "SP" // hash:ip of peer pods
	exceptSetKind   = "SX" // hash:net of an ipBlock's except list
	namedPortKind   = "SN" // hash:ip,port of pods exposing a named port
	TempSetSuffix   = "-T" // a set being rebuilt before a swap
	hashLen         = 13
	commentMaxBytes = 200
)

// Options are the node-wide compiler settings.
type Options struct {
	NodeName string
	// Family is 4 or 6: which pod IPs and ipBlocks this compilation covers.
	Family int
	// MarkBit is the packet mark bit policy chains set to say "allowed".
	MarkBit uint32
	// BetaNamespaceIsolation honours BetaIsolationAnnotation.
	BetaNamespaceIsolation bool
	// LogDrops adds an NFLOG rule before each drop, at most LogRatePerMinute.
	LogDrops         bool
	NFLOGGroup       int
	LogRatePerMinute int
}

// DefaultMarkBit is the allow mark; kube-proxy uses 0x4000 and 0x8000.
const DefaultMarkBit uint32 = 0x10000

// CompiledPolicy is one NetworkPolicy turned into chains and sets for this node.
type CompiledPolicy struct {
	Key     string // namespace/name
	Ingress bool   // the policy isolates its targets for ingress
	Egress  bool   // the policy isolates its targets for egress
	// Targets are the keys of the local pods the policy selects, sorted.
	Targets []string
	// Chains are the policy's ingress and egress chains (when it has those types).
	Chains []iptables.Chain
	// Sets are the ipsets the chains reference, entries sorted.
	Sets []ipset.SetEntries
	// Problems describe parts of the policy that could not be compiled; those parts
	// match nothing.
	Problems []string
}

// Desired is the whole state the controller wants in the kernel for one family.
type Desired struct {
	// Chains are the local pods' chains (pods by namespace and name), then the
	// policies' chains (policies by key), then TopChain.
	Chains []iptables.Chain
	Sets   []ipset.SetEntries // the policies' sets, policies by key
	Pods   int                // local pods with at least one isolated direction
	Rules  int                // total rules in Chains
}

// SetEntriesCount is the number of entries over all sets.
func (d *Desired) SetEntriesCount() int {
	n := 0
	for _, s := range d.Sets {
		n += len(s.Entries)
	}
	return n
}

// name builds a chain or set name: prefix, a two-letter kind and a hash of what it is
// for. Names are memoised: every sync asks again for every local pod's chains.
func name(kind string, parts ...string) string {
	key := kind + "\x00" + strings.Join(parts, "\x00")
	if v, ok := nameCache.Load(key); ok {
		return v.(string)
	}
	sum := sha256.Sum256([]byte(key))
	enc := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:])
	n := chainPrefix + kind + "-" + enc[:hashLen]
	nameCache.Store(key, n)
	return n
}

var nameCache sync.Map

func (o Options) familyTag() string { return strconv.Itoa(o.Family) }

func (o Options) ipsetFamily() ipset.Family {
	if o.Family == 6 {
		return ipset.IPv6
	}
	return ipset.IPv4
}

// podIP returns the pod's address of the compiled family.
func (o Options) podIP(p *Pod) (netip.Addr, bool) {
	for _, ip := range p.IPs {
		if ip.Is4() == (o.Family == 4) {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// isLocalTarget reports whether p is a pod this node polices.
func (o Options) isLocalTarget(p *Pod) bool {
	if p.NodeName != o.NodeName || p.HostNetwork {
		return false
	}
	_, ok := o.podIP(p)
	return ok
}

// PolicyTypes applies the API's defaulting when spec.policyTypes is empty: Ingress
// always, Egress when the policy has egress rules.
func PolicyTypes(p *networkingv1.NetworkPolicy) (ingress, egress bool) {
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

// CompilePolicy compiles one policy against the index.
func CompilePolicy(p *networkingv1.NetworkPolicy, idx *Index, o Options) *CompiledPolicy {
	key := p.Namespace + "/" + p.Name
	c := &CompiledPolicy{Key: key}
	c.Ingress, c.Egress = PolicyTypes(p)
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
		chain := iptables.Chain{Name: name(polIngressKind, key, o.familyTag())}
		for i, rule := range p.Spec.Ingress {
			chain.Rules = append(chain.Rules, b.rule("ingress", i, rule.From, rule.Ports)...)
		}
		c.Chains = append(c.Chains, chain)
	}
	if c.Egress {
		chain := iptables.Chain{Name: name(polEgressKind, key, o.familyTag())}
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
	idx       *Index
	o         Options
	out       *CompiledPolicy
	targets   []*Pod
}

func (b *policyBuilder) problem(format string, args ...any) {
	b.out.Problems = append(b.out.Problems, fmt.Sprintf(format, args...))
}

func (b *policyBuilder) addSet(kind string, t ipset.Type, entries map[string]struct{}, parts ...string) string {
	setName := name(kind, append([]string{b.policy, b.o.familyTag()}, parts...)...)
	list := make([]string, 0, len(entries))
	for e := range entries {
		list = append(list, e)
	}
	sort.Strings(list)
	b.out.Sets = append(b.out.Sets, ipset.SetEntries{
		Set:     ipset.Set{Name: setName, Type: t, Family: b.o.ipsetFamily()},
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
	var peerPods []*Pod
	selectorPeers := false
	var blocks []ipBlockPeer
	for j, peer := range peers {
		peerID := ruleID + "/peer/" + strconv.Itoa(j)
		if peer.IPBlock != nil {
			if blk, ok := b.ipBlock(peer.IPBlock, peerID, peerSide, addrFlag); ok {
				blocks = append(blocks, blk)
			}
			continue
		}
		selectorPeers = true
		pods, err := b.selectPeers(peer)
		if err != nil {
			b.problem("%s rule %d peer %d: %v (matches nothing)", dir, i, j, err)
			continue
		}
		peerPods = append(peerPods, pods...)
	}
	peerPods = uniquePods(peerPods)
	anyPeer := len(peers) == 0

	var peerMatches []string
	if anyPeer {
		peerMatches = []string{""}
	}
	if selectorPeers {
		entries := map[string]struct{}{}
		for _, p := range peerPods {
			ip, _ := b.o.podIP(p)
			entries[ip.String()] = struct{}{}
		}
		set := b.addSet(peerSetKind, ipset.HashIP, entries, ruleID)
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
			out = append(out, joinNonEmpty(comment, peer, pm, mark))
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
func (b *policyBuilder) namedPortHolders(dir string, anyPeer bool, peerPods []*Pod, blocks []ipBlockPeer) ([]*Pod, string) {
	switch {
	case dir == "ingress" && len(b.targets) == 0:
		return nil, ""
	case dir == "ingress":
		return b.targets, "target on this node"
	case anyPeer:
		return b.allPods(), "pod"
	case len(blocks) == 0:
		return peerPods, "peer pod"
	}
	holders := slices.Clone(peerPods)
	for _, p := range b.allPods() {
		ip, _ := b.o.podIP(p)
		if slices.ContainsFunc(blocks, func(blk ipBlockPeer) bool { return blk.contains(ip) }) {
			holders = append(holders, p)
		}
	}
	return uniquePods(holders), "peer pod"
}

// namedPortSet adds the hash:ip,port set of the holders' ports called name on proto,
// for port j of rule i, and returns the set's name.
func (b *policyBuilder) namedPortSet(dir string, i, j int, proto corev1.Protocol, name string, holders []*Pod, what string) string {
	protoName := strings.ToLower(string(proto))
	entries := map[string]struct{}{}
	for _, p := range holders {
		ip, _ := b.o.podIP(p)
		for _, np := range p.Ports {
			if np.Name == name && np.Protocol == proto {
				entries[fmt.Sprintf("%s,%s:%d", ip, protoName, np.Port)] = struct{}{}
			}
		}
	}
	if len(entries) == 0 && what != "" {
		b.problem("%s rule %d port %d: no %s exposes named port %s/%s (matches nothing yet)", dir, i, j, what, proto, name)
	}
	return b.addSet(namedPortKind, ipset.HashIPPort, entries, dir+"/"+strconv.Itoa(i), "port", strconv.Itoa(j))
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
	if cidr.Addr().Is4() != (b.o.Family == 4) {
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
	set := b.addSet(exceptSetKind, ipset.HashNet, entries, peerID)
	blk.match += " -m set ! --match-set " + set + " " + side
	return blk, true
}

// selectPeers returns the pods a podSelector/namespaceSelector peer selects, in every
// node, that have an address of the compiled family and are not host-network pods.
func (b *policyBuilder) selectPeers(peer networkingv1.NetworkPolicyPeer) ([]*Pod, error) {
	podSel := labels.Everything()
	if peer.PodSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
		if err != nil {
			return nil, fmt.Errorf("podSelector: %w", err)
		}
		podSel = s
	}
	var namespaces []string
	if peer.NamespaceSelector == nil {
		namespaces = []string{b.namespace}
	} else {
		nsSel, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
		if err != nil {
			return nil, fmt.Errorf("namespaceSelector: %w", err)
		}
		for nsName, ns := range b.idx.Namespaces {
			if nsSel.Matches(labels.Set(ns.Labels)) {
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
			if _, ok := b.o.podIP(p); ok && podSel.Matches(labels.Set(p.Labels)) {
				out = append(out, p)
			}
		}
	}
	return out, nil
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

// OwnsChain reports whether chain is one the policy controller creates (other
// kube-routerd controllers share the KUBE-ROUTER- prefix).
func OwnsChain(chain string) bool {
	if chain == TopChain {
		return true
	}
	for _, kind := range []string{podIngressKind, podEgressKind, polIngressKind, polEgressKind} {
		if strings.HasPrefix(chain, chainPrefix+kind+"-") {
			return true
		}
	}
	return false
}

// OwnsSet reports whether set is one the policy controller creates, including sets
// left half-built before a swap.
func OwnsSet(set string) bool {
	for _, kind := range []string{peerSetKind, exceptSetKind, namedPortKind} {
		if strings.HasPrefix(set, chainPrefix+kind+"-") {
			return true
		}
	}
	return false
}

// Affects reports whether a pod's change from old to new (either may be nil for an
// added or deleted pod) may change what policy p compiles to. ns is the pod's
// namespace. When only the labels changed, a selector matters only if it matched
// one version of the pod but not the other.
func Affects(p *networkingv1.NetworkPolicy, old, new *Pod, ns *Namespace) bool {
	pod := new
	if pod == nil {
		pod = old
	}
	if pod == nil {
		return false
	}
	if pod.Namespace != p.Namespace && !reachesOtherNamespaces(p) {
		return false // the cheap answer for most policies, without parsing selectors
	}
	labelsOnly := old != nil && new != nil && sameExceptLabels(old, new)
	var nsLabels labels.Set
	if ns != nil {
		nsLabels = ns.Labels
	}
	changed := func(matches func(*Pod) (bool, error)) bool {
		mOld, errOld := matchesPod(matches, old)
		mNew, errNew := matchesPod(matches, new)
		if errOld != nil || errNew != nil {
			return true // cannot tell: recompile
		}
		if labelsOnly {
			return mOld != mNew
		}
		return mOld || mNew
	}
	if pod.Namespace == p.Namespace && changed(func(x *Pod) (bool, error) {
		sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
		return err == nil && sel.Matches(labels.Set(x.Labels)), err
	}) {
		return true
	}
	peerChanged := func(peer networkingv1.NetworkPolicyPeer) bool {
		if peer.IPBlock != nil || (labelsOnly && peer.PodSelector == nil) {
			return false // a namespace-wide peer does not care about pod labels
		}
		return changed(func(x *Pod) (bool, error) {
			if peer.NamespaceSelector == nil {
				if x.Namespace != p.Namespace {
					return false, nil
				}
			} else {
				nsSel, err := metav1.LabelSelectorAsSelector(peer.NamespaceSelector)
				if err != nil || !nsSel.Matches(nsLabels) {
					return false, err
				}
			}
			if peer.PodSelector == nil {
				return true, nil
			}
			sel, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
			return err == nil && sel.Matches(labels.Set(x.Labels)), err
		})
	}
	for _, r := range p.Spec.Ingress {
		for _, peer := range r.From {
			if peerChanged(peer) {
				return true
			}
		}
	}
	for _, r := range p.Spec.Egress {
		namedPorts := hasNamedPort(r.Ports) && !labelsOnly
		if len(r.To) == 0 && namedPorts {
			return true // named ports resolve on every pod of the cluster
		}
		for _, peer := range r.To {
			if namedPorts && peer.IPBlock != nil && (inBlock(peer.IPBlock, old) || inBlock(peer.IPBlock, new)) {
				return true // named ports resolve on the pods inside the block
			}
			if peerChanged(peer) {
				return true
			}
		}
	}
	return false
}

// inBlock reports whether one of pod's addresses is in the block's CIDR (excepts
// aside: a pod in them costs a recompile, no more). A malformed CIDR holds no pod.
func inBlock(block *networkingv1.IPBlock, pod *Pod) bool {
	cidr, err := netip.ParsePrefix(block.CIDR)
	return err == nil && pod != nil && slices.ContainsFunc(pod.IPs, cidr.Contains)
}

// reachesOtherNamespaces reports whether pods outside p's namespace can change what
// p compiles to: through a namespaceSelector peer, or a named port of an egress rule
// to everyone or to an ipBlock.
func reachesOtherNamespaces(p *networkingv1.NetworkPolicy) bool {
	for _, r := range p.Spec.Ingress {
		for _, peer := range r.From {
			if peer.NamespaceSelector != nil {
				return true
			}
		}
	}
	for _, r := range p.Spec.Egress {
		if len(r.To) == 0 && hasNamedPort(r.Ports) {
			return true
		}
		for _, peer := range r.To {
			if peer.NamespaceSelector != nil || (peer.IPBlock != nil && hasNamedPort(r.Ports)) {
				return true
			}
		}
	}
	return false
}

func matchesPod(matches func(*Pod) (bool, error), p *Pod) (bool, error) {
	if p == nil {
		return false, nil
	}
	return matches(p)
}

func hasNamedPort(ports []networkingv1.NetworkPolicyPort) bool {
	for _, port := range ports {
		if port.Port != nil && port.Port.Type == intstr.String {
			return true
		}
	}
	return false
}

// sameExceptLabels reports whether two versions of a pod differ at most in labels.
func sameExceptLabels(a, b *Pod) bool {
	return a.NodeName == b.NodeName && a.HostNetwork == b.HostNetwork &&
		slices.Equal(a.IPs, b.IPs) && slices.Equal(a.Ports, b.Ports)
}

// Assemble combines compiled policies with the local pods into the full desired
// state: per-pod chains, the top chain, and every policy's chains and sets.
func Assemble(policies []*CompiledPolicy, idx *Index, o Options) *Desired {
	return NewAssembler(o).Assemble(policies, idx)
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
	`-m comment --comment "kube-routerd: neighbour solicitation" -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m hl --hl-eq 255 -j RETURN`,
	`-m comment --comment "kube-routerd: neighbour advertisement" -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m hl --hl-eq 255 -j RETURN`,
}

// topChainHead is the start of the top chain, before the dispatch to pod chains.
func (o Options) topChainHead() []string {
	head := []string{repliesRule}
	if o.Family == 6 {
		head = append(head, neighbourDiscoveryRules...)
	}
	return head
}

// Assembler is Assemble with a memory of its last result, for the controller's
// syncs. It keeps which policies select each local pod up to date from the policies
// that changed, rebuilds only the chains of pods whose inputs (address, selecting
// policies, beta isolation) changed, and the top chain only when a pod's dispatch
// changed. Unchanged chains and sets are the very slices applied last time, which
// the reconciler skips cheaply.
type Assembler struct {
	o        Options
	policies map[string]*CompiledPolicy // by key, as last assembled
	// ingressOf and egressOf are the chains of the policies selecting each local pod,
	// sorted. A list is replaced when it changes, never modified in place.
	ingressOf, egressOf map[podRef][]string
	pods                map[podRef]*assembledPod
	gen                 uint64 // stamps the pods seen by the current Assemble
	order               []*assembledPod
	last                *Desired
}

// assembledPod is one local pod's chains and dispatch rules with the inputs they
// were built from.
type assembledPod struct {
	ip              netip.Addr
	ingress, egress []string
	beta            bool
	chains          []iptables.Chain
	dispatchIngress string // top chain rule sending traffic to the pod to its ingress chain
	dispatchEgress  string
	gen             uint64
}

// NewAssembler returns an Assembler that remembers nothing yet.
func NewAssembler(o Options) *Assembler {
	return &Assembler{o: o, policies: map[string]*CompiledPolicy{},
		ingressOf: map[podRef][]string{}, egressOf: map[podRef][]string{}, pods: map[podRef]*assembledPod{}}
}

// Assemble returns the desired state for policies over idx, like the function
// Assemble. The result shares slices with later results and must not be modified.
func (a *Assembler) Assemble(policies []*CompiledPolicy, idx *Index) *Desired {
	o := a.o
	policiesChanged := a.trackPolicies(policies)
	a.gen++
	a.order = a.order[:0]
	// podsChanged: a pod's chains changed; dispatchChanged: a top chain rule did too.
	podsChanged, dispatchChanged := false, false
	for _, pod := range idx.podsOnNode(o.NodeName) {
		if pod == nil || !o.isLocalTarget(pod) {
			continue
		}
		ref := podRef{pod.Namespace, pod.Name}
		ns := idx.Namespaces[pod.Namespace]
		beta := o.BetaNamespaceIsolation && ns != nil && ns.BetaIngressIsolation
		ingress, egress := a.ingressOf[ref], a.egressOf[ref]
		if len(ingress) == 0 && !beta && len(egress) == 0 {
			continue
		}
		ip, _ := o.podIP(pod)
		ap := a.pods[ref]
		if ap == nil || ap.ip != ip || ap.beta != beta || !sameStrings(ap.ingress, ingress) || !sameStrings(ap.egress, egress) {
			rebuilt := assemblePod(pod.Key(), ip, ingress, egress, beta, o)
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
	if !podsChanged && !policiesChanged && a.last != nil {
		return a.last
	}

	d := &Desired{Pods: len(a.order)}
	if a.last != nil {
		d.Chains = make([]iptables.Chain, 0, len(a.last.Chains)+2)
		d.Sets = make([]ipset.SetEntries, 0, len(a.last.Sets))
	}
	top := iptables.Chain{Name: TopChain, Rules: o.topChainHead()}
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
	for _, c := range policies {
		d.Chains = append(d.Chains, c.Chains...)
		d.Sets = append(d.Sets, c.Sets...)
	}
	d.Chains = append(d.Chains, top)
	for _, c := range d.Chains {
		d.Rules += len(c.Rules)
	}
	a.last = d
	return d
}

// trackPolicies brings ingressOf and egressOf up to date with the policies that were
// added, replaced or removed since the last call, and reports whether any were.
func (a *Assembler) trackPolicies(policies []*CompiledPolicy) bool {
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
func (a *Assembler) setTargets(c *CompiledPolicy, add bool) {
	for _, t := range c.Targets {
		ns, name, _ := strings.Cut(t, "/")
		ref := podRef{ns, name}
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

// assemblePod builds a local pod's chains and the top chain rules dispatching to them.
func assemblePod(key string, ip netip.Addr, ingress, egress []string, beta bool, o Options) *assembledPod {
	ap := &assembledPod{ip: ip, ingress: ingress, egress: egress, beta: beta}
	if len(ingress) > 0 || beta {
		chain := podChain(podIngressKind, key, ingress, o)
		ap.chains = append(ap.chains, chain)
		ap.dispatchIngress = fmt.Sprintf(`-m comment --comment "ingress to %s" -d %s -j %s`, key, hostPrefix(ip), chain.Name)
	}
	if len(egress) > 0 {
		chain := podChain(podEgressKind, key, egress, o)
		ap.chains = append(ap.chains, chain)
		ap.dispatchEgress = fmt.Sprintf(`-m comment --comment "egress from %s" -s %s -j %s`, key, hostPrefix(ip), chain.Name)
	}
	return ap
}

// podChain is a pod's ingress or egress chain: the union of its policies' allows.
func podChain(kind, podKey string, policyChains []string, o Options) iptables.Chain {
	dir := "ingress"
	if kind == podEgressKind {
		dir = "egress"
	}
	c := iptables.Chain{Name: name(kind, podKey, o.familyTag())}
	if kind == podIngressKind {
		// The node itself (kubelet probes) always reaches its pods.
		c.Rules = append(c.Rules, `-m comment --comment "node to its own pods" -m addrtype --src-type LOCAL -j RETURN`)
	}
	for _, pc := range slices.Sorted(slices.Values(policyChains)) {
		c.Rules = append(c.Rules, "-j "+pc)
	}
	mark := fmt.Sprintf("0x%x/0x%x", o.MarkBit, o.MarkBit)
	if o.LogDrops {
		c.Rules = append(c.Rules, fmt.Sprintf(`-m mark ! --mark %s -m limit --limit %d/minute --limit-burst %d -j NFLOG --nflog-group %d --nflog-prefix "%s"`,
			mark, o.LogRatePerMinute, o.LogRatePerMinute, o.NFLOGGroup, truncate("DROP "+dir+" "+podKey, 63)))
	}
	c.Rules = append(c.Rules,
		fmt.Sprintf(`-m comment --comment "%s not allowed by policy" -m mark ! --mark %s -j DROP`, truncate(dir+" "+podKey, commentMaxBytes), mark),
		fmt.Sprintf("-j MARK --set-xmark 0x0/0x%x", o.MarkBit),
	)
	return c
}

func hostPrefix(ip netip.Addr) string { return netip.PrefixFrom(ip, ip.BitLen()).String() }

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	})
}

func sortedPods(m map[string]*Pod) []*Pod {
	out := make([]*Pod, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, m[k])
	}
	return out
}

func uniquePods(pods []*Pod) []*Pod {
	seen := map[*Pod]bool{}
	out := pods[:0]
	for _, p := range pods {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

func joinNonEmpty(parts ...string) string {
	out := parts[:0:0]
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, " ")
}

// truncate keeps s within n bytes and free of quotes, for comments and log prefixes.
func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, `"`, "'")
	if len(s) > n {
		return s[:n]
	}
	return s
}
