package netpol

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
)

// packet is what the evaluator needs to know about one forwarded packet.
type packet struct {
	src, dst    netip.Addr
	proto       string // tcp, udp, sctp, ipv6-icmp
	dport       int
	icmpType    int // for ipv6-icmp
	hopLimit    int
	srcLocal    bool // source is one of the node's own addresses
	established bool // conntrack says ESTABLISHED or RELATED
}

// kernel evaluates packets against the FORWARD chain of a fake dataplane, interpreting
// the subset of iptables the compiler emits. It is how unit tests check semantics
// (who may talk to whom) instead of rule text.
type kernel struct {
	chains map[string][]string
	sets   map[string]map[string]bool
	setTyp map[string]ipset.Type
}

func readKernel(t *testing.T, ipt iptables.Interface, sets ipset.Interface) *kernel {
	t.Helper()
	chains, err := ipt.SaveChains(iptables.TableFilter)
	if err != nil {
		t.Fatal(err)
	}
	all, err := sets.ListAll()
	if err != nil {
		t.Fatal(err)
	}
	k := &kernel{chains: chains, sets: map[string]map[string]bool{}, setTyp: map[string]ipset.Type{}}
	for _, s := range all {
		k.sets[s.Name] = map[string]bool{}
		k.setTyp[s.Name] = s.Type
		for _, e := range s.Entries {
			k.sets[s.Name][e] = true
		}
	}
	return k
}

// allowed reports whether the packet leaves FORWARD without being dropped.
func (k *kernel) allowed(t *testing.T, p packet) bool {
	var mark uint32
	verdict := k.run(t, "FORWARD", p, &mark, 0)
	return verdict != "DROP"
}

// allowedOut reports whether the packet leaves OUTPUT without being dropped: the path
// of what the node sends itself, and of what IPVS forwards to a Service's backend.
func (k *kernel) allowedOut(t *testing.T, p packet) bool {
	var mark uint32
	verdict := k.run(t, "OUTPUT", p, &mark, 0)
	return verdict != "DROP"
}

// run evaluates chain and returns "DROP" or "" (fell through / returned).
func (k *kernel) run(t *testing.T, chain string, p packet, mark *uint32, depth int) string {
	if depth > 10 {
		t.Fatalf("jump loop at %s", chain)
	}
	rules, ok := k.chains[chain]
	if !ok {
		t.Fatalf("jump to missing chain %s", chain)
	}
	for _, r := range rules {
		target, matched := k.match(t, r, p, *mark)
		if !matched {
			continue
		}
		f := tokens(target)
		switch f[0] {
		case "RETURN":
			return ""
		case "DROP":
			return "DROP"
		case "NFLOG":
		case "MARK":
			v, m := parseMark(t, f[2])
			*mark = (*mark &^ m) | v
		default:
			if v := k.run(t, f[0], p, mark, depth+1); v == "DROP" {
				return v
			}
		}
	}
	return ""
}

// match evaluates the matches of rule and returns its target (with arguments).
func (k *kernel) match(t *testing.T, rule string, p packet, mark uint32) (string, bool) {
	f := tokens(rule)
	ok := true
	for i := 0; i < len(f); i++ {
		neg := false
		if f[i] == "!" {
			neg = true
			i++
		}
		var m bool
		switch f[i] {
		case "-j":
			return strings.Join(f[i+1:], " "), ok
		case "-m":
			switch f[i+1] {
			case "comment", "limit", "tcp", "udp", "sctp", "icmp6", "hl":
				i++
				continue
			case "conntrack":
				m, i = p.established, i+3
			case "addrtype":
				i += 2
				if f[i] == "!" {
					neg = true
					i++
				}
				m, i = p.srcLocal, i+1
			case "mark":
				i += 2
				if f[i] == "!" {
					neg = true
					i++
				}
				v, msk := parseMark(t, f[i+1])
				m, i = mark&msk == v, i+1
			case "set":
				i += 2
				if f[i] == "!" {
					neg = true
					i++
				}
				m, i = k.inSet(t, f[i+1], f[i+2], p), i+2
			default:
				t.Fatalf("unknown match module %q in %q", f[i+1], rule)
			}
		case "-s", "-d":
			pfx := netip.MustParsePrefix(f[i+1])
			addr := p.src
			if f[i] == "-d" {
				addr = p.dst
			}
			m, i = pfx.Contains(addr), i+1
		case "-p":
			m, i = p.proto == f[i+1], i+1
		case "--dport":
			lo, hi, _ := strings.Cut(f[i+1], ":")
			l, _ := strconv.Atoi(lo)
			h := l
			if hi != "" {
				h, _ = strconv.Atoi(hi)
			}
			m, i = p.dport >= l && p.dport <= h, i+1
		case "--icmpv6-type":
			m, i = p.proto == "ipv6-icmp" && strconv.Itoa(p.icmpType) == f[i+1], i+1
		case "--hl-eq":
			m, i = strconv.Itoa(p.hopLimit) == f[i+1], i+1
		case "--comment", "--limit", "--limit-burst":
			i++
			continue
		default:
			t.Fatalf("unknown token %q in %q", f[i], rule)
		}
		if m == neg {
			ok = false
		}
	}
	t.Fatalf("rule without target: %q", rule)
	return "", false
}

func (k *kernel) inSet(t *testing.T, name, dirs string, p packet) bool {
	set, ok := k.sets[name]
	if !ok {
		t.Fatalf("rule references missing set %s", name)
	}
	addr := p.src
	if strings.HasPrefix(dirs, "dst") {
		addr = p.dst
	}
	switch k.setTyp[name] {
	case ipset.HashIP:
		return set[addr.String()]
	case ipset.HashIPPort:
		return set[fmt.Sprintf("%s,%s:%d", addr, p.proto, p.dport)]
	case ipset.HashNet:
		for e := range set {
			if netip.MustParsePrefix(e).Contains(addr) {
				return true
			}
		}
	}
	return false
}

func parseMark(t *testing.T, s string) (uint32, uint32) {
	v, m, _ := strings.Cut(s, "/")
	vi, err1 := strconv.ParseUint(v, 0, 32)
	mi, err2 := strconv.ParseUint(m, 0, 32)
	if err1 != nil || err2 != nil {
		t.Fatalf("bad mark %q", s)
	}
	return uint32(vi), uint32(mi)
}

// tokens splits a rule on spaces, keeping double-quoted strings together.
func tokens(s string) []string {
	var out []string
	for len(s) > 0 {
		s = strings.TrimLeft(s, " ")
		if s == "" {
			break
		}
		if s[0] == '"' {
			end := strings.Index(s[1:], `"`) + 1
			out = append(out, s[1:end])
			s = s[end+1:]
			continue
		}
		i := strings.IndexByte(s, ' ')
		if i < 0 {
			i = len(s)
		}
		out = append(out, s[:i])
		s = s[i:]
	}
	return slices.Clip(out)
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
