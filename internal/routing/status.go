package routing

import "github.com/kube-routerd/kube-routerd/internal/dataplane/route"

// Details is the routing controller's state for `kube-routerd status`.
type Details struct {
	Node      string `json:"node"`
	Address   string `json:"address"`
	AddressV6 string `json:"addressV6,omitempty"`
	// ASN is the node's AS number (kube-router.io/node.asn or routing.asn).
	ASN        uint32        `json:"asn"`
	PodCIDRs   []string      `json:"podCIDRs"`
	Peers      []PeerDetails `json:"peers"`
	Announced  []string      `json:"announced"`
	ToExternal []string      `json:"toExternal"`
	Routes     []string      `json:"routes"`
	Tunnels    []string      `json:"tunnels,omitempty"`
	// Overlay is how tunnelled traffic travels ("ipip", "fou" or "vxlan").
	Overlay    string   `json:"overlayEncap"`
	VXLANPeers []string `json:"vxlanPeers,omitempty"`
	FOUPorts   []string `json:"fouPorts,omitempty"`
}

// PeerDetails describes one BGP neighbour.
type PeerDetails struct {
	Address  string `json:"address"`
	ASN      uint32 `json:"asn"`
	Node     string `json:"node,omitempty"`
	State    string `json:"state"`
	Flaps    int    `json:"flaps"`
	RRClient bool   `json:"rrClient,omitempty"`
	// BFD is the BFD session's state (down, init, up, admin-down); empty without BFD.
	BFD string `json:"bfd,omitempty"`
}

// Details implements daemon.StatusReporter.
func (c *Controller) Details() any {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.details
}

func (c *Controller) setDetails(self nodeInfo, peers []Peer, states map[string]peerState, bfdStates map[string]string, adv advertisements, kernel route.State) {
	d := Details{Node: self.Name, Address: self.Address.String(), ASN: self.ASN, Overlay: c.overlay.Encap.String()}
	if self.AddressV6.IsValid() {
		d.AddressV6 = self.AddressV6.String()
	}
	for _, p := range self.PodCIDRs {
		d.PodCIDRs = append(d.PodCIDRs, p.String())
	}
	for _, p := range peers {
		st := states[p.Address.String()]
		d.Peers = append(d.Peers, PeerDetails{Address: p.Address.String(), ASN: p.ASN, Node: p.Node, State: st.State, Flaps: st.Flaps, RRClient: p.RRClient, BFD: bfdStates[p.Address.String()]})
	}
	for _, p := range adv.Prefixes {
		d.Announced = append(d.Announced, p.String())
	}
	for _, p := range adv.ToExternal {
		d.ToExternal = append(d.ToExternal, p.String())
	}
	for _, r := range kernel.Routes {
		d.Routes = append(d.Routes, r.String())
	}
	for _, t := range kernel.Tunnels {
		d.Tunnels = append(d.Tunnels, t.String())
	}
	for _, p := range kernel.Peers {
		d.VXLANPeers = append(d.VXLANPeers, p.String())
	}
	for _, p := range kernel.FOUPorts {
		d.FOUPorts = append(d.FOUPorts, p.String())
	}
	c.mu.Lock()
	c.details = d
	c.mu.Unlock()
}
