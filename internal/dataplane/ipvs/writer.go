package ipvs

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/nlbatch"
)

// Generic netlink commands and attributes of IPVS (include/uapi/linux/ip_vs.h).
const (
	genlVersion = 1

	cmdNewService = 1
	cmdSetService = 2
	cmdDelService = 3
	cmdGetService = 4
	cmdNewDest    = 5
	cmdSetDest    = 6
	cmdDelDest    = 7

	cmdAttrService = 1
	cmdAttrDest    = 2

	svcAttrAF        = 1
	svcAttrProtocol  = 2
	svcAttrAddr      = 3
	svcAttrPort      = 4
	svcAttrFWMark    = 5
	svcAttrSchedName = 6
	svcAttrFlags     = 7
	svcAttrTimeout   = 8
	svcAttrNetmask   = 9
	svcAttrStats64   = 12 // nested, every counter a u64 (kernels since 4.1)

	statsAttrConns    = 1
	statsAttrInPkts   = 2
	statsAttrOutPkts  = 3
	statsAttrInBytes  = 4
	statsAttrOutBytes = 5

	destAttrAddr      = 1
	destAttrPort      = 2
	destAttrFwdMethod = 3
	destAttrWeight    = 4
	destAttrUThresh   = 5
	destAttrLThresh   = 6
	destAttrAF        = 11
)

// writer sends IPVS changes over generic netlink in batches (see nlbatch): a full
// sync of 10,000 Services makes over 100,000 changes, and moby/ipvs's round trip per
// change spent more time in user space and system call entry than in IPVS itself.
type writer struct {
	sender *nlbatch.Sender
	family uint16
}

// apply makes the changes in order and returns one error per change.
func (w *writer) apply(changes []Change) []error {
	reqs := make([]nlbatch.Request, len(changes))
	for i, c := range changes {
		reqs[i] = nlbatch.Request{Type: w.family, Body: appendMessage(nil, c)}
	}
	errs := w.sender.Send(reqs)
	for i, err := range errs {
		if err != nil {
			errs[i] = mapErr(err, changes[i].String())
		}
	}
	return errs
}

// appendMessage encodes one change as the body of a generic netlink request.
func appendMessage(b []byte, c Change) []byte {
	b = append(b, c.Op.command(), genlVersion, 0, 0)
	b = appendServiceAttr(b, c.Service, c.Op == OpAddService || c.Op == OpUpdateService)
	if c.Op.isDestination() {
		b = appendDestAttr(b, c.Dest, c.Op != OpDeleteDestination)
	}
	return b
}

func (o Op) command() uint8 {
	switch o {
	case OpAddService:
		return cmdNewService
	case OpUpdateService:
		return cmdSetService
	case OpDeleteService:
		return cmdDelService
	case OpAddDestination:
		return cmdNewDest
	case OpUpdateDestination:
		return cmdSetDest
	case OpDeleteDestination:
		return cmdDelDest
	}
	panic(fmt.Sprintf("ipvs: unknown change op %d", o))
}

// appendServiceAttr encodes the service; full adds the settings the kernel requires
// when creating or updating one (a lookup needs only the key).
func appendServiceAttr(b []byte, s Service, full bool) []byte {
	b, nest := nlbatch.BeginNested(b, cmdAttrService)
	af, netmask := uint16(unix.AF_INET), uint32(0xffffffff)
	if s.Addr.Is6() {
		// For IPv6 the netmask is a prefix length.
		af, netmask = unix.AF_INET6, 128
	}
	b = nlbatch.AppendAttr(b, svcAttrAF, binary.NativeEndian.AppendUint16(nil, af))
	b = nlbatch.AppendAttr(b, svcAttrProtocol, binary.NativeEndian.AppendUint16(nil, uint16(s.Proto)))
	b = nlbatch.AppendAttr(b, svcAttrAddr, s.Addr.AsSlice())
	b = nlbatch.AppendAttr(b, svcAttrPort, binary.BigEndian.AppendUint16(nil, s.Port))
	if full {
		b = nlbatch.AppendAttr(b, svcAttrSchedName, append([]byte(s.Scheduler), 0))
		flags := binary.NativeEndian.AppendUint32(nil, s.Flags)
		b = nlbatch.AppendAttr(b, svcAttrFlags, binary.NativeEndian.AppendUint32(flags, 0xffffffff))
		b = nlbatch.AppendAttr(b, svcAttrTimeout, binary.NativeEndian.AppendUint32(nil, s.Timeout))
		b = nlbatch.AppendAttr(b, svcAttrNetmask, binary.NativeEndian.AppendUint32(nil, netmask))
	}
	return nlbatch.EndNested(b, nest)
}

// appendDestAttr encodes the destination; full adds the settings the kernel requires
// when creating or updating one.
func appendDestAttr(b []byte, d Destination, full bool) []byte {
	b, nest := nlbatch.BeginNested(b, cmdAttrDest)
	af := uint16(unix.AF_INET)
	if d.Addr.Is6() {
		af = unix.AF_INET6
	}
	b = nlbatch.AppendAttr(b, destAttrAddr, d.Addr.AsSlice())
	b = nlbatch.AppendAttr(b, destAttrPort, binary.BigEndian.AppendUint16(nil, d.Port))
	b = nlbatch.AppendAttr(b, destAttrAF, binary.NativeEndian.AppendUint16(nil, af))
	if full {
		b = nlbatch.AppendAttr(b, destAttrFwdMethod, binary.NativeEndian.AppendUint32(nil, uint32(d.Forward)))
		b = nlbatch.AppendAttr(b, destAttrWeight, binary.NativeEndian.AppendUint32(nil, uint32(d.Weight)))
		b = nlbatch.AppendAttr(b, destAttrUThresh, binary.NativeEndian.AppendUint32(nil, 0))
		b = nlbatch.AppendAttr(b, destAttrLThresh, binary.NativeEndian.AppendUint32(nil, 0))
	}
	return nlbatch.EndNested(b, nest)
}
