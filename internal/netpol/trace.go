package netpol

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/netfilter"
)

// packet is what the policy chains look at in one packet.
type packet struct {
	src, dst    netip.Addr
	proto       string // tcp, udp, sctp, ipv6-icmp
	dport       int
	icmpType    int // for ipv6-icmp
	hopLimit    int
	srcLocal    bool // source is one of the node's own addresses
	dstLocal    bool // destination is one of the node's own addresses
	established bool // conntrack says ESTABLISHED or RELATED
	// served says the destination is a virtual service IPVS answers (its address and
	// port are in the proxy's ledger set).
	served bool
}

// evaluator runs packets through chains and sets the way the kernel does, for the
// subset of iptables the compiler emits; a rule outside that subset is an error, never
// a guess. explain reads the compiled Ruleset with it, and the unit tests read the
// fake kernels with it, so both follow one reading of the rules.
type evaluator struct {
	chains map[string][]string
	sets   map[string]evalSet
	// pastDrops makes a drop in a pod's chain end only that chain: the top chain goes
	// on, so that a trace shows the other direction too. The verdict is still a drop.
	pastDrops bool
}

type evalSet struct {
	typ     ipset.Type
	entries map[string]bool
}

// step is one rule that matched a packet: its chain, its text and its target.
type step struct {
	chain, rule, target string
}

// newEvaluator reads chains (with the built-in chains holding the jumps into ours)
// and sets.
func newEvaluator(chains map[string][]string, sets []ipset.SetEntries) *evaluator {
	e := &evaluator{chains: chains, sets: make(map[string]evalSet, len(sets))}
	for _, s := range sets {
		es := evalSet{typ: s.Type, entries: make(map[string]bool, len(s.Entries))}
		for _, entry := range s.Entries {
			es.entries[entry] = true
		}
		e.sets[s.Name] = es
	}
	return e
}

// rulesetEvaluator reads a desired Ruleset as the kernel holds it once applied: our
// chains, and the built-in chains holding our jumps.
func rulesetEvaluator(r *netfilter.Ruleset) *evaluator {
	chains := make(map[string][]string, len(r.Chains)+len(r.Jumps))
	for _, c := range r.Chains {
		chains[c.Name] = c.Rules
	}
	for _, j := range r.Jumps {
		chains[j.Chain] = append(chains[j.Chain], j.Rule)
	}
	return newEvaluator(chains, slices.Concat(r.Sets, r.Ledgers))
}

// verdict runs p through the built-in chain hook and reports whether it is dropped,
// with every rule that matched, in order. A built-in chain we have no jump in lets
// everything through.
func (e *evaluator) verdict(hook string, p packet) (dropped bool, trace []step, err error) {
	if _, ok := e.chains[hook]; !ok {
		return false, nil, nil
	}
	var mark uint32
	v, err := e.run(hook, p, &mark, 0, &trace)
	return v == "DROP", trace, err
}

// run evaluates chain and returns "DROP" or "" (fell through or returned).
func (e *evaluator) run(chain string, p packet, mark *uint32, depth int, trace *[]step) (string, error) {
	if depth > 10 {
		return "", fmt.Errorf("jump loop at %s", chain)
	}
	rules, ok := e.chains[chain]
	if !ok {
		return "", fmt.Errorf("jump to missing chain %s", chain)
	}
	dropped := false
	for _, r := range rules {
		target, matched, err := e.match(r, p, *mark)
		if err != nil {
			return "", err
		}
		if !matched {
			continue
		}
		f := tokens(target)
		*trace = append(*trace, step{chain: chain, rule: r, target: f[0]})
		switch f[0] {
		case "RETURN":
			return dropVerdict(dropped), nil
		case "DROP":
			return "DROP", nil
		case "NFLOG":
		case "MARK":
			if len(f) < 3 {
				return "", fmt.Errorf("MARK without value in %q", r)
			}
			v, m, err := parseMark(f[2])
			if err != nil {
				return "", err
			}
			*mark = (*mark &^ m) | v
		default:
			before := *mark
			v, err := e.run(f[0], p, mark, depth+1, trace)
			if err != nil {
				return "", err
			}
			if v == "DROP" {
				if !e.pastDrops || chain != topChain {
					return v, nil
				}
				dropped, *mark = true, before
			}
		}
	}
	return dropVerdict(dropped), nil
}

func dropVerdict(dropped bool) string {
	if dropped {
		return "DROP"
	}
	return ""
}

// match evaluates the matches of rule and returns its target (with arguments).
func (e *evaluator) match(rule string, p packet, mark uint32) (string, bool, error) {
	f := tokens(rule)
	ok := true
	arg := func(i int) (string, error) {
		if i >= len(f) {
			return "", fmt.Errorf("rule ends early: %q", rule)
		}
		return f[i], nil
	}
	for i := 0; i < len(f); i++ {
		neg := false
		if f[i] == "!" {
			neg = true
			i++
		}
		tok, err := arg(i)
		if err != nil {
			return "", false, err
		}
		var m bool
		switch tok {
		case "-j":
			return strings.Join(f[i+1:], " "), ok, nil
		case "-m":
			module, err := arg(i + 1)
			if err != nil {
				return "", false, err
			}
			i++
			switch module {
			case "comment", "limit", "tcp", "udp", "sctp", "icmp6", "hl":
				continue
			case "conntrack": // --ctstate RELATED,ESTABLISHED
				m, i = p.established, i+2
			case "addrtype": // [!] --src-type LOCAL or [!] --dst-type LOCAL
				if f[i+1] == "!" {
					neg = !neg
					i++
				}
				dir, err := arg(i + 1)
				if err != nil {
					return "", false, err
				}
				switch dir {
				case "--src-type":
					m = p.srcLocal
				case "--dst-type":
					m = p.dstLocal
				default:
					return "", false, fmt.Errorf("unknown addrtype match %q in %q", dir, rule)
				}
				i += 2
			case "mark": // [!] --mark v/m
				if f[i+1] == "!" {
					neg = !neg
					i++
				}
				s, err := arg(i + 2)
				if err != nil {
					return "", false, err
				}
				v, msk, err := parseMark(s)
				if err != nil {
					return "", false, err
				}
				m, i = mark&msk == v, i+2
			case "set": // [!] --match-set name dirs
				if f[i+1] == "!" {
					neg = !neg
					i++
				}
				dirs, err := arg(i + 3)
				if err != nil {
					return "", false, err
				}
				if m, err = e.inSet(f[i+2], dirs, p); err != nil {
					return "", false, err
				}
				i += 3
			default:
				return "", false, fmt.Errorf("unknown match module %q in %q", module, rule)
			}
		case "-s", "-d":
			s, err := arg(i + 1)
			if err != nil {
				return "", false, err
			}
			pfx, err := netip.ParsePrefix(s)
			if err != nil {
				return "", false, fmt.Errorf("bad address in %q: %w", rule, err)
			}
			addr := p.src
			if tok == "-d" {
				addr = p.dst
			}
			m, i = pfx.Contains(addr), i+1
		case "-i", "-o":
			// Interfaces are not part of a packet here: only the jumps name them, and
			// the callers pick the hook a packet takes.
			m, i = true, i+1
		case "-p":
			s, err := arg(i + 1)
			if err != nil {
				return "", false, err
			}
			m, i = p.proto == s, i+1
		case "--dport":
			s, err := arg(i + 1)
			if err != nil {
				return "", false, err
			}
			lo, hi, _ := strings.Cut(s, ":")
			l, err1 := strconv.Atoi(lo)
			h := l
			var err2 error
			if hi != "" {
				h, err2 = strconv.Atoi(hi)
			}
			if err1 != nil || err2 != nil {
				return "", false, fmt.Errorf("bad port range in %q", rule)
			}
			m, i = p.dport >= l && p.dport <= h, i+1
		case "--icmpv6-type":
			s, err := arg(i + 1)
			if err != nil {
				return "", false, err
			}
			m, i = p.proto == "ipv6-icmp" && strconv.Itoa(p.icmpType) == s, i+1
		case "--hl-eq":
			s, err := arg(i + 1)
			if err != nil {
				return "", false, err
			}
			m, i = strconv.Itoa(p.hopLimit) == s, i+1
		case "--comment", "--limit", "--limit-burst":
			i++
			continue
		default:
			return "", false, fmt.Errorf("unknown token %q in %q", tok, rule)
		}
		if m == neg {
			ok = false
		}
	}
	return "", false, fmt.Errorf("rule without target: %q", rule)
}

// inSet reports whether p is in set name, looked up by dirs ("src", "dst",
// "dst,dst"). The proxy's ledger set is not ours: p.served stands for it.
func (e *evaluator) inSet(name, dirs string, p packet) (bool, error) {
	if name == ipvs.LedgerSetV4 || name == ipvs.LedgerSetV6 {
		return p.served, nil
	}
	set, ok := e.sets[name]
	if !ok {
		return false, fmt.Errorf("rule references missing set %s", name)
	}
	addr := p.src
	if strings.HasPrefix(dirs, "dst") {
		addr = p.dst
	}
	switch set.typ {
	case ipset.HashIP:
		return set.entries[addr.String()], nil
	case ipset.HashIPPort:
		return set.entries[fmt.Sprintf("%s,%s:%d", addr, p.proto, p.dport)], nil
	case ipset.HashNet:
		for entry := range set.entries {
			pfx, err := netip.ParsePrefix(entry)
			if err != nil {
				return false, fmt.Errorf("set %s: bad entry %q", name, entry)
			}
			if pfx.Contains(addr) {
				return true, nil
			}
		}
		return false, nil
	}
	return false, fmt.Errorf("set %s has type %s, which our rules do not use", name, set.typ)
}

func parseMark(s string) (uint32, uint32, error) {
	v, m, _ := strings.Cut(s, "/")
	vi, err1 := strconv.ParseUint(v, 0, 32)
	mi, err2 := strconv.ParseUint(m, 0, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("bad mark %q", s)
	}
	return uint32(vi), uint32(mi), nil
}

// tokens splits a rule on spaces, keeping double-quoted strings together (without
// their quotes).
func tokens(s string) []string {
	var out []string
	for len(s) > 0 {
		s = strings.TrimLeft(s, " ")
		if s == "" {
			break
		}
		if s[0] == '"' {
			end := strings.Index(s[1:], `"`) + 1
			if end == 0 { // unterminated: the rest is one token
				out = append(out, s[1:])
				break
			}
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
