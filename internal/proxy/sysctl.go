package proxy

import "github.com/kube-routerd/kube-routerd/internal/dataplane/sysctl"

// requiredSysctls are the kernel settings IPVS in NAT mode needs on a node:
// conntrack entries for IPVS connections (so nat POSTROUTING can masquerade them),
// dropping connections to removed destinations and stale persistence templates at
// once, forwarding, and no ARP answers for VIPs held on the dummy interface.
var requiredSysctls = []sysctl.KV{
	{Key: "net/ipv4/vs/conntrack", Value: "1"},
	{Key: "net/ipv4/vs/expire_nodest_conn", Value: "1"},
	{Key: "net/ipv4/vs/expire_quiescent_template", Value: "1"},
	{Key: "net/ipv4/ip_forward", Value: "1"},
	{Key: "net/ipv4/conf/all/arp_ignore", Value: "1"},
	{Key: "net/ipv4/conf/all/arp_announce", Value: "2"},
}
