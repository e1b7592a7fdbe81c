// Package nlbatch sends many netlink requests to the kernel per system call and
// matches each ack to its request. The kernel handles the requests of one sendmsg in
// order before the call returns, so a batch costs one round trip instead of one per
// request: at 10,000 Services the per-request overhead of a netlink library (several
// system calls, a fresh receive buffer, deadlines) cost more than the kernel's work.
package nlbatch

import (
	"encoding/binary"
	"fmt"
	"iter"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

const (
	// batchSize bounds the requests of one sendmsg: the acks of a batch must all fit
	// the socket's receive buffer. batchBytes bounds its size: the kernel refuses a
	// sendmsg larger than the socket's send buffer (about 208 KiB by default).
	batchSize     = 256
	batchBytes    = 128 << 10
	receiveBuffer = 4 << 20
	// datagramSize holds the largest datagram the kernel sends a socket of ours: a
	// dump's messages come in datagrams of at most 32 KiB, a batch's acks in one
	// datagram each.
	datagramSize = 64 << 10
	// replyTimeout bounds the wait for the kernel's answer to one batch or dump.
	replyTimeout = 30 * time.Second
)

// Request is one netlink request: its message type, flags beyond NLM_F_REQUEST and
// NLM_F_ACK, and its body after the netlink header.
type Request struct {
	Type  uint16
	Flags uint16
	Body  []byte
}

// Sender sends requests on one netlink socket. It is not safe for concurrent use.
type Sender struct {
	sock *nl.NetlinkSocket
	seq  uint32
	buf  []byte
	// received holds the last datagram from the kernel. It is reused: a netlink
	// library's fresh 64 KiB buffer per receive came to tens of MB of garbage
	// for the acks and dumps of one full sync at scale.
	received []byte
}

// New prepares sock for batches: a receive buffer for a batch of acks, acks for
// failed requests that carry only the request's header, and reads that never block
// (receive bounds the wait for the kernel's answer).
func New(sock *nl.NetlinkSocket) (*Sender, error) {
	if err := unix.SetNonblock(sock.GetFd(), true); err != nil {
		return nil, fmt.Errorf("making the netlink socket non-blocking: %w", err)
	}
	if err := sock.SetReceiveBufferSize(receiveBuffer, true); err != nil {
		return nil, fmt.Errorf("sizing the netlink receive buffer: %w", err)
	}
	if err := unix.SetsockoptInt(sock.GetFd(), unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1); err != nil {
		return nil, fmt.Errorf("setting NETLINK_CAP_ACK: %w", err)
	}
	return &Sender{sock: sock, received: make([]byte, datagramSize)}, nil
}

// Close closes the socket.
func (s *Sender) Close() { s.sock.Close() }

// Send sends the requests in order and returns one error per request: nil, the
// kernel's errno (a syscall.Errno), or a transport error.
func (s *Sender) Send(reqs []Request) []error {
	errs := make([]error, len(reqs))
	for start := 0; start < len(reqs); {
		end, size := start, 0
		for end < len(reqs) && end-start < batchSize && (end == start || size+len(reqs[end].Body) <= batchBytes) {
			size += unix.SizeofNlMsghdr + len(reqs[end].Body)
			end++
		}
		s.sendBatch(reqs[start:end], errs[start:end])
		start = end
	}
	return errs
}

func (s *Sender) sendBatch(reqs []Request, errs []error) {
	s.buf = s.buf[:0]
	firstSeq := s.seq + 1
	for _, r := range reqs {
		s.seq++
		s.buf = binary.NativeEndian.AppendUint32(s.buf, uint32(unix.SizeofNlMsghdr+len(r.Body)))
		s.buf = binary.NativeEndian.AppendUint16(s.buf, r.Type)
		s.buf = binary.NativeEndian.AppendUint16(s.buf, r.Flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
		s.buf = binary.NativeEndian.AppendUint32(s.buf, s.seq)
		s.buf = binary.NativeEndian.AppendUint32(s.buf, 0) // port id: the kernel fills in ours
		s.buf = append(s.buf, r.Body...)
		for len(s.buf)%unix.NLMSG_ALIGNTO != 0 {
			s.buf = append(s.buf, 0)
		}
	}
	if err := unix.Sendto(s.sock.GetFd(), s.buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		for i := range errs {
			errs[i] = fmt.Errorf("sending to the kernel: %w", err)
		}
		return
	}
	pending := make([]bool, len(reqs))
	for i := range pending {
		pending[i] = true
	}
	for left := len(reqs); left > 0; {
		datagram, err := s.receive()
		if err != nil {
			// Without the acks the outcome is unknown; callers re-read the kernel
			// before trusting it again.
			for i := range errs {
				if pending[i] {
					errs[i] = fmt.Errorf("reading the kernel's answer: %w", err)
				}
			}
			return
		}
		for h, data := range messages(datagram) {
			i := int(h.Seq - firstSeq)
			if h.Type != unix.NLMSG_ERROR || i < 0 || i >= len(reqs) || !pending[i] || len(data) < 4 {
				continue
			}
			pending[i] = false
			left--
			if code := int32(binary.NativeEndian.Uint32(data[:4])); code != 0 {
				errs[i] = syscall.Errno(-code)
			}
		}
	}
}

// AppendAttr appends a netlink attribute, padded to 4 bytes.
func AppendAttr(b []byte, typ uint16, payload []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(unix.SizeofRtAttr+len(payload)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, payload...)
	for len(b)%unix.NLA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

// BeginNested starts a nested attribute; EndNested, given the returned offset, sets
// its length once its members are appended.
func BeginNested(b []byte, typ uint16) ([]byte, int) {
	start := len(b)
	b = binary.NativeEndian.AppendUint16(b, 0)
	b = binary.NativeEndian.AppendUint16(b, typ)
	return b, start
}

// EndNested completes the nested attribute begun at start.
func EndNested(b []byte, start int) []byte {
	binary.NativeEndian.PutUint16(b[start:], uint16(len(b)-start))
	return b
}

// Dump sends a dump request (NLM_F_DUMP is added) and calls each with the body of
// every message of the answer, up to NLMSG_DONE. A body is valid only during its call.
func (s *Sender) Dump(req Request, each func(body []byte) error) error {
	s.seq++
	seq := s.seq
	b := binary.NativeEndian.AppendUint32(nil, uint32(unix.SizeofNlMsghdr+len(req.Body)))
	b = binary.NativeEndian.AppendUint16(b, req.Type)
	b = binary.NativeEndian.AppendUint16(b, req.Flags|unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = append(b, req.Body...)
	if err := unix.Sendto(s.sock.GetFd(), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sending to the kernel: %w", err)
	}
	var failed error
	for {
		datagram, err := s.receive()
		if err != nil {
			return fmt.Errorf("reading the kernel's answer: %w", err)
		}
		for h, data := range messages(datagram) {
			if h.Seq != seq {
				continue // a late ack of an earlier batch that gave up waiting
			}
			switch h.Type {
			case unix.NLMSG_DONE:
				return failed
			case unix.NLMSG_ERROR:
				if len(data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(data[:4])); code != 0 {
						return syscall.Errno(-code)
					}
				}
				return failed
			}
			// Keep reading to the end even after a failure, so the socket is clean
			// for the next request.
			if failed == nil {
				failed = each(data)
			}
		}
	}
}

// receive waits up to replyTimeout for the next datagram from the kernel and returns
// it; it stays valid until the next receive. The socket does not block: the wait is
// a poll.
func (s *Sender) receive() ([]byte, error) {
	fd := s.sock.GetFd()
	for {
		n, from, err := unix.Recvfrom(fd, s.received, 0)
		switch {
		case err == unix.EAGAIN:
			ready, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(replyTimeout.Milliseconds()))
			if err != nil && err != unix.EINTR {
				return nil, err
			}
			if err == nil && ready == 0 {
				return nil, fmt.Errorf("no answer within %s", replyTimeout)
			}
		case err == unix.EINTR:
		case err != nil:
			return nil, err
		default:
			// Only the kernel's datagrams count: another process may write to
			// our port.
			if sa, ok := from.(*unix.SockaddrNetlink); ok && sa.Pid == 0 {
				return s.received[:n], nil
			}
		}
	}
}

// messages iterates over the netlink messages of a datagram: each one's header and
// the data after it.
func messages(datagram []byte) iter.Seq2[unix.NlMsghdr, []byte] {
	return func(yield func(unix.NlMsghdr, []byte) bool) {
		b := datagram
		for len(b) >= unix.SizeofNlMsghdr {
			h := unix.NlMsghdr{
				Len:   binary.NativeEndian.Uint32(b),
				Type:  binary.NativeEndian.Uint16(b[4:]),
				Flags: binary.NativeEndian.Uint16(b[6:]),
				Seq:   binary.NativeEndian.Uint32(b[8:]),
				Pid:   binary.NativeEndian.Uint32(b[12:]),
			}
			n := int(h.Len)
			if n < unix.SizeofNlMsghdr || n > len(b) {
				return
			}
			if !yield(h, b[unix.SizeofNlMsghdr:n]) {
				return
			}
			b = b[min(len(b), (n+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
		}
	}
}

// typeMask clears the nested and byte order flags of an attribute type.
const typeMask = ^uint16(unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)

// Attrs iterates over the netlink attributes in b: type (flags masked off) and payload.
func Attrs(b []byte) iter.Seq2[uint16, []byte] {
	return func(yield func(uint16, []byte) bool) {
		for len(b) >= unix.SizeofRtAttr {
			n := int(binary.NativeEndian.Uint16(b))
			if n < unix.SizeofRtAttr || n > len(b) {
				return
			}
			if !yield(binary.NativeEndian.Uint16(b[2:])&typeMask, b[unix.SizeofRtAttr:n]) {
				return
			}
			b = b[min(len(b), (n+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1)):]
		}
	}
}
