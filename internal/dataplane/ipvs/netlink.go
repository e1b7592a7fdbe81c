package ipvs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"

	mobyipvs "github.com/moby/ipvs"
	vnetlink "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// genlFamily is the name IPVS registers its generic netlink family under.
const genlFamily = "IPVS"

// Kernel programs the host's IPVS table over generic netlink.
type Kernel struct {
	mu sync.Mutex // one netlink socket: one request at a time
	h  *mobyipvs.Handle
}

// NewKernel opens a netlink handle on the current network namespace (it loads the
// ip_vs module if needed).
func NewKernel() (*Kernel, error) { return NewKernelAt("") }

// NewKernelAt opens a netlink handle on the network namespace bind-mounted or linked
// at nsPath ("" is the current one).
func NewKernelAt(nsPath string) (*Kernel, error) {
	h, err := mobyipvs.New(nsPath)
	if err != nil {
		return nil, fmt.Errorf("opening IPVS netlink handle: %w", err)
	}
	return &Kernel{h: h}, nil
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

// Close releases the netlink socket.
func (k *Kernel) Close() { k.h.Close() }

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

func toMobyDest(d DestKey, weight int) *mobyipvs.Destination {
	md := &mobyipvs.Destination{
		Address:         net.IP(d.Addr.AsSlice()),
		Port:            d.Port,
		Weight:          weight,
		ConnectionFlags: mobyipvs.ConnectionFlagMasq,
		AddressFamily:   syscall.AF_INET,
	}
	if d.Addr.Is6() {
		md.AddressFamily = syscall.AF_INET6
	}
	return md
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

// Services implements Interface. Firewall-mark services are skipped (we use none).
func (k *Kernel) Services() ([]Service, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	list, err := k.h.GetServices()
	if err != nil {
		return nil, fmt.Errorf("listing IPVS services: %w", err)
	}
	out := make([]Service, 0, len(list))
	for _, ms := range list {
		if s, ok := fromMobyService(ms); ok {
			out = append(out, s)
		}
	}
	return out, nil
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
			ActiveConns:   md.ActiveConnections,
			InactiveConns: md.InactiveConnections,
		})
	}
	return out, nil
}

// AddService implements Interface.
func (k *Kernel) AddService(s Service) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return mapErr(k.h.NewService(toMobyService(s)), "adding IPVS service "+s.String())
}

// UpdateService implements Interface.
func (k *Kernel) UpdateService(s Service) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return mapErr(k.h.UpdateService(toMobyService(s)), "updating IPVS service "+s.String())
}

// DeleteService implements Interface.
func (k *Kernel) DeleteService(key Key) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return mapErr(k.h.DelService(keyService(key)), "deleting IPVS service "+key.String())
}

// AddDestination implements Interface.
func (k *Kernel) AddDestination(key Key, d Destination) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return mapErr(k.h.NewDestination(keyService(key), toMobyDest(d.DestKey, d.Weight)),
		fmt.Sprintf("adding destination %s to %s", d.DestKey, key))
}

// UpdateDestination implements Interface.
func (k *Kernel) UpdateDestination(key Key, d Destination) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return mapErr(k.h.UpdateDestination(keyService(key), toMobyDest(d.DestKey, d.Weight)),
		fmt.Sprintf("updating destination %s of %s", d.DestKey, key))
}

// DeleteDestination implements Interface.
func (k *Kernel) DeleteDestination(key Key, d DestKey) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return mapErr(k.h.DelDestination(keyService(key), toMobyDest(d, 0)),
		fmt.Sprintf("deleting destination %s of %s", d, key))
}
