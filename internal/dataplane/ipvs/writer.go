package ipvs

import (
	"encoding/binary"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Generic netlink commands and attributes of IPVS (include/uapi/linux/ip_vs.h).
const (
	genlVersion = 1

	cmdNewService = 1
	cmdSetService = 2
	cmdDelService = 3
	cmdNewDest    = 5
	cmdSetDest    = 6
	cmdDelDest    = 7

	cmdAttrService = 1
	cmdAttrDest    = 2

	svcAttrAF        = 1
	svcAttrProtocol  = 2
	svcAttrAddr      = 3
	svcAttrPort      = 4
	svcAttrSchedName = 6
	svcAttrFlags     = 7
	svcAttrTimeout   = 8
	svcAttrNetmask   = 9

	destAttrAddr      = 1
	destAttrPort      = 2
	destAttrFwdMethod = 3
	destAttrWeight    = 4
	destAttrUThresh   = 5
	destAttrLThresh   = 6
	destAttrAF        = 11

	// fwdMasq is IP_VS_CONN_F_MASQ: destinations are reached by NAT.
	fwdMasq = 0
)

// batchSize bounds the messages sent in one sendmsg. The kernel answers each with an
// ack queued on our socket, and all of one batch's acks must fit its receive buffer.
const (
	batchSize     = 256
	receiveBuffer = 4 << 20
)

// writer sends IPVS changes over generic netlink, a batch of messages per system call.
// The kernel handles the messages of one sendmsg in order before the call returns, and
// acks each, so one round trip carries up to batchSize changes: a full sync of 10,000
// Services makes over 100,000 changes, and per-change round trips (moby/ipvs) spent
// more time in user space and system call entry than in IPVS itself.
type writer struct {
	sock   *nl.NetlinkSocket
	family uint16
	seq    uint32
	buf    []byte
}

func newWriter(sock *nl.NetlinkSocket, family uint16) (*writer, error) {
	if err := sock.SetReceiveBufferSize(receiveBuffer, true); err != nil {
		return nil, fmt.Errorf("sizing the IPVS netlink receive buffer: %w", err)
	}
	// Error acks carry only the failed message's header, not its whole body.
	if err := unix.SetsockoptInt(sock.GetFd(), unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1); err != nil {
		return nil, fmt.Errorf("setting NETLINK_CAP_ACK: %w", err)
	}
	return &writer{sock: sock, family: family}, nil
}

// apply makes the changes in order and returns one error per change.
func (w *writer) apply(changes []Change) []error {
	errs := make([]error, len(changes))
	for start := 0; start < len(changes); start += batchSize {
		end := min(start+batchSize, len(changes))
		w.applyBatch(changes[start:end], errs[start:end])
	}
	return errs
}

func (w *writer) applyBatch(changes []Change, errs []error) {
	w.buf = w.buf[:0]
	firstSeq := w.seq + 1
	for _, c := range changes {
		w.seq++
		w.buf = w.appendMessage(w.buf, c, w.seq)
	}
	if err := unix.Sendto(w.sock.GetFd(), w.buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		for i := range errs {
			errs[i] = fmt.Errorf("%s: sending to the kernel: %w", changes[i], err)
		}
		return
	}
	acked := 0
	for acked < len(changes) {
		msgs, _, err := w.sock.Receive()
		if err != nil {
			// Without the acks the outcome is unknown; the next full sync reads the
			// kernel and repairs whatever did not happen.
			for i := range errs {
				if errs[i] == nil {
					errs[i] = fmt.Errorf("%s: reading the kernel's answer: %w", changes[i], err)
				}
			}
			return
		}
		for _, m := range msgs {
			i := int(m.Header.Seq - firstSeq)
			if m.Header.Type != unix.NLMSG_ERROR || i < 0 || i >= len(changes) || len(m.Data) < 4 {
				continue
			}
			acked++
			if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
				errs[i] = mapErr(syscall.Errno(-code), changes[i].String())
			} else {
				errs[i] = nil
			}
		}
	}
}

// appendMessage encodes one change as a generic netlink request that asks for an ack.
func (w *writer) appendMessage(b []byte, c Change, seq uint32) []byte {
	start := len(b)
	b = binary.NativeEndian.AppendUint32(b, 0) // length, set below
	b = binary.NativeEndian.AppendUint16(b, w.family)
	b = binary.NativeEndian.AppendUint16(b, unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0) // port id: the kernel fills in ours
	b = append(b, c.Op.command(), genlVersion, 0, 0)
	b = appendServiceAttr(b, c.Service, c.Op == OpAddService || c.Op == OpUpdateService)
	if c.Op.isDestination() {
		b = appendDestAttr(b, c.Dest, c.Op != OpDeleteDestination)
	}
	binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
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
	b, nest := beginNested(b, cmdAttrService)
	af, netmask := uint16(unix.AF_INET), uint32(0xffffffff)
	if s.Addr.Is6() {
		// For IPv6 the netmask is a prefix length.
		af, netmask = unix.AF_INET6, 128
	}
	b = appendAttr(b, svcAttrAF, binary.NativeEndian.AppendUint16(nil, af))
	b = appendAttr(b, svcAttrProtocol, binary.NativeEndian.AppendUint16(nil, uint16(s.Proto)))
	b = appendAttr(b, svcAttrAddr, s.Addr.AsSlice())
	b = appendAttr(b, svcAttrPort, binary.BigEndian.AppendUint16(nil, s.Port))
	if full {
		b = appendAttr(b, svcAttrSchedName, append([]byte(s.Scheduler), 0))
		flags := binary.NativeEndian.AppendUint32(nil, s.Flags)
		b = appendAttr(b, svcAttrFlags, binary.NativeEndian.AppendUint32(flags, 0xffffffff))
		b = appendAttr(b, svcAttrTimeout, binary.NativeEndian.AppendUint32(nil, s.Timeout))
		b = appendAttr(b, svcAttrNetmask, binary.NativeEndian.AppendUint32(nil, netmask))
	}
	return endNested(b, nest)
}

// appendDestAttr encodes the destination; full adds the settings the kernel requires
// when creating or updating one.
func appendDestAttr(b []byte, d Destination, full bool) []byte {
	b, nest := beginNested(b, cmdAttrDest)
	af := uint16(unix.AF_INET)
	if d.Addr.Is6() {
		af = unix.AF_INET6
	}
	b = appendAttr(b, destAttrAddr, d.Addr.AsSlice())
	b = appendAttr(b, destAttrPort, binary.BigEndian.AppendUint16(nil, d.Port))
	b = appendAttr(b, destAttrAF, binary.NativeEndian.AppendUint16(nil, af))
	if full {
		b = appendAttr(b, destAttrFwdMethod, binary.NativeEndian.AppendUint32(nil, fwdMasq))
		b = appendAttr(b, destAttrWeight, binary.NativeEndian.AppendUint32(nil, uint32(d.Weight)))
		b = appendAttr(b, destAttrUThresh, binary.NativeEndian.AppendUint32(nil, 0))
		b = appendAttr(b, destAttrLThresh, binary.NativeEndian.AppendUint32(nil, 0))
	}
	return endNested(b, nest)
}

// appendAttr appends a netlink attribute padded to 4 bytes.
func appendAttr(b []byte, typ uint16, payload []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(unix.SizeofRtAttr+len(payload)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, payload...)
	for len(b)%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

func beginNested(b []byte, typ uint16) ([]byte, int) {
	start := len(b)
	b = binary.NativeEndian.AppendUint16(b, 0)
	b = binary.NativeEndian.AppendUint16(b, typ)
	return b, start
}

func endNested(b []byte, start int) []byte {
	binary.NativeEndian.PutUint16(b[start:], uint16(len(b)-start))
	return b
}
