// Package ipvs is kube-routerd's thin adapter over the kernel's IPVS table: virtual
// services and their destinations as plain comparable values, a netlink implementation
// (moby/ipvs) and an in-memory fake that can dump its state as text.
package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Protocol is an IP protocol number IPVS balances (TCP, UDP or SCTP).
type Protocol uint16

// The protocols a Kubernetes Service port can have.
const (
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", uint16(p))
}

// Service flags the kernel understands (include/uapi/linux/ip_vs.h).
const (
	// FlagPersistent makes a client stick to one destination for Timeout seconds.
	FlagPersistent uint32 = 0x0001
	// flagHashed is set by the kernel on every listed service; it is not ours to set.
	flagHashed uint32 = 0x0002
	// FlagSched1, FlagSched2 and FlagSched3 are scheduler specific (for sh and mh:
	// fallback to another destination, include the port in the hash).
	FlagSched1 uint32 = 0x0008
	FlagSched2 uint32 = 0x0010
	FlagSched3 uint32 = 0x0020
)

// Key identifies a virtual service: address, protocol and port.
type Key struct {
	Addr  netip.Addr
	Proto Protocol
	Port  uint16
}

func (k Key) String() string {
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.Addr, k.Port), k.Proto)
}

// Compare orders keys by address, protocol and port.
func (k Key) Compare(o Key) int {
	if c := k.Addr.Compare(o.Addr); c != 0 {
		return c
	}
	if k.Proto != o.Proto {
		return int(k.Proto) - int(o.Proto)
	}
	return int(k.Port) - int(o.Port)
}

// Service is a virtual service with the options we program.
type Service struct {
	Key
	Scheduler string
	Flags     uint32
	// Timeout is the persistence timeout in seconds (with FlagPersistent).
	Timeout uint32
}

func (s Service) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", s.Key, s.Scheduler)
	if s.Flags&FlagPersistent != 0 {
		fmt.Fprintf(&b, " persistent %ds", s.Timeout)
	}
	for _, f := range []struct {
		bit  uint32
		name string
	}{{FlagSched1, "flag-1"}, {FlagSched2, "flag-2"}, {FlagSched3, "flag-3"}} {
		if s.Flags&f.bit != 0 {
			b.WriteString(" " + f.name)
		}
	}
	return b.String()
}

// DestKey identifies a destination (real server) within a virtual service.
type DestKey struct {
	Addr netip.Addr
	Port uint16
}

func (d DestKey) String() string { return netip.AddrPortFrom(d.Addr, d.Port).String() }

// Forward is how IPVS reaches a destination (IP_VS_CONN_F_* in ip_vs.h).
type Forward uint32

// The forwarding methods kube-routerd programs.
const (
	// Masquerade rewrites the destination address (NAT); replies come back through
	// IPVS, which rewrites their source.
	Masquerade Forward = 0
	// Tunnel encapsulates the packet in IPIP to the destination, which holds the
	// virtual address itself and replies to the client directly (DSR).
	Tunnel Forward = 2
	// forwardLocal and forwardRoute are the kernel's other methods (local node, direct
	// routing); kube-routerd reads them but never programs them.
	forwardLocal Forward = 1
	forwardRoute Forward = 3
)

func (f Forward) String() string {
	switch f {
	case Masquerade:
		return "masq"
	case Tunnel:
		return "tunnel"
	case forwardLocal:
		return "local"
	case forwardRoute:
		return "route"
	}
	return fmt.Sprintf("forward-%d", uint32(f))
}

// Destination is one real server of a virtual service. Connection counts are read
// from the kernel and ignored when programming.
type Destination struct {
	DestKey
	Weight int
	// Forward is the forwarding method (the zero value is Masquerade).
	Forward Forward
	// ActiveConns and InactiveConns count the connections the kernel still tracks.
	ActiveConns   int
	InactiveConns int
}

// Interface is what the service proxy needs from IPVS.
type Interface interface {
	// Services lists every virtual service in the kernel, ours or not.
	Services() ([]Service, error)
	// Service returns one virtual service; ok is false when it does not exist.
	Service(k Key) (s Service, ok bool, err error)
	// Destinations lists the real servers of a virtual service.
	Destinations(k Key) ([]Destination, error)
	// AllDestinations lists the real servers of the listed virtual services (as
	// Services returned them), in one read where the kernel allows: an empty list for
	// a service without any, none for one deleted since.
	AllDestinations(listed []Service) (map[Key][]Destination, error)
	AddService(s Service) error
	UpdateService(s Service) error
	DeleteService(k Key) error
	AddDestination(k Key, d Destination) error
	UpdateDestination(k Key, d Destination) error
	DeleteDestination(k Key, d DestKey) error
	// Apply makes the changes in order, in as few kernel round trips as it can, and
	// returns one error per change (nil where it succeeded).
	Apply(changes []Change) []error
	// Stats reads the traffic counters of every virtual service in the kernel.
	Stats() (map[Key]Stats, error)
	// Timeouts reads the connection timeouts of the network namespace's IPVS.
	Timeouts() (Timeouts, error)
	// SetTimeouts sets them; a zero field leaves that timeout as it is.
	SetTimeouts(t Timeouts) error
}

// Stats are a virtual service's traffic counters since it was created.
type Stats struct {
	Connections           uint64
	PacketsIn, PacketsOut uint64
	BytesIn, BytesOut     uint64
}

// Timeouts are IPVS's idle timeouts of the connections it tracks, in whole seconds
// (ipvsadm --set tcp tcpfin udp); one set per network namespace.
type Timeouts struct {
	TCP    time.Duration
	TCPFin time.Duration
	UDP    time.Duration
}

func (t Timeouts) String() string {
	return fmt.Sprintf("tcp %ds tcpfin %ds udp %ds", int64(t.TCP.Seconds()), int64(t.TCPFin.Seconds()), int64(t.UDP.Seconds()))
}

// Op is a kind of change to the IPVS table.
type Op uint8

// The changes Apply makes.
const (
	OpAddService Op = iota + 1
	OpUpdateService
	OpDeleteService
	OpAddDestination
	OpUpdateDestination
	OpDeleteDestination
)

func (o Op) isDestination() bool {
	return o == OpAddDestination || o == OpUpdateDestination || o == OpDeleteDestination
}

// Change is one write to the IPVS table. Service changes use Service; destination
// changes use Service.Key and Dest; deletions use only the keys.
type Change struct {
	Op      Op
	Service Service
	Dest    Destination
}

func (c Change) String() string {
	switch c.Op {
	case OpAddService:
		return "adding IPVS service " + c.Service.String()
	case OpUpdateService:
		return "updating IPVS service " + c.Service.String()
	case OpDeleteService:
		return "deleting IPVS service " + c.Service.Key.String()
	case OpAddDestination:
		return fmt.Sprintf("adding destination %s weight %d %s to %s", c.Dest.DestKey, c.Dest.Weight, c.Dest.Forward, c.Service.Key)
	case OpUpdateDestination:
		return fmt.Sprintf("setting destination %s of %s to weight %d %s", c.Dest.DestKey, c.Service.Key, c.Dest.Weight, c.Dest.Forward)
	case OpDeleteDestination:
		return fmt.Sprintf("deleting destination %s of %s", c.Dest.DestKey, c.Service.Key)
	}
	return fmt.Sprintf("IPVS change %d", c.Op)
}

// ErrNotFound is returned (wrapped) when a service or destination does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is returned (wrapped) when adding a service or destination that exists.
var ErrExists = errors.New("already exists")
