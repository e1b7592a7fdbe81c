package routing

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/k8s"
)

// Node annotations read by the routing controller, in kube-router's formats.
const (
	// annotationPeers lists this node's external BGP peers as a YAML list of
	// {remoteip, remoteasn, localip, password (base64), port, bfd (ours)}. It takes precedence
	// over the per-field forms below.
	annotationPeers = "kube-router.io/peers"
	// annotationPeerIPs lists external BGP peers of this node: "192.0.2.1,192.0.2.2".
	annotationPeerIPs = "kube-router.io/peer.ips"
	// annotationPeerASNs lists their AS numbers, one per IP, or one for all.
	annotationPeerASNs = "kube-router.io/peer.asns"
	// annotationPeerPasswords lists their base64-encoded TCP MD5 passwords, one per IP
	// (an empty item for none).
	annotationPeerPasswords = "kube-router.io/peer.passwords"
	// annotationPeerPorts lists their BGP ports, one per IP (an empty item for 179).
	annotationPeerPorts = "kube-router.io/peer.ports"
	// annotationPeerLocalIPs lists the local address of each session, one per IP (an
	// empty item for the kernel's choice).
	annotationPeerLocalIPs = "kube-router.io/peer.localips"
	// annotationPeerMaxPrefixes lists how many prefixes each peer may announce before
	// its session is torn down, one per peer or one for all; 0 means no limit.
	annotationPeerMaxPrefixes = "kube-router.io/peer.maxprefixes"
	// annotationRRServer makes the node a route reflector of the given cluster id.
	annotationRRServer = "kube-router.io/rr.server"
	// annotationRRClient makes the node a route reflector client of the given cluster id.
	annotationRRClient = "kube-router.io/rr.client"
	// annotationNodeASN is the node's own AS number (one AS per rack or per node),
	// instead of routing.asn.
	annotationNodeASN = "kube-router.io/node.asn"
	// annotationPrependAS and annotationPrependRepeat prepend an AS number that many
	// times to the AS path of the routes this node sends to external peers.
	annotationPrependAS     = "kube-router.io/path-prepend.as"
	annotationPrependRepeat = "kube-router.io/path-prepend.repeat-n"
	// annotationCommunities lists communities added to the routes this node sends to
	// external peers: "65000:100,no-export".
	annotationCommunities = "kube-router.io/node.bgp.communities"
	// annotationImportReject lists CIDRs no peer may announce routes into.
	annotationImportReject = "kube-router.io/node.bgp.customimportreject"
	// annotationLocalAddresses lists the addresses the BGP speaker listens on.
	annotationLocalAddresses = "kube-router.io/bgp-local-addresses"
)

// asPrepend is an AS number prepended Repeat times; the zero value prepends nothing.
type asPrepend struct {
	ASN    uint32
	Repeat uint8
}

// parseNode extracts nodeInfo from a Node. Each invalid annotation is logged with the
// node's name and ignored; the rest of the node still counts.
func parseNode(n *corev1.Node, cfg config.Routing, log *slog.Logger) nodeInfo {
	addrs := k8s.ParseNodeAddresses(n, log)
	info := nodeInfo{Name: n.Name, Address: addrs.IPv4, AddressV6: addrs.IPv6, PodCIDRs: addrs.PodCIDRs, ASN: uint32(cfg.ASN)}
	log = log.With("node", n.Name)
	ann := n.Annotations
	invalid := func(annotation string, err error) {
		log.Warn("ignoring invalid annotation", "annotation", annotation, "err", err)
	}
	for key, dst := range map[string]*string{annotationRRServer: &info.RRServer, annotationRRClient: &info.RRClient} {
		v, ok := ann[key]
		if !ok {
			continue
		}
		if id, err := parseClusterID(v); err != nil {
			log.Warn("ignoring invalid route reflector annotation", "annotation", key, "err", err)
		} else {
			*dst = id
		}
	}
	if info.RRServer != "" && info.RRClient != "" {
		log.Warn("ignoring route reflector client annotation on a route reflector server")
		info.RRClient = ""
	}
	info.Peers = parseNodePeers(ann, cfg, log)
	if v, ok := ann[annotationNodeASN]; ok {
		if asn, err := parseASN(v); err != nil {
			invalid(annotationNodeASN, err)
		} else {
			info.ASN = asn
		}
	}
	if p, err := parsePrepend(ann); err != nil {
		invalid(annotationPrependAS, err)
	} else {
		info.Prepend = p
	}
	if v, ok := ann[annotationCommunities]; ok {
		if cs, err := parseCommunities(v); err != nil {
			invalid(annotationCommunities, err)
		} else {
			info.Communities = cs
		}
	}
	if v, ok := ann[annotationImportReject]; ok {
		if ps, err := parsePrefixes(v); err != nil {
			invalid(annotationImportReject, err)
		} else {
			info.ImportReject = ps
		}
	}
	if v, ok := ann[annotationLocalAddresses]; ok {
		if as, err := parseAddrs(v); err != nil {
			invalid(annotationLocalAddresses, err)
		} else {
			info.ListenAddresses = as
		}
	}
	return info
}

// parseNodePeers reads the node's external peers from the YAML annotation or, without
// it, from the per-field ones.
func parseNodePeers(ann map[string]string, cfg config.Routing, log *slog.Logger) []Peer {
	text, hasYAML := ann[annotationPeers]
	_, hasList := ann[annotationPeerIPs]
	var peers []Peer
	var err error
	switch {
	case hasYAML:
		if hasList {
			log.Warn("both peer annotation forms are set; using "+annotationPeers, "ignored", annotationPeerIPs)
		}
		peers, err = parsePeersYAML(text, cfg)
	case hasList:
		peers, err = parsePeerAnnotations(ann, cfg)
	default:
		return nil
	}
	if err == nil {
		err = applyMaxPrefixes(peers, ann[annotationPeerMaxPrefixes])
	}
	if err != nil {
		log.Warn("ignoring invalid peer annotations", "err", err)
		return nil
	}
	return peers
}

// yamlPeer is one entry of the kube-router.io/peers annotation.
type yamlPeer struct {
	RemoteIP  string  `json:"remoteip"`
	RemoteASN *int64  `json:"remoteasn"`
	LocalIP   string  `json:"localip"`
	Password  string  `json:"password"`
	Port      *uint16 `json:"port"`
	// BFD (kube-routerd) runs BFD with the peer, as bfd in [[routing.peers]].
	BFD bool `json:"bfd"`
}

func parsePeersYAML(text string, cfg config.Routing) ([]Peer, error) {
	var entries []yamlPeer
	if err := yaml.Unmarshal([]byte(text), &entries); err != nil {
		return nil, fmt.Errorf("%s is not a YAML list of peers: %w", annotationPeers, err)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("%s lists no peers", annotationPeers)
	}
	peers := make([]Peer, 0, len(entries))
	for i, e := range entries {
		if e.RemoteASN == nil {
			return nil, fmt.Errorf("%s entry %d: remoteasn is missing", annotationPeers, i)
		}
		f := peerFields{ip: e.RemoteIP, asn: strconv.FormatInt(*e.RemoteASN, 10), password: e.Password, localIP: e.LocalIP}
		if e.Port != nil {
			f.port = strconv.Itoa(int(*e.Port))
		}
		p, err := f.peer(cfg)
		if err != nil {
			return nil, fmt.Errorf("%s entry %d: %w", annotationPeers, i, err)
		}
		p.BFD = e.BFD
		peers = append(peers, p)
	}
	return peers, nil
}

// parsePeerAnnotations reads the per-field (deprecated) peer annotations: lists with
// one item per peer IP; ASNs may also be one for all.
func parsePeerAnnotations(ann map[string]string, cfg config.Routing) ([]Peer, error) {
	ips := splitList(ann[annotationPeerIPs])
	asns := splitList(ann[annotationPeerASNs])
	if len(ips) == 0 {
		return nil, fmt.Errorf("%s is empty", annotationPeerIPs)
	}
	if len(asns) != len(ips) && len(asns) != 1 {
		return nil, fmt.Errorf("%s has %d entries for %d peer IPs", annotationPeerASNs, len(asns), len(ips))
	}
	perPeer := map[string][]string{}
	for _, key := range []string{annotationPeerPasswords, annotationPeerPorts, annotationPeerLocalIPs} {
		items := splitItems(ann[key])
		if len(items) != 0 && len(items) != len(ips) {
			return nil, fmt.Errorf("%s has %d entries for %d peer IPs", key, len(items), len(ips))
		}
		perPeer[key] = items
	}
	item := func(key string, i int) string {
		if items := perPeer[key]; len(items) > 0 {
			return items[i]
		}
		return ""
	}
	peers := make([]Peer, 0, len(ips))
	for i, ip := range ips {
		f := peerFields{
			ip: ip, asn: asns[min(i, len(asns)-1)], password: item(annotationPeerPasswords, i),
			port: item(annotationPeerPorts, i), localIP: item(annotationPeerLocalIPs, i),
		}
		p, err := f.peer(cfg)
		if err != nil {
			return nil, err
		}
		peers = append(peers, p)
	}
	return peers, nil
}

// peerFields is one annotated peer as text, whichever form it came in; empty
// optional fields take their defaults.
type peerFields struct {
	ip, asn, password, port, localIP string
}

func (f peerFields) peer(cfg config.Routing) (Peer, error) {
	ip, err := parseAddr(f.ip)
	if err != nil {
		return Peer{}, fmt.Errorf("peer IP: %w", err)
	}
	asn, err := parseASN(f.asn)
	if err != nil {
		return Peer{}, fmt.Errorf("peer %s: %w", ip, err)
	}
	p := Peer{Address: ip, ASN: asn, HoldTime: cfg.HoldTime.Duration}
	if f.password != "" {
		pw, err := base64.StdEncoding.DecodeString(f.password)
		if err != nil {
			return Peer{}, fmt.Errorf("peer %s: password is not base64", ip)
		}
		p.Password = string(pw)
	}
	if f.port != "" {
		port, err := strconv.ParseUint(f.port, 10, 16)
		if err != nil || port == 0 {
			return Peer{}, fmt.Errorf("peer %s: invalid port %q (want 1-65535)", ip, f.port)
		}
		p.Port = uint16(port)
	}
	if f.localIP != "" {
		local, err := parseAddr(f.localIP)
		if err != nil {
			return Peer{}, fmt.Errorf("peer %s: local IP: %w", ip, err)
		}
		if local.Is4() != ip.Is4() {
			return Peer{}, fmt.Errorf("peer %s: local IP %s is of the other IP family", ip, local)
		}
		p.LocalAddress = local
	}
	return p, nil
}

// applyMaxPrefixes sets the prefix limits of peers from the kube-routerd annotation:
// one value per peer or one for all.
func applyMaxPrefixes(peers []Peer, text string) error {
	limits := splitList(text)
	if len(limits) == 0 {
		return nil
	}
	if len(limits) > 1 && len(limits) != len(peers) {
		return fmt.Errorf("%s has %d entries for %d peers", annotationPeerMaxPrefixes, len(limits), len(peers))
	}
	for i := range peers {
		s := limits[min(i, len(limits)-1)]
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return fmt.Errorf("peer %s: invalid prefix limit %q", peers[i].Address, s)
		}
		peers[i].MaxPrefixes = uint32(n)
	}
	return nil
}

// parsePrepend reads the AS path prepending annotations; both must be set.
func parsePrepend(ann map[string]string) (asPrepend, error) {
	asText, hasAS := ann[annotationPrependAS]
	repeatText, hasRepeat := ann[annotationPrependRepeat]
	switch {
	case !hasAS && !hasRepeat:
		return asPrepend{}, nil
	case !hasAS || !hasRepeat:
		return asPrepend{}, fmt.Errorf("%s and %s must be set together", annotationPrependAS, annotationPrependRepeat)
	}
	asn, err := parseASN(asText)
	if err != nil {
		return asPrepend{}, err
	}
	n, err := strconv.ParseUint(strings.TrimSpace(repeatText), 10, 8)
	if err != nil || n == 0 {
		return asPrepend{}, fmt.Errorf("%s %q is not a count of 1-255", annotationPrependRepeat, repeatText)
	}
	return asPrepend{ASN: asn, Repeat: uint8(n)}, nil
}

// parseCommunities reads a list of communities and returns them as "ASN:value".
func parseCommunities(s string) ([]string, error) {
	items := splitList(s)
	if len(items) == 0 {
		return nil, fmt.Errorf("no communities in %q", s)
	}
	out := make([]string, 0, len(items))
	for _, item := range items {
		c, err := config.ParseCommunity(item)
		if err != nil {
			return nil, err
		}
		out = append(out, config.FormatCommunity(c))
	}
	return out, nil
}

func parsePrefixes(s string) ([]netip.Prefix, error) {
	items := splitList(s)
	if len(items) == 0 {
		return nil, fmt.Errorf("no CIDRs in %q", s)
	}
	out := make([]netip.Prefix, 0, len(items))
	for _, item := range items {
		p, err := netip.ParsePrefix(item)
		if err != nil || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return nil, fmt.Errorf("%q is not a CIDR", item)
		}
		out = append(out, p.Masked())
	}
	return sortedUnique(out), nil
}

func parseAddrs(s string) ([]netip.Addr, error) {
	items := splitList(s)
	if len(items) == 0 {
		return nil, fmt.Errorf("no addresses in %q", s)
	}
	out := make([]netip.Addr, 0, len(items))
	for _, item := range items {
		a, err := parseAddr(item)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}

func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil || a.Is4In6() || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%q is not an IPv4 or IPv6 address", s)
	}
	return a, nil
}

func parseASN(s string) (uint32, error) {
	asn, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || !config.ValidASN(asn) {
		return 0, fmt.Errorf("invalid AS number %q (want 1-4294967294)", s)
	}
	return uint32(asn), nil
}

// parseClusterID accepts a route reflector cluster id as a 32-bit number or an IPv4
// address and returns it in dotted form, as BGP carries it.
func parseClusterID(s string) (string, error) {
	if ip, err := netip.ParseAddr(s); err == nil && ip.Is4() {
		return ip.String(), nil
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 {
		return "", fmt.Errorf("cluster id %q is neither a non-zero 32-bit number nor an IPv4 address", s)
	}
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}).String(), nil
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// splitItems splits a comma-separated list of one item per peer, keeping empty items
// ("c2VjcmV0,," is a password for the first of three peers); nil for an empty list.
func splitItems(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	out := strings.Split(s, ",")
	for i := range out {
		out[i] = strings.TrimSpace(out[i])
	}
	return out
}
