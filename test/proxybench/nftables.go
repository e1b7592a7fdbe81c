package proxybench

import (
	"net/netip"
	"regexp"
	"strings"
)

// nftService is one Service port's chain in kube-proxy's nftables table and the
// endpoints it sends traffic to.
type nftService struct {
	chain     string
	endpoints []netip.AddrPort
}

var (
	// dnatTarget is an endpoint in a DNAT rule: "dnat to 10.1.2.3:8080" for a single
	// endpoint, "dnat ip to numgen random mod 2 map { 0 : 10.1.2.3 . 8080, ... }" for
	// several (nft prints the map's elements as address . port).
	dnatTarget = regexp.MustCompile(`(\d+\.\d+\.\d+\.\d+)(?::| \. )(\d+)`)
	// endpointJump is a jump to a per-endpoint chain, which kube-proxy makes only for
	// Services with session affinity: "goto endpoint-<hash>-<ns>/<name>/tcp/<port>__10.1.2.3/8080".
	endpointJump = regexp.MustCompile(`endpoint-\S*__(\d+\.\d+\.\d+\.\d+)/(\d+)`)
)

// parseKubeProxyTable reads the Service chains of namespace out of `nft list table`
// (or `nft list chain`) text of kube-proxy's table, by Service name. kube-proxy names
// a chain per Service port "service-<hash>-<namespace>/<name>/<protocol>/<port>"; it
// DNATs to the endpoints there, or jumps to a chain per endpoint when the Service has
// session affinity.
func parseKubeProxyTable(text, namespace string) map[string]nftService {
	services := map[string]nftService{}
	var current string
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if name, ok := strings.CutPrefix(line, "chain "); ok {
			name = strings.TrimSuffix(name, " {")
			current = ""
			_, rest, found := strings.Cut(name, "-"+namespace+"/")
			if svc, _, _ := strings.Cut(rest, "/"); found && strings.HasPrefix(name, "service-") {
				current = svc
				services[svc] = nftService{chain: name}
			}
			continue
		}
		if current == "" || line == "}" {
			current = ""
			continue
		}
		found := endpointJump.FindAllStringSubmatch(line, -1)
		if strings.Contains(line, "dnat ") {
			found = append(found, dnatTarget.FindAllStringSubmatch(line, -1)...)
		}
		s := services[current]
		for _, m := range found {
			if ap, err := netip.ParseAddrPort(m[1] + ":" + m[2]); err == nil {
				s.endpoints = append(s.endpoints, ap)
			}
		}
		services[current] = s
	}
	return services
}
