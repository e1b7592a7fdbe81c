package netpol

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
	"sync"
)

// Names of what the compiler produces: the KUBE-ROUTER- prefix and a kind, which
// Owner claims.
const (
	topChain        = "KUBE-ROUTER-FORWARD"
	chainPrefix     = "KUBE-ROUTER-"
	podIngressKind  = "PI"
	podEgressKind   = "PE"
	polIngressKind  = "NI"
	polEgressKind   = "NE"
	cnpIngressKind  = "CI" // a ClusterNetworkPolicy's ingress rules
	cnpEgressKind   = "CE"
	peerSetKind     = "SP"                    // hash:ip of peer pods
	exceptSetKind   = "SX"                    // hash:net of an ipBlock's except list
	namedPortKind   = "SN"                    // hash:ip,port of pods exposing a named port
	enforcedSet     = "KUBE-ROUTER-ENFORCED-" // and the family: the enforced ledger
	hashLen         = 13
	commentMaxBytes = 200
)

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
