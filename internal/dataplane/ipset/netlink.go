package ipset

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/nlbatch"
	"github.com/kube-routerd/kube-routerd/internal/ipfamily"
)

// maxElements is the capacity of every set we create; a namespaceSelector {} peer
// holds every pod of the cluster, more than the kernel's default of 65536.
const maxElements = 1 << 20

// Netlink is the real Interface, speaking the ipset netlink protocol in one network
// namespace.
type Netlink struct {
	h *netlink.Handle
	// batch sends AddEntries' requests; mu serializes its use.
	mu    sync.Mutex
	batch *nlbatch.Sender
	// requests counts the add and delete requests sent, for tests of batching.
	requests int
}

// New returns an Interface for the calling process's network namespace.
func New() (*Netlink, error) { return NewAt(netns.None()) }

// NewAt returns an Interface for the network namespace ns (netns.None() for the
// calling thread's); the caller may close ns afterwards, the sockets stay bound to it.
func NewAt(ns netns.NsHandle) (*Netlink, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("opening ipset netlink socket: %w", err)
	}
	sock, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_NETFILTER)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("opening ipset netlink socket: %w", err)
	}
	batch, err := nlbatch.New(sock)
	if err != nil {
		sock.Close()
		h.Close()
		return nil, err
	}
	return &Netlink{h: h, batch: batch}, nil
}

// Close releases the netlink sockets.
func (n *Netlink) Close() {
	n.h.Close()
	n.batch.Close()
}

// Create implements Interface.
func (n *Netlink) Create(s Set) error {
	if err := CheckName(s.Name); err != nil {
		return err
	}
	family := uint8(unix.AF_INET)
	if s.Family == ipfamily.IPv6 {
		family = unix.AF_INET6
	}
	// Replace leaves out NLM_F_EXCL: an identical existing set is then not an error.
	err := n.h.IpsetCreate(s.Name, string(s.Type), netlink.IpsetCreateOptions{
		Replace: true, Family: family, MaxElements: maxElements,
	})
	if err != nil {
		return fmt.Errorf("creating ipset %s (%s %s): %w", s.Name, s.Type, kernelFamilyName(s.Family), err)
	}
	return nil
}

// Destroy implements Interface.
func (n *Netlink) Destroy(name string) error {
	if err := n.h.IpsetDestroy(name); err != nil && !isNoSuchSet(err) {
		return fmt.Errorf("destroying ipset %s: %w", name, err)
	}
	return nil
}

// Flush implements Interface.
func (n *Netlink) Flush(name string) error {
	if err := n.h.IpsetFlush(name); err != nil {
		return fmt.Errorf("flushing ipset %s: %w", name, err)
	}
	return nil
}

// Add implements Interface.
func (n *Netlink) Add(name, entry string) error {
	return n.AddEntries(name, []string{entry})[0]
}

// maxRequestBody bounds one request that adds many entries. The kernel looks the set
// up by name (a walk over every set) once per request: filling 422,000 entries one
// request each spent most of its time there.
const maxRequestBody = 16 << 10

// The netlink message types of IPSET_CMD_ADD and IPSET_CMD_DEL. Without NLM_F_EXCL,
// adding an entry that is present, or deleting one that is not, succeeds.
const (
	addType = unix.NFNL_SUBSYS_IPSET<<8 | nl.IPSET_CMD_ADD
	delType = unix.NFNL_SUBSYS_IPSET<<8 | nl.IPSET_CMD_DEL
)

// AddEntries implements Interface.
func (n *Netlink) AddEntries(name string, entries []string) []error {
	return n.changeEntries(addType, name, entries)
}

// DelEntries implements Interface.
func (n *Netlink) DelEntries(name string, entries []string) []error {
	return n.changeEntries(delType, name, entries)
}

// changeEntries adds or deletes (typ) entries: many per request, many requests per
// system call. The kernel stops a request at its first bad entry, so the entries of a
// failed request are sent again one per request, to give each its own error (doing
// an entry again that made it is harmless).
func (n *Netlink) changeEntries(typ uint16, name string, entries []string) []error {
	errs := make([]error, len(entries))
	encoded := make([]wireEntry, len(entries))
	var reqs []nlbatch.Request
	var members [][]int // request -> entries
	var body []byte
	var adt int
	var cur []int
	flush := func() {
		if len(cur) == 0 {
			return
		}
		reqs = append(reqs, nlbatch.Request{Type: typ, Body: nlbatch.EndNested(body, adt)})
		members = append(members, cur)
		body, cur = nil, nil
	}
	for i, text := range entries {
		e, err := parseEntry(text)
		if err != nil {
			errs[i] = fmt.Errorf("ipset %s: %w", name, err)
			continue
		}
		encoded[i] = e
		if body == nil {
			// Sized for a whole request: growing it by appends made as much garbage
			// again as the request. The kernel refuses entries in an IPSET_ATTR_ADT
			// nest as a protocol error unless a line number (of an `ipset restore`
			// input, for its error messages) comes with them: without one, every
			// request failed and each entry went again in a request of its own.
			body = appendRequestHeader(make([]byte, 0, maxRequestBody+entryRoom), name)
			body = nlbatch.AppendAttr(body, nl.IPSET_ATTR_LINENO|unix.NLA_F_NET_BYTEORDER, []byte{0, 0, 0, 0})
			body, adt = nlbatch.BeginNested(body, nl.IPSET_ATTR_ADT|unix.NLA_F_NESTED)
		}
		body = appendEntry(body, e)
		cur = append(cur, i)
		if len(body) >= maxRequestBody {
			flush()
		}
	}
	flush()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.requests += len(reqs)
	var retry []int
	for j, err := range n.batch.Send(reqs) {
		if err != nil {
			retry = append(retry, members[j]...)
		}
	}
	if len(retry) == 0 {
		return errs
	}
	single := make([]nlbatch.Request, len(retry))
	for j, i := range retry {
		single[j] = nlbatch.Request{Type: typ, Body: appendEntry(appendRequestHeader(nil, name), encoded[i])}
	}
	n.requests += len(single)
	failed := "adding %s to ipset %s: %w"
	if typ == delType {
		failed = "deleting %s from ipset %s: %w"
	}
	for j, err := range n.batch.Send(single) {
		if err == nil {
			continue
		}
		var errno syscall.Errno
		if errors.As(err, &errno) && int(errno) >= nl.IPSET_ERR_PRIVATE {
			err = nl.IPSetError(uintptr(errno))
		}
		i := retry[j]
		errs[i] = fmt.Errorf(failed, entries[i], name, err)
	}
	return errs
}

// appendRequestHeader starts an ipset request: an nfgenmsg header, the protocol
// version and the set name (none for a request about every set).
func appendRequestHeader(b []byte, set string) []byte {
	b = append(b, unix.AF_INET, nl.NFNETLINK_V0, 0, 0)
	b = nlbatch.AppendAttr(b, nl.IPSET_ATTR_PROTOCOL, []byte{nl.IPSET_PROTOCOL})
	if set == "" {
		return b
	}
	return nlbatch.AppendAttr(b, nl.IPSET_ATTR_SETNAME, append([]byte(set), 0))
}

// entryRoom is the most one entry adds to a request: its data, IP, address, CIDR,
// protocol and port attributes.
const entryRoom = 4 + 4 + 4 + 16 + 8 + 8 + 8

// wireEntry is an entry in the kernel's terms.
type wireEntry struct {
	addr    netip.Addr
	cidr    uint8 // 0: none
	proto   uint8
	port    uint16
	hasPort bool
}

// parseEntry reads an entry string; its shape ("ip,proto:port", "ip/len" or "ip")
// says which set types it fits.
func parseEntry(entry string) (wireEntry, error) {
	if addr, proto, port, err := parseIPPort(entry); err == nil {
		return wireEntry{addr: addr, proto: protocolNumbers[proto], port: port, hasPort: true}, nil
	}
	if pfx, err := netip.ParsePrefix(entry); err == nil {
		return wireEntry{addr: pfx.Masked().Addr().Unmap(), cidr: uint8(pfx.Bits())}, nil
	}
	addr, err := netip.ParseAddr(entry)
	if err != nil {
		return wireEntry{}, fmt.Errorf("invalid entry %q", entry)
	}
	return wireEntry{addr: addr.Unmap()}, nil
}

// appendEntry appends one entry's data. Inside an IPSET_ATTR_ADT nest it is one of
// many; directly after the header, the request's only entry.
func appendEntry(b []byte, e wireEntry) []byte {
	// ipset insists on the nested flag, and on network byte order flags for numbers.
	b, data := nlbatch.BeginNested(b, nl.IPSET_ATTR_DATA|unix.NLA_F_NESTED)
	b, ip := nlbatch.BeginNested(b, nl.IPSET_ATTR_IP|unix.NLA_F_NESTED)
	if e.addr.Is4() {
		v4 := e.addr.As4()
		b = nlbatch.AppendAttr(b, nl.IPSET_ATTR_IPADDR_IPV4|unix.NLA_F_NET_BYTEORDER, v4[:])
	} else {
		v6 := e.addr.As16()
		b = nlbatch.AppendAttr(b, nl.IPSET_ATTR_IPADDR_IPV6|unix.NLA_F_NET_BYTEORDER, v6[:])
	}
	b = nlbatch.EndNested(b, ip)
	if e.cidr != 0 {
		b = nlbatch.AppendAttr(b, nl.IPSET_ATTR_CIDR, []byte{e.cidr})
	}
	if e.hasPort {
		var port [2]byte
		binary.BigEndian.PutUint16(port[:], e.port)
		b = nlbatch.AppendAttr(b, nl.IPSET_ATTR_PROTO, []byte{e.proto})
		b = nlbatch.AppendAttr(b, nl.IPSET_ATTR_PORT|unix.NLA_F_NET_BYTEORDER, port[:])
	}
	return nlbatch.EndNested(b, data)
}

// Del implements Interface.
func (n *Netlink) Del(name, entry string) error {
	return n.DelEntries(name, []string{entry})[0]
}

// Swap implements Interface.
func (n *Netlink) Swap(a, b string) error {
	if err := n.h.IpsetSwap(a, b); err != nil {
		return fmt.Errorf("swapping ipsets %s and %s: %w", a, b, err)
	}
	return nil
}

// List implements Interface.
func (n *Netlink) List(name string) (SetEntries, error) {
	sets, err := n.list(name, nil)
	if isNoSuchSet(err) {
		return SetEntries{}, fmt.Errorf("listing ipset %s: %w", name, ErrNoSuchSet)
	}
	if err != nil {
		return SetEntries{}, fmt.Errorf("listing ipset %s: %w", name, err)
	}
	if len(sets) != 1 {
		return SetEntries{}, fmt.Errorf("listing ipset %s: the kernel answered with %d sets", name, len(sets))
	}
	return sets[0], nil
}

// ListAll implements Interface.
func (n *Netlink) ListAll(keep func(Set) bool) ([]SetEntries, error) {
	sets, err := n.list("", keep)
	if err != nil {
		return nil, fmt.Errorf("listing ipsets: %w", err)
	}
	slices.SortFunc(sets, func(a, b SetEntries) int { return strings.Compare(a.Name, b.Name) })
	return sets, nil
}

// list dumps one set (name) or every set, and turns each message's entries into text
// as it arrives: a whole envelope's sets (250,000 entries) are read with little more
// than the strings they return, where gathering the kernel's messages and decoding
// them into netlink.IPSetEntry values first allocated over 200 MB. Sets keep rejects
// are not decoded at all.
func (n *Netlink) list(name string, keep func(Set) bool) ([]SetEntries, error) {
	var sets []SetEntries
	// A large set arrives in several messages, one after another; only the first
	// carries the set's type and family.
	cur, skipped := -1, ""
	err := n.dumpList(name, 0, func(attrs []byte) error {
		var msg listMessage
		msg.parse(attrs)
		switch {
		case msg.name == "":
			return fmt.Errorf("ipset list message without a set name")
		case msg.typ != "":
			set := Set{Name: msg.name, Type: Type(msg.typ), Family: ipfamily.IPv4}
			if msg.family == unix.AF_INET6 {
				set.Family = ipfamily.IPv6
			}
			if keep != nil && !keep(set) {
				cur, skipped = -1, msg.name
				return nil
			}
			sets = append(sets, SetEntries{Set: set, Entries: make([]string, 0, msg.elements)})
			cur = len(sets) - 1
		case msg.name == skipped:
			return nil
		case cur < 0 || sets[cur].Name != msg.name:
			return fmt.Errorf("ipset %s: entries before the set's header", msg.name)
		}
		set := &sets[cur]
		for typ, data := range nlbatch.Attrs(msg.entries) {
			if typ != nl.IPSET_ATTR_DATA {
				continue
			}
			text, err := entryText(set.Type, data)
			if err != nil {
				return fmt.Errorf("ipset %s: %w", set.Name, err)
			}
			set.Entries = append(set.Entries, text)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i := range sets {
		slices.Sort(sets[i].Entries)
		sets[i].Entries = slices.Compact(sets[i].Entries)
	}
	return sets, nil
}

// listMessage is what one message of an ipset list dump says.
type listMessage struct {
	name, typ string
	family    uint8
	// elements is the set's size, from its header (first message only).
	elements uint32
	// entries holds the IPSET_ATTR_ADT nest: one IPSET_ATTR_DATA per entry.
	entries []byte
}

func (m *listMessage) parse(attrs []byte) {
	for typ, payload := range nlbatch.Attrs(attrs) {
		switch typ {
		case nl.IPSET_ATTR_SETNAME:
			m.name = strings.TrimRight(string(payload), "\x00")
		case nl.IPSET_ATTR_TYPENAME:
			m.typ = strings.TrimRight(string(payload), "\x00")
		case nl.IPSET_ATTR_FAMILY:
			if len(payload) > 0 {
				m.family = payload[0]
			}
		case nl.IPSET_ATTR_DATA:
			for typ, payload := range nlbatch.Attrs(payload) {
				if typ == nl.IPSET_ATTR_ELEMENTS && len(payload) == 4 {
					m.elements = binary.BigEndian.Uint32(payload)
				}
			}
		case nl.IPSET_ATTR_ADT:
			m.entries = payload
		}
	}
}

// listSetNamesOnly is the kernel's IPSET_FLAG_LIST_SETNAME (`ipset list -n`): a list
// dump that carries each set's name and nothing else.
const listSetNamesOnly = 1 << 1

// Names implements Interface. Reading every set with its entries only to learn their
// names held a copy of every member in memory: hundreds of MB at 1,000 policies.
func (n *Netlink) Names() ([]string, error) {
	var names []string
	err := n.dumpList("", listSetNamesOnly, func(attrs []byte) error {
		for typ, payload := range nlbatch.Attrs(attrs) {
			if typ == nl.IPSET_ATTR_SETNAME {
				names = append(names, strings.TrimRight(string(payload), "\x00"))
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing ipset names: %w", err)
	}
	sort.Strings(names)
	return names, nil
}

// dumpList asks the kernel for a list dump of one set (name) or of all (""), with the
// IPSET_FLAG_* bits in flags, and calls each with every message's attributes.
func (n *Netlink) dumpList(name string, flags uint32, each func(attrs []byte) error) error {
	b := appendRequestHeader(nil, name)
	if flags != 0 {
		b = nlbatch.AppendAttr(b, nl.IPSET_ATTR_FLAGS|unix.NLA_F_NET_BYTEORDER, binary.BigEndian.AppendUint32(nil, flags))
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.batch.Dump(nlbatch.Request{Type: unix.NFNL_SUBSYS_IPSET<<8 | nl.IPSET_CMD_LIST, Body: b}, func(body []byte) error {
		if len(body) < 4 {
			return fmt.Errorf("short ipset list message")
		}
		return each(body[4:])
	})
}

// entryText writes one entry of a list dump (an IPSET_ATTR_DATA nest's payload) in
// the canonical form of its set's type.
func entryText(t Type, data []byte) (string, error) {
	var (
		addr        netip.Addr
		cidr, proto uint8
		port        uint16
		hasPort     bool
	)
	for typ, payload := range nlbatch.Attrs(data) {
		switch typ {
		case nl.IPSET_ATTR_IP:
			for typ, ip := range nlbatch.Attrs(payload) {
				if typ == nl.IPSET_ATTR_IPADDR_IPV4 || typ == nl.IPSET_ATTR_IPADDR_IPV6 {
					addr, _ = netip.AddrFromSlice(ip)
				}
			}
		case nl.IPSET_ATTR_CIDR:
			if len(payload) > 0 {
				cidr = payload[0]
			}
		case nl.IPSET_ATTR_PROTO:
			if len(payload) > 0 {
				proto = payload[0]
			}
		case nl.IPSET_ATTR_PORT:
			if len(payload) == 2 {
				port, hasPort = binary.BigEndian.Uint16(payload), true
			}
		}
	}
	if !addr.IsValid() {
		return "", fmt.Errorf("entry without a valid IP: % x", data)
	}
	addr = addr.Unmap()
	switch t {
	case HashNet:
		bits := int(cidr)
		if bits == 0 {
			bits = addr.BitLen()
		}
		return netip.PrefixFrom(addr, bits).String(), nil
	case HashIPPort:
		if !hasPort {
			return "", fmt.Errorf("hash:ip,port entry without port: %s", addr)
		}
		return formatIPPort(addr, protocolName(proto), port), nil
	case HashIP:
		return addr.String(), nil
	}
	// A set some other program made: report it faithfully enough to recognise it.
	text := addr.String()
	if cidr != 0 {
		text += "/" + strconv.Itoa(int(cidr))
	}
	return text, nil
}

func isNoSuchSet(err error) bool {
	var errno syscall.Errno
	return errors.As(err, &errno) && errno == syscall.ENOENT
}
