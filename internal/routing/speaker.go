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

	api "github.com/osrg/gobgp/v3/api"
	bgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Names of the GoBGP defined sets and policies the speaker manages.
const (
	setNodePeers        = "kube-router-node-peers"
	setOtherASNodePeers = "kube-router-other-as-node-peers"
	setExternalPeers    = "kube-router-external-peers"
	setToNodes          = "kube-router-to-nodes"
	setToOtherASNodes   = "kube-router-to-other-as-nodes"
	setToExternal       = "kube-router-to-external"
	setProtected        = "kube-router-protected"
	setImportReject     = "kube-router-import-reject"
	policyExport        = "kube-router-export"
	policyImport        = "kube-router-import"
)

const neighborSentinel = "255.255.255.255/32"

var (
	familyIPv4 = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	familyIPv6 = &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
)

// familyOf is the unicast address family of a's IP version.
func familyOf(a netip.Addr) *api.Family {
	if a.Is4() {
		return familyIPv4
	}
	return familyIPv6
}

// v6Suffix names the IPv6 twin of a prefix set (and of the statement using it):
// GoBGP prefix sets hold a single family.
const v6Suffix = "-v6"

func v6(set string) string { return set + v6Suffix }

// speaker is what the routing sync needs of a BGP speaker, so the sync can run
// against fakeSpeaker in unit tests (MetalLB's BGP Session is the model). Every
// setter takes the whole desired state and applies only the difference.
type speaker interface {
	// Watch reports session state changes and best path changes until ctx ends.
	Watch(ctx context.Context, onPeer func(addr string, old, new peerState), onBestPath func()) error
	// SetPolicy classifies peers (node of our AS, node of another AS, or external),
	// opens the prefixes each class may receive and may not announce, and sets what
	// routes to external peers carry.
	SetPolicy(ctx context.Context, adv advertisements, peers []Peer) error
	// SetPeers makes the configured peers exactly peers.
	SetPeers(ctx context.Context, peers []Peer) error
	// SetPaths makes the originated prefixes exactly prefixes.
	SetPaths(ctx context.Context, prefixes []netip.Prefix) error
	// Learned lists the best paths learned from peers.
	Learned(ctx context.Context) ([]LearnedRoute, error)
	// PeerStates returns each configured peer's session state.
	PeerStates(ctx context.Context) map[string]peerState
	// ResetPeer closes a peer's session (its routes go with it) and lets it
	// re-establish as usual.
	ResetPeer(ctx context.Context, addr netip.Addr, reason string) error
	// Stop closes every session and ends the speaker.
	Stop()
}

// startSpeakerFunc starts a speaker with its global settings (startGoBGP outside tests).
type startSpeakerFunc func(ctx context.Context, cfg speakerConfig) (speaker, error)

// speakerConfig is what a speaker is started with.
type speakerConfig struct {
	ASN      uint32
	RouterID netip.Addr
	// ListenPort is the BGP port; -1 disables listening (the speaker only dials out).
	ListenPort      int32
	ListenAddresses []string
	// GracefulRestart offers RFC 4724 graceful restart to every peer, with
	// RestartTime as how long peers keep our routes while we are away.
	GracefulRestart bool
	RestartTime     time.Duration
	Log             *slog.Logger
}

// peerState is the last session state the speaker reported for a peer.
type peerState struct {
	State string `json:"state"`
	// Flaps counts drops out of the established state since we started.
	Flaps int `json:"flaps"`
	// Received counts the routes accepted from the peer.
	Received uint64 `json:"received"`
}

// gobgpSpeaker is the speaker: the in-process GoBGP server with the peers, paths and
// policies we set.
type gobgpSpeaker struct {
	srv *server.BgpServer
	cfg speakerConfig
	log *slog.Logger

	peers      map[netip.Addr]Peer
	paths      map[netip.Prefix]bool
	sets       map[string][]string // defined set name -> applied entries
	policySent bool
	// exportActions is what the export policy of generation exportGeneration adds
	// to routes for external peers.
	exportActions    externalActions
	exportGeneration int

	mu     sync.Mutex
	states map[string]peerState
}

var _ speaker = (*gobgpSpeaker)(nil)

// startGoBGP starts a BGP server and installs our policies (everything rejected
// until SetPolicy fills the sets).
func startGoBGP(ctx context.Context, cfg speakerConfig) (*gobgpSpeaker, error) {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	srv := server.NewBgpServer(server.LoggerOption(&gobgpLogger{log: log.With("component", "gobgp")}))
	go srv.Serve()
	global := &api.Global{
		Asn:             cfg.ASN,
		RouterId:        cfg.RouterID.String(),
		ListenPort:      cfg.ListenPort,
		ListenAddresses: cfg.ListenAddresses,
	}
	if err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: global}); err != nil {
		srv.Stop()
		return nil, fmt.Errorf("starting BGP speaker (AS %d, router id %s, port %d): %w", cfg.ASN, cfg.RouterID, cfg.ListenPort, err)
	}
	s := &gobgpSpeaker{
		srv: srv, cfg: cfg, log: log,
		peers: map[netip.Addr]Peer{}, paths: map[netip.Prefix]bool{},
		sets:   map[string][]string{setNodePeers: {neighborSentinel}, setOtherASNodePeers: {neighborSentinel}, setExternalPeers: {neighborSentinel}},
		states: map[string]peerState{},
	}
	if err := s.installPolicies(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Stop tears the server down, sending every peer a NOTIFICATION (they withdraw our
// routes). A daemon restart should not call it, so graceful restart keeps routes.
func (s *gobgpSpeaker) Stop() {
	_ = s.srv.StopBgp(context.Background(), &api.StopBgpRequest{})
	s.srv.Stop()
}

// externalActions is what routes sent to external peers carry beyond our defaults.
type externalActions struct {
	communities string // "ASN:value" joined by commas
	prepend     asPrepend
}

func (a externalActions) apply(to *api.Actions) {
	if a.communities != "" {
		to.Community = &api.CommunityAction{Type: api.CommunityAction_ADD, Communities: strings.Split(a.communities, ",")}
	}
	if a.prepend.Repeat > 0 {
		to.AsPrepend = &api.AsPrependAction{Asn: a.prepend.ASN, Repeat: uint32(a.prepend.Repeat)}
	}
}

func (s *gobgpSpeaker) installPolicies(ctx context.Context) error {
	sets := []*api.DefinedSet{
		{DefinedType: api.DefinedType_NEIGHBOR, Name: setNodePeers, List: []string{neighborSentinel}},
		{DefinedType: api.DefinedType_NEIGHBOR, Name: setOtherASNodePeers, List: []string{neighborSentinel}},
		{DefinedType: api.DefinedType_NEIGHBOR, Name: setExternalPeers, List: []string{neighborSentinel}},
	}
	for _, name := range []string{setToNodes, setToOtherASNodes, setToExternal, setProtected, setImportReject} {
		sets = append(sets,
			&api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: name},
			&api.DefinedSet{DefinedType: api.DefinedType_PREFIX, Name: v6(name)})
	}
	for _, ds := range sets {
		if err := s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: ds}); err != nil {
			return fmt.Errorf("creating defined set %s: %w", ds.Name, err)
		}
	}
	imp := &api.Policy{Name: policyImport}
	for _, suffix := range []string{"", v6Suffix} {
		imp.Statements = append(imp.Statements,
			&api.Statement{
				Name:       policyImport + "-reject" + suffix,
				Conditions: &api.Conditions{PrefixSet: matchAny(setImportReject + suffix)},
				Actions:    &api.Actions{RouteAction: api.RouteAction_REJECT},
			},
			&api.Statement{
				Name:       policyImport + "-protected" + suffix,
				Conditions: &api.Conditions{NeighborSet: matchAny(setExternalPeers), PrefixSet: matchAny(setProtected + suffix)},
				Actions:    &api.Actions{RouteAction: api.RouteAction_REJECT},
			})
	}
	export := s.exportPolicy()
	for _, p := range []struct {
		policy *api.Policy
		dir    api.PolicyDirection
		def    api.RouteAction
	}{
		// Nothing leaves unless a statement accepts it.
		{export, api.PolicyDirection_EXPORT, api.RouteAction_REJECT},
		// Everything is accepted except what a statement rejects.
		{imp, api.PolicyDirection_IMPORT, api.RouteAction_ACCEPT},
	} {
		if err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: p.policy, ReferExistingStatements: false}); err != nil {
			return fmt.Errorf("adding policy %s: %w", p.policy.Name, err)
		}
		err := s.srv.AddPolicyAssignment(ctx, &api.AddPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
			Name: "global", Direction: p.dir, Policies: []*api.Policy{{Name: p.policy.Name}}, DefaultAction: p.def,
		}})
		if err != nil {
			return fmt.Errorf("assigning policy %s: %w", p.policy.Name, err)
		}
	}
	return nil
}

// exportPolicy is the export policy of the current generation and actions. Its name
// and its statements' carry the generation: GoBGP cannot change a statement's
// actions, so new actions come as a new policy that replaces the old one.
func (s *gobgpSpeaker) exportPolicy() *api.Policy {
	name := fmt.Sprintf("%s-%d", policyExport, s.exportGeneration)
	toExternal := &api.Actions{RouteAction: api.RouteAction_ACCEPT}
	s.exportActions.apply(toExternal)
	p := &api.Policy{Name: name}
	for _, suffix := range []string{"", v6Suffix} {
		p.Statements = append(p.Statements,
			&api.Statement{
				Name:       name + "-nodes" + suffix,
				Conditions: &api.Conditions{NeighborSet: matchAny(setNodePeers), PrefixSet: matchAny(setToNodes + suffix)},
				Actions:    &api.Actions{RouteAction: api.RouteAction_ACCEPT},
			},
			&api.Statement{
				Name:       name + "-other-as-nodes" + suffix,
				Conditions: &api.Conditions{NeighborSet: matchAny(setOtherASNodePeers), PrefixSet: matchAny(setToOtherASNodes + suffix)},
				Actions:    &api.Actions{RouteAction: api.RouteAction_ACCEPT},
			},
			&api.Statement{
				Name:       name + "-external" + suffix,
				Conditions: &api.Conditions{NeighborSet: matchAny(setExternalPeers), PrefixSet: matchAny(setToExternal + suffix)},
				Actions:    toExternal,
			})
	}
	return p
}

// setExportActions swaps in an export policy with new actions for external peers:
// the new policy is assigned in one step, so no route is ever exported without one.
func (s *gobgpSpeaker) setExportActions(ctx context.Context, actions externalActions) (bool, error) {
	if actions == s.exportActions {
		return false, nil
	}
	old := s.exportPolicy()
	s.exportActions = actions
	s.exportGeneration++
	next := s.exportPolicy()
	if err := s.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: next}); err != nil {
		return false, fmt.Errorf("adding policy %s: %w", next.Name, err)
	}
	err := s.srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
		Name: "global", Direction: api.PolicyDirection_EXPORT, Policies: []*api.Policy{{Name: next.Name}}, DefaultAction: api.RouteAction_REJECT,
	}})
	if err != nil {
		return false, fmt.Errorf("assigning policy %s: %w", next.Name, err)
	}
	if err := s.srv.DeletePolicy(ctx, &api.DeletePolicyRequest{Policy: &api.Policy{Name: old.Name}, All: true}); err != nil {
		s.log.Warn("could not delete the replaced export policy", "policy", old.Name, "err", err)
	}
	return true, nil
}

func matchAny(set string) *api.MatchSet { return &api.MatchSet{Type: api.MatchSet_ANY, Name: set} }

// SetPolicy updates the policies' sets: which prefixes go to node and external peers,
// which ranges external peers (or any peer) may not announce into, and who is who
// among peers; and what routes to external peers carry.
func (s *gobgpSpeaker) SetPolicy(ctx context.Context, adv advertisements, peers []Peer) error {
	// GoBGP treats an empty neighbor set as matching every neighbor; a sentinel that is
	// never a BGP neighbor (the broadcast address) keeps an empty class empty.
	nodes, otherASNodes, external := []string{neighborSentinel}, []string{neighborSentinel}, []string{neighborSentinel}
	for _, p := range peers {
		host := netip.PrefixFrom(p.Address, p.Address.BitLen()).String()
		switch {
		case p.External():
			external = append(external, host)
		case p.OtherASNode():
			otherASNodes = append(otherASNodes, host)
		default:
			nodes = append(nodes, host)
		}
	}
	// exact and within render the prefixes of one family as prefix set entries.
	exact := func(ps []netip.Prefix, is4 bool) []string {
		var out []string
		for _, p := range ps {
			if p.Addr().Is4() == is4 {
				out = append(out, fmt.Sprintf("%s %d..%d", p, p.Bits(), p.Bits()))
			}
		}
		return out
	}
	within := func(ps []netip.Prefix, is4 bool) []string {
		var out []string
		for _, p := range ps {
			if p.Addr().Is4() == is4 {
				out = append(out, fmt.Sprintf("%s %d..%d", p, p.Bits(), p.Addr().BitLen()))
			}
		}
		return out
	}
	changed := false
	for _, u := range []struct {
		name    string
		typ     api.DefinedType
		entries []string
	}{
		// Peers are classified before prefixes are opened, so a new entry in a prefix
		// set never meets an unclassified peer.
		{setNodePeers, api.DefinedType_NEIGHBOR, nodes},
		{setOtherASNodePeers, api.DefinedType_NEIGHBOR, otherASNodes},
		{setExternalPeers, api.DefinedType_NEIGHBOR, external},
		{setProtected, api.DefinedType_PREFIX, within(adv.Protected, true)},
		{v6(setProtected), api.DefinedType_PREFIX, within(adv.Protected, false)},
		{setImportReject, api.DefinedType_PREFIX, within(adv.ImportReject, true)},
		{v6(setImportReject), api.DefinedType_PREFIX, within(adv.ImportReject, false)},
		{setToNodes, api.DefinedType_PREFIX, exact(adv.ToNodes, true)},
		{v6(setToNodes), api.DefinedType_PREFIX, exact(adv.ToNodes, false)},
		{setToOtherASNodes, api.DefinedType_PREFIX, exact(adv.ToOtherASNodes, true)},
		{v6(setToOtherASNodes), api.DefinedType_PREFIX, exact(adv.ToOtherASNodes, false)},
		{setToExternal, api.DefinedType_PREFIX, exact(adv.ToExternal, true)},
		{v6(setToExternal), api.DefinedType_PREFIX, exact(adv.ToExternal, false)},
	} {
		c, err := s.updateSet(ctx, u.name, u.typ, u.entries)
		if err != nil {
			return err
		}
		changed = changed || c
	}
	c, err := s.setExportActions(ctx, externalActions{communities: strings.Join(adv.Communities, ","), prepend: adv.Prepend})
	if err != nil {
		return err
	}
	changed = changed || c
	if changed && s.policySent {
		// Re-evaluate what established peers have received under the new sets.
		for addr := range s.peers {
			_ = s.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: addr.String(), Soft: true, Direction: api.ResetPeerRequest_BOTH})
		}
	}
	s.policySent = true
	return nil
}

// updateSet makes a defined set hold exactly entries ("a.b.c.d/n min..max" for prefix
// sets, "a.b.c.d/32" or "a:b::c/128" for neighbor sets) and reports whether it changed.
func (s *gobgpSpeaker) updateSet(ctx context.Context, name string, typ api.DefinedType, entries []string) (bool, error) {
	entries = slices.Compact(slices.Sorted(slices.Values(entries)))
	old := s.sets[name]
	var add, del []string
	for _, e := range entries {
		if _, found := slices.BinarySearch(old, e); !found {
			add = append(add, e)
		}
	}
	for _, e := range old {
		if _, found := slices.BinarySearch(entries, e); !found {
			del = append(del, e)
		}
	}
	if len(add) > 0 {
		if err := s.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: definedSet(name, typ, add)}); err != nil {
			return false, fmt.Errorf("adding to defined set %s: %w", name, err)
		}
	}
	if len(del) > 0 {
		if err := s.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: definedSet(name, typ, del)}); err != nil {
			return false, fmt.Errorf("removing from defined set %s: %w", name, err)
		}
	}
	s.sets[name] = entries
	return len(add)+len(del) > 0, nil
}

func definedSet(name string, typ api.DefinedType, entries []string) *api.DefinedSet {
	ds := &api.DefinedSet{DefinedType: typ, Name: name}
	if typ == api.DefinedType_NEIGHBOR {
		ds.List = entries
		return ds
	}
	for _, e := range entries {
		var p string
		var lo, hi uint32
		fmt.Sscanf(e, "%s %d..%d", &p, &lo, &hi)
		ds.Prefixes = append(ds.Prefixes, &api.Prefix{IpPrefix: p, MaskLengthMin: lo, MaskLengthMax: hi})
	}
	return ds
}

// SetPeers adds, re-adds (when their settings changed) and deletes peers. A peer that
// GoBGP refuses is logged and skipped; the others are still applied.
func (s *gobgpSpeaker) SetPeers(ctx context.Context, peers []Peer) error {
	want := map[netip.Addr]Peer{}
	for _, p := range peers {
		want[p.Address] = p
	}
	var errs []error
	for addr, old := range s.peers {
		if p, ok := want[addr]; ok && p == old {
			continue
		}
		if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
			errs = append(errs, fmt.Errorf("deleting peer %s: %w", addr, err))
			continue
		}
		delete(s.peers, addr)
		s.mu.Lock()
		delete(s.states, addr.String())
		s.mu.Unlock()
		s.log.Info("removed BGP peer", "peer", addr, "node", old.Node)
	}
	for addr, p := range want {
		if _, ok := s.peers[addr]; ok {
			continue
		}
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.apiPeer(p)}); err != nil {
			s.log.Warn("skipping BGP peer the speaker refused", "peer", addr, "asn", p.ASN, "node", p.Node, "err", err)
			continue
		}
		s.peers[addr] = p
		s.log.Info("added BGP peer", "peer", addr, "asn", p.ASN, "localASN", p.LocalASN, "node", p.Node, "rrClient", p.RRClient)
	}
	return errors.Join(errs...)
}

// apiPeer is the GoBGP form of p. A session carries the unicast family of the
// peer's address only.
func (s *gobgpSpeaker) apiPeer(p Peer) *api.Peer {
	hold := uint64(p.HoldTime / time.Second)
	family := familyOf(p.Address)
	afiSafi := &api.AfiSafi{
		Config:            &api.AfiSafiConfig{Family: family, Enabled: true},
		MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: s.cfg.GracefulRestart}},
	}
	if p.MaxPrefixes > 0 {
		// GoBGP sends a Cease (maximum number of prefixes reached) and drops the
		// session once the peer's accepted and rejected prefixes exceed the limit.
		afiSafi.PrefixLimits = &api.PrefixLimit{Family: family, MaxPrefixes: p.MaxPrefixes}
	}
	ap := &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: p.Address.String(), PeerAsn: p.ASN, LocalAsn: p.LocalASN, AuthPassword: p.Password, Description: p.Node},
		// A short connect retry brings sessions up soon after a node or router appears.
		Timers:    &api.Timers{Config: &api.TimersConfig{HoldTime: hold, KeepaliveInterval: hold / 3, ConnectRetry: 5}},
		Transport: &api.Transport{RemotePort: uint32(p.Port), PassiveMode: p.Passive},
		AfiSafis:  []*api.AfiSafi{afiSafi},
	}
	if p.BFD {
		// Only BFD resets sessions; the session may come back as soon as the link
		// does, not after GoBGP's default 30 s.
		ap.Timers.Config.IdleHoldTimeAfterReset = 1
	}
	if p.LocalAddress.IsValid() {
		ap.Transport.LocalAddress = p.LocalAddress.String()
	}
	if p.Multihop > 0 {
		ap.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.Multihop)}
	}
	if p.RRClient {
		ap.RouteReflector = &api.RouteReflector{RouteReflectorClient: true, RouteReflectorClusterId: p.RRClusterID}
	}
	if s.cfg.GracefulRestart {
		ap.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: uint32(s.cfg.RestartTime / time.Second)}
	}
	return ap
}

// SetPaths originates exactly prefixes (next hop: our address on each session).
func (s *gobgpSpeaker) SetPaths(ctx context.Context, prefixes []netip.Prefix) error {
	want := map[netip.Prefix]bool{}
	for _, p := range prefixes {
		want[p] = true
	}
	var errs []error
	for p := range s.paths {
		if want[p] {
			continue
		}
		if err := s.srv.DeletePath(ctx, &api.DeletePathRequest{Family: familyOf(p.Addr()), Path: localPath(p)}); err != nil {
			errs = append(errs, fmt.Errorf("withdrawing %s: %w", p, err))
			continue
		}
		delete(s.paths, p)
	}
	for p := range want {
		if s.paths[p] {
			continue
		}
		if _, err := s.srv.AddPath(ctx, &api.AddPathRequest{Path: localPath(p)}); err != nil {
			errs = append(errs, fmt.Errorf("announcing %s: %w", p, err))
			continue
		}
		s.paths[p] = true
	}
	return errors.Join(errs...)
}

// localPath is a route we originate. The unspecified next hop makes GoBGP send our
// address on each session; IPv6 carries it in MP_REACH_NLRI.
func localPath(p netip.Prefix) *api.Path {
	family := familyOf(p.Addr())
	nlri, _ := anypb.New(&api.IPAddressPrefix{Prefix: p.Addr().String(), PrefixLen: uint32(p.Bits())})
	origin, _ := anypb.New(&api.OriginAttribute{Origin: 0}) // IGP
	var nh *anypb.Any
	if p.Addr().Is4() {
		nh, _ = anypb.New(&api.NextHopAttribute{NextHop: "0.0.0.0"})
	} else {
		nh, _ = anypb.New(&api.MpReachNLRIAttribute{Family: family, NextHops: []string{"::"}, Nlris: []*anypb.Any{nlri}})
	}
	return &api.Path{Family: family, Nlri: nlri, Pattrs: []*anypb.Any{origin, nh}}
}

// Learned lists the best paths of both families that came from peers.
func (s *gobgpSpeaker) Learned(ctx context.Context) ([]LearnedRoute, error) {
	var out []LearnedRoute
	for _, family := range []*api.Family{familyIPv4, familyIPv6} {
		err := s.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: family}, func(d *api.Destination) {
			for _, p := range d.Paths {
				if !p.Best || p.IsWithdraw {
					continue
				}
				if _, err := netip.ParseAddr(p.NeighborIp); err != nil {
					continue // originated by us
				}
				if r, ok := learnedRoute(p); ok {
					out = append(out, r)
				}
			}
		})
		if err != nil {
			return nil, fmt.Errorf("listing BGP paths: %w", err)
		}
	}
	return out, nil
}

func learnedRoute(p *api.Path) (LearnedRoute, bool) {
	var nlri api.IPAddressPrefix
	if err := p.Nlri.UnmarshalTo(&nlri); err != nil {
		return LearnedRoute{}, false
	}
	addr, err := netip.ParseAddr(nlri.Prefix)
	if err != nil {
		return LearnedRoute{}, false
	}
	r := LearnedRoute{Prefix: netip.PrefixFrom(addr, int(nlri.PrefixLen)).Masked()}
	for _, a := range p.Pattrs {
		m, err := a.UnmarshalNew()
		if err != nil {
			continue
		}
		switch attr := m.(type) {
		case *api.NextHopAttribute:
			r.NextHop, _ = netip.ParseAddr(attr.NextHop)
		case *api.MpReachNLRIAttribute:
			if len(attr.NextHops) > 0 {
				r.NextHop, _ = netip.ParseAddr(attr.NextHops[0])
			}
		}
	}
	return r, r.NextHop.IsValid()
}

// Watch reports peer state changes and best path changes until ctx ends. Callbacks run
// on GoBGP's goroutine and must be quick.
func (s *gobgpSpeaker) Watch(ctx context.Context, onPeer func(addr string, old, new peerState), onBestPath func()) error {
	req := &api.WatchEventRequest{
		Peer:  &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{{Type: api.WatchEventRequest_Table_Filter_BEST}}},
	}
	return s.srv.WatchEvent(ctx, req, func(r *api.WatchEventResponse) {
		if pe := r.GetPeer(); pe != nil && pe.Type == api.WatchEventResponse_PeerEvent_STATE && pe.Peer.GetState() != nil {
			addr := pe.Peer.State.NeighborAddress
			state := pe.Peer.State.SessionState.String()
			s.mu.Lock()
			old := s.states[addr]
			next := peerState{State: state, Flaps: old.Flaps}
			if old.State == api.PeerState_ESTABLISHED.String() && state != old.State {
				next.Flaps++
			}
			s.states[addr] = next
			s.mu.Unlock()
			if onPeer != nil {
				onPeer(addr, old, next)
			}
		}
		if r.GetTable() != nil && onBestPath != nil {
			onBestPath()
		}
	})
}

// PeerStates returns every configured peer's session state and accepted route count,
// with the flaps counted by Watch. One ListPeer call: it is the costly part of a sync
// with hundreds of peers.
func (s *gobgpSpeaker) PeerStates(ctx context.Context) map[string]peerState {
	out := map[string]peerState{}
	_ = s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		st := p.GetState()
		if st == nil {
			return
		}
		ps := peerState{State: st.SessionState.String()}
		for _, af := range p.AfiSafis {
			if as := af.GetState(); as != nil && (proto.Equal(as.Family, familyIPv4) || proto.Equal(as.Family, familyIPv6)) {
				ps.Received += as.Accepted
			}
		}
		out[st.NeighborAddress] = ps
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	for addr, st := range out {
		st.Flaps = s.states[addr].Flaps
		out[addr] = st
	}
	return out
}

// ResetPeer sends the peer a Cease (administrative reset) and drops the session: not
// a graceful restart, so the peer's routes are withdrawn at once.
func (s *gobgpSpeaker) ResetPeer(ctx context.Context, addr netip.Addr, reason string) error {
	return s.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: addr.String(), Communication: reason})
}

// gobgpLogger sends GoBGP's logs to slog; its info level is chatty, so it logs at debug.
// GoBGP names the neighbour of a session "Key"; it is logged as "peer", like ours.
type gobgpLogger struct{ log *slog.Logger }

func (l *gobgpLogger) attrs(f bgplog.Fields) []any {
	out := make([]any, 0, 2*len(f))
	for k, v := range f {
		if k == "Key" {
			k = "peer"
		}
		out = append(out, k, v)
	}
	return out
}

func (l *gobgpLogger) Panic(msg string, f bgplog.Fields) { l.log.Error(msg, l.attrs(f)...); panic(msg) }
func (l *gobgpLogger) Fatal(msg string, f bgplog.Fields) { l.log.Error(msg, l.attrs(f)...) }
func (l *gobgpLogger) Error(msg string, f bgplog.Fields) { l.log.Error(msg, l.attrs(f)...) }
func (l *gobgpLogger) Warn(msg string, f bgplog.Fields)  { l.log.Warn(msg, l.attrs(f)...) }
func (l *gobgpLogger) Info(msg string, f bgplog.Fields)  { l.log.Debug(msg, l.attrs(f)...) }
func (l *gobgpLogger) Debug(msg string, f bgplog.Fields) {}
func (l *gobgpLogger) SetLevel(bgplog.LogLevel)          {}
func (l *gobgpLogger) GetLevel() bgplog.LogLevel         { return bgplog.InfoLevel }
