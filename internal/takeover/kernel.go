package takeover

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netns"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipset"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/iptables"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// iptablesTables are the tables kube-router writes to.
var iptablesTables = []string{iptables.TableFilter, iptables.TableNAT, iptables.TableMangle}

// Kernel is where a takeover reads and removes kube-router's objects: the thin
// adapters of the namespace the daemon runs in, and the CNI directory.
type Kernel struct {
	IPTables []iptables.Interface
	IPSets   ipset.Interface
	Routes   route.Netlink
	// OurCNIFile is the path of kube-routerd's CNI configuration; kube-router's files
	// are looked for in its directory.
	OurCNIFile string
}

// KernelAt returns the Kernel of network namespace ns (route changes go to the
// caller's namespace: the daemon runs in the node's).
func KernelAt(ns netns.NsHandle, ourCNIFile string) (Kernel, error) {
	k := Kernel{OurCNIFile: ourCNIFile}
	for _, proto := range []ipfamily.Family{ipfamily.IPv4, ipfamily.IPv6} {
		ipt, err := iptables.NewAt(proto, ns)
		if err != nil {
			return Kernel{}, err
		}
		k.IPTables = append(k.IPTables, ipt)
	}
	sets, err := ipset.NewAt(ns)
	if err != nil {
		return Kernel{}, err
	}
	k.IPSets = sets
	return k, nil
}

// Read returns what the kernel and the CNI directory hold now.
func (k Kernel) Read() (View, error) {
	v := View{IPTables: map[ipfamily.Family]map[string]map[string][]string{}}
	for _, ipt := range k.IPTables {
		tables := map[string]map[string][]string{}
		for _, table := range iptablesTables {
			chains, err := ipt.SaveChains(table)
			if err != nil {
				return View{}, err
			}
			tables[table] = chains
		}
		v.IPTables[ipt.Family()] = tables
	}
	var err error
	if v.Sets, err = k.IPSets.Names(); err != nil {
		return View{}, err
	}
	if v.ZebraRoutes, err = k.Routes.TableRoutes(254, protocolZebra); err != nil {
		return View{}, err
	}
	for _, t := range policyTables {
		rs, err := k.Routes.TableRoutes(t, 0)
		if err != nil {
			return View{}, err
		}
		v.PolicyRoutes = append(v.PolicyRoutes, rs...)
	}
	if v.IPRules, err = k.Routes.Rules(); err != nil {
		return View{}, err
	}
	if v.Links, err = k.Routes.Links(); err != nil {
		return View{}, err
	}
	dir := filepath.Dir(k.OurCNIFile)
	for _, name := range cniFiles {
		path := filepath.Join(dir, name)
		if _, err := os.Stat(path); err == nil {
			v.CNIFiles = append(v.CNIFiles, path)
		}
	}
	_, err = os.Stat(k.OurCNIFile)
	v.OurCNIWritten = err == nil
	return v, nil
}

// Remove removes objs in order and returns those it removed and one error per failure.
// Chains of one table are removed together: kube-router's chains jump to each other.
func (k Kernel) Remove(objs []Object) (removed []Object, errs []error) {
	done := func(o Object, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", o, err))
			return
		}
		removed = append(removed, o)
	}
	for i := 0; i < len(objs); i++ {
		o := objs[i]
		switch o.Kind {
		case KindRule:
			done(o, k.iptables(o.Family).DeleteRule(o.Table, o.Chain, splitRule(o.Rule)...))
		case KindChain:
			batch := []Object{o}
			for i+1 < len(objs) && objs[i+1].Kind == KindChain && objs[i+1].Family == o.Family && objs[i+1].Table == o.Table {
				i++
				batch = append(batch, objs[i])
			}
			err := k.deleteChains(batch)
			for _, c := range batch {
				done(c, err)
			}
		case KindSet:
			done(o, k.IPSets.Destroy(o.Name))
		case KindIPRule:
			done(o, k.Routes.DeleteRule(o.IPRule))
		case KindRoute:
			done(o, k.Routes.DeleteTableRoute(o.Route))
		case KindTunnel:
			done(o, k.Routes.DeleteLink(o.Link))
		case KindCNIFile:
			err := os.Remove(o.Name)
			if errors.Is(err, fs.ErrNotExist) {
				err = nil
			}
			done(o, err)
		default:
			done(o, fmt.Errorf("kube-routerd does not remove a %s", o.Kind))
		}
	}
	return removed, errs
}

func (k Kernel) iptables(fam ipfamily.Family) iptables.Interface {
	for _, ipt := range k.IPTables {
		if ipt.Family() == fam {
			return ipt
		}
	}
	return nil
}

func (k Kernel) deleteChains(chains []Object) error {
	buf := iptables.Buffer{Table: chains[0].Table}
	for _, c := range chains {
		buf.Delete = append(buf.Delete, c.Name)
	}
	data, err := buf.Bytes()
	if err != nil {
		return err
	}
	return k.iptables(chains[0].Family).Restore(data)
}

// splitRule splits a rule as iptables-save prints it into arguments, unquoting the
// double-quoted ones (comments).
func splitRule(rule string) []string {
	var args []string
	var cur strings.Builder
	inQuote, inArg := false, false
	for _, r := range rule {
		switch {
		case r == '"':
			inQuote, inArg = !inQuote, true
		case r == ' ' && !inQuote:
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(r)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args
}
