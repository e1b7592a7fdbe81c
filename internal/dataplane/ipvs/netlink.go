package ipvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"

	mobyipvs "github.com/moby/ipvs"
	vnetlink "github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/nlbatch"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/nsexec"
)

// genlFamily is the name IPVS registers its generic netlink family under.
const genlFamily = "IPVS"

// Kernel programs the host's IPVS table over generic netlink. moby/ipvs reads single
// services and their destinations (partial syncs); what scales with the number of
// Services goes through nlbatch (changes in batches, the service dump) and one read
// of /proc/net/ip_vs (every destination).
type Kernel struct {
	mu sync.Mutex // one request at a time on each socket
	h  *mobyipvs.Handle
	w  *writer
	// table is /proc/net/ip_vs of the namespace, opened there: the open file keeps
	// reading that namespace's table from any thread.
	table *os.File
}

// NewKernel opens a netlink handle on the current network namespace (it loads the
// ip_vs module if needed).
func NewKernel() (*Kernel, error) { return NewKernelAt("") }

// NewKernelAt opens a netlink handle on the network namespace bind-mounted or linked
// at nsPath ("" is the current one).
func NewKernelAt(nsPath string) (*Kernel, error) {
	// moby/ipvs loads the module if needed, so the family exists afterwards.
	h, err := mobyipvs.New(nsPath)
	if err != nil {
		return nil, fmt.Errorf("opening IPVS netlink handle: %w", err)
	}
	ns := netns.None()
	if nsPath != "" {
		if ns, err = netns.GetFromPath(nsPath); err != nil {
			h.Close()
			return nil, fmt.Errorf("opening network namespace %s: %w", nsPath, err)
		}
		defer ns.Close()
	}
	k := &Kernel{h: h}
	if k.w, err = openWriter(ns); err != nil {
		k.Close()
		return nil, err
	}
	err = nsexec.Run(ns, func() error {
		k.table, err = os.Open(procTablePath)
		return err
	})
	if err != nil {
		k.Close()
		return nil, fmt.Errorf("opening the IPVS table: %w", err)
	}
	return k, nil
}

// openWriter opens the writer's socket in namespace ns.
func openWriter(ns netns.NsHandle) (*writer, error) {
	genl, err := vnetlink.NewHandleAt(ns, unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("opening generic netlink: %w", err)
	}
	defer genl.Close()
	family, err := genl.GenlFamilyGet(genlFamily)
	if err != nil {
		return nil, fmt.Errorf("looking up the IPVS netlink family: %w", err)
	}
	sock, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_GENERIC)
	if err != nil {
		return nil, fmt.Errorf("opening IPVS netlink socket: %w", err)
	}
	sender, err := nlbatch.New(sock)
	if err != nil {
		sock.Close()
		return nil, err
	}
	return &writer{sender: sender, family: family.ID}, nil
}

// Loaded reports whether the running kernel has IPVS (its generic netlink family is
// registered: module ip_vs loaded or built in). It loads nothing and logs nothing;
// without IPVS loaded no virtual service can exist.
func Loaded() (bool, error) {
	h, err := vnetlink.NewHandle(unix.NETLINK_GENERIC)
	if err != nil {
		return false, fmt.Errorf("opening generic netlink: %w", err)
	}
	defer h.Close()
	if _, err := h.GenlFamilyGet(genlFamily); err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("looking up the IPVS netlink family: %w", err)
	}
	return true, nil
}

// Close releases the netlink sockets and the table file.
func (k *Kernel) Close() {
	k.h.Close()
	if k.w != nil {
		k.w.sender.Close()
	}
	if k.table != nil {
		k.table.Close()
	}
}

func toMobyService(s Service) *mobyipvs.Service {
	ms := &mobyipvs.Service{
		Address:   net.IP(s.Addr.AsSlice()),
		Protocol:  uint16(s.Proto),
		Port:      s.Port,
		SchedName: s.Scheduler,
		Flags:     s.Flags,
		Timeout:   s.Timeout,
	}
	// The netmask groups clients for persistence: one client address per group.
	if s.Addr.Is4() {
		ms.AddressFamily = syscall.AF_INET
		ms.Netmask = 0xffffffff
	} else {
		ms.AddressFamily = syscall.AF_INET6
		ms.Netmask = 128
	}
	return ms
}

func keyService(k Key) *mobyipvs.Service { return toMobyService(Service{Key: k}) }

func fromMobyService(ms *mobyipvs.Service) (Service, bool) {
	addr, ok := netip.AddrFromSlice(ms.Address)
	if !ok || ms.FWMark != 0 {
		return Service{}, false
	}
	return Service{
		Key:       Key{Addr: addr.Unmap(), Proto: Protocol(ms.Protocol), Port: ms.Port},
		Scheduler: ms.SchedName,
		Flags:     ms.Flags &^ flagHashed,
		Timeout:   ms.Timeout,
	}, true
}

func mapErr(err error, what string) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, syscall.ESRCH), errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("%s: %w (%v)", what, ErrNotFound, err)
	case errors.Is(err, syscall.EEXIST):
		return fmt.Errorf("%s: %w (%v)", what, ErrExists, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Services implements Interface, in one dump parsed here: moby/ipvs's parser took
// seconds for 10,000 services under emulation. Firewall-mark services are skipped (we
// use none).
func (k *Kernel) Services() ([]Service, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []Service
	req := nlbatch.Request{Type: k.w.family, Body: []byte{cmdGetService, genlVersion, 0, 0}}
	err := k.w.sender.Dump(req, func(body []byte) error {
		if len(body) < 4 {
			return nil
		}
		for typ, attr := range nlbatch.Attrs(body[4:]) { // after the genl header
			if typ != cmdAttrService {
				continue
			}
			s, ok, err := parseService(attr)
			if err != nil {
				return err
			}
			if ok {
				out = append(out, s)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing IPVS services: %w", err)
	}
	return out, nil
}

// Stats implements Interface, in one dump like Services.
func (k *Kernel) Stats() (map[Key]Stats, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[Key]Stats{}
	req := nlbatch.Request{Type: k.w.family, Body: []byte{cmdGetService, genlVersion, 0, 0}}
	err := k.w.sender.Dump(req, func(body []byte) error {
		if len(body) < 4 {
			return nil
		}
		for typ, attr := range nlbatch.Attrs(body[4:]) {
			if typ != cmdAttrService {
				continue
			}
			s, ok, err := parseService(attr)
			if err != nil {
				return err
			}
			if ok {
				out[s.Key] = parseStats(attr)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading IPVS counters: %w", err)
	}
	return out, nil
}

// parseStats reads the 64-bit counters nested in a service's attributes.
func parseStats(svc []byte) Stats {
	var st Stats
	for typ, v := range nlbatch.Attrs(svc) {
		if typ != svcAttrStats64 {
			continue
		}
		for field, c := range nlbatch.Attrs(v) {
			if len(c) < 8 {
				continue
			}
			n := binary.NativeEndian.Uint64(c)
			switch field {
			case statsAttrConns:
				st.Connections = n
			case statsAttrInPkts:
				st.PacketsIn = n
			case statsAttrOutPkts:
				st.PacketsOut = n
			case statsAttrInBytes:
				st.BytesIn = n
			case statsAttrOutBytes:
				st.BytesOut = n
			}
		}
	}
	return st
}

// parseService reads a service's attributes; ok is false for a firewall-mark service.
func parseService(b []byte) (s Service, ok bool, err error) {
	var af uint16
	var addr []byte
	for typ, v := range nlbatch.Attrs(b) {
		switch {
		case typ == svcAttrAF && len(v) >= 2:
			af = binary.NativeEndian.Uint16(v)
		case typ == svcAttrProtocol && len(v) >= 2:
			s.Proto = Protocol(binary.NativeEndian.Uint16(v))
		case typ == svcAttrAddr:
			addr = v
		case typ == svcAttrPort && len(v) >= 2:
			s.Port = binary.BigEndian.Uint16(v)
		case typ == svcAttrFWMark && len(v) >= 4 && binary.NativeEndian.Uint32(v) != 0:
			return Service{}, false, nil
		case typ == svcAttrSchedName:
			s.Scheduler = strings.TrimRight(string(v), "\x00")
		case typ == svcAttrFlags && len(v) >= 4:
			s.Flags = binary.NativeEndian.Uint32(v) &^ flagHashed
		case typ == svcAttrTimeout && len(v) >= 4:
			s.Timeout = binary.NativeEndian.Uint32(v)
		}
	}
	switch {
	case af == unix.AF_INET && len(addr) >= 4:
		s.Addr = netip.AddrFrom4([4]byte(addr[:4]))
	case af == unix.AF_INET6 && len(addr) >= 16:
		s.Addr = netip.AddrFrom16([16]byte(addr[:16]))
	default:
		return Service{}, false, fmt.Errorf("IPVS service of family %d with a %d-byte address", af, len(addr))
	}
	return s, true, nil
}

// Service implements Interface.
func (k *Kernel) Service(key Key) (Service, bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	ms, err := k.h.GetService(keyService(key))
	if err != nil {
		if err = mapErr(err, "getting IPVS service "+key.String()); errors.Is(err, ErrNotFound) {
			return Service{}, false, nil
		}
		return Service{}, false, err
	}
	s, ok := fromMobyService(ms)
	return s, ok, nil
}

// Destinations implements Interface.
func (k *Kernel) Destinations(key Key) ([]Destination, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	list, err := k.h.GetDestinations(keyService(key))
	if err != nil {
		return nil, mapErr(err, "listing destinations of "+key.String())
	}
	out := make([]Destination, 0, len(list))
	for _, md := range list {
		addr, ok := netip.AddrFromSlice(md.Address)
		if !ok {
			continue
		}
		out = append(out, Destination{
			DestKey:       DestKey{Addr: addr.Unmap(), Port: md.Port},
			Weight:        md.Weight,
			Forward:       Forward(md.ConnectionFlags & mobyipvs.ConnectionFlagFwdMask),
			ActiveConns:   md.ActiveConnections,
			InactiveConns: md.InactiveConnections,
		})
	}
	return out, nil
}

// AllDestinations implements Interface. The /proc table gives every destination in
// one read, but the kernel keeps a single service hash for all network namespaces and
// its /proc iterator goes wrong when another namespace has IPVS services: each
// page-sized read resumes at a position counted over every namespace's services and
// looked up among this one's alone, so services are skipped. Those the table missed
// are asked for over netlink, one dump each.
func (k *Kernel) AllDestinations(listed []Service) (map[Key][]Destination, error) {
	table, err := k.readTable()
	if err != nil {
		return nil, err
	}
	for _, s := range listed {
		if _, ok := table[s.Key]; ok {
			continue
		}
		dests, err := k.Destinations(s.Key)
		switch {
		case errors.Is(err, ErrNotFound):
			continue // deleted since it was listed
		case err != nil:
			return nil, err
		}
		table[s.Key] = dests
	}
	return table, nil
}

func (k *Kernel) readTable() (map[Key][]Destination, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, err := k.table.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("reading %s: %w", procTablePath, err)
	}
	data, err := io.ReadAll(k.table)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", procTablePath, err)
	}
	return parseProcTable(data)
}

// Apply implements Interface.
func (k *Kernel) Apply(changes []Change) []error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.w.apply(changes)
}

func (k *Kernel) applyOne(c Change) error { return k.Apply([]Change{c})[0] }

// Timeouts implements Interface.
func (k *Kernel) Timeouts() (Timeouts, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, err := k.h.GetConfig()
	if err != nil {
		return Timeouts{}, fmt.Errorf("reading the IPVS timeouts: %w", err)
	}
	return Timeouts{TCP: c.TimeoutTCP, TCPFin: c.TimeoutTCPFin, UDP: c.TimeoutUDP}, nil
}

// SetTimeouts implements Interface.
func (k *Kernel) SetTimeouts(t Timeouts) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.h.SetConfig(&mobyipvs.Config{TimeoutTCP: t.TCP, TimeoutTCPFin: t.TCPFin, TimeoutUDP: t.UDP}); err != nil {
		return fmt.Errorf("setting the IPVS timeouts to %s: %w", t, err)
	}
	return nil
}

// AddService implements Interface.
func (k *Kernel) AddService(s Service) error {
	return k.applyOne(Change{Op: OpAddService, Service: s})
}

// UpdateService implements Interface.
func (k *Kernel) UpdateService(s Service) error {
	return k.applyOne(Change{Op: OpUpdateService, Service: s})
}

// DeleteService implements Interface.
func (k *Kernel) DeleteService(key Key) error {
	return k.applyOne(Change{Op: OpDeleteService, Service: Service{Key: key}})
}

// AddDestination implements Interface.
func (k *Kernel) AddDestination(key Key, d Destination) error {
	return k.applyOne(Change{Op: OpAddDestination, Service: Service{Key: key}, Dest: d})
}

// UpdateDestination implements Interface.
func (k *Kernel) UpdateDestination(key Key, d Destination) error {
	return k.applyOne(Change{Op: OpUpdateDestination, Service: Service{Key: key}, Dest: d})
}

// DeleteDestination implements Interface.
func (k *Kernel) DeleteDestination(key Key, d DestKey) error {
	return k.applyOne(Change{Op: OpDeleteDestination, Service: Service{Key: key}, Dest: Destination{DestKey: d}})
}
