package ipvs

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// procTablePath lists the IPVS table of the reading thread's network namespace, every
// service with its destinations, in one read. Netlink needs a dump per service for
// destinations: 10,000 round trips for a full resync of 10,000 Services.
const procTablePath = "/proc/thread-self/net/ip_vs"

// parseProcTable reads the destinations of every address:port service from the text
// of /proc/net/ip_vs:
//
//	IP Virtual Server version 1.2.1 (size=4096)
//	Prot LocalAddress:Port Scheduler Flags
//	  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
//	TCP  0A600001:0050 rr
//	  -> 0A010001:1F90      Masq    1      0          0
//	UDP  [fd00:0096:0000:0000:0000:0000:0000:0035]:0035 rr
//	  -> [fd00:0001:0000:0000:0000:0000:0000:0002]:0035      Masq    1      0          0
//
// Firewall-mark services (FWM) and their destinations are skipped, as in Services.
// A service without destinations maps to an empty, non-nil list.
func parseProcTable(data []byte) (map[Key][]Destination, error) {
	table := map[Key][]Destination{}
	var cur *Key
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 0; sc.Scan(); line++ {
		text := sc.Text()
		if line < 3 {
			continue // the version and the two column headers
		}
		fields := strings.Fields(text)
		switch {
		case len(fields) == 0:
			continue
		case fields[0] == "->":
			if cur == nil {
				continue // a destination of a firewall-mark service
			}
			d, err := parseProcDest(fields)
			if err != nil {
				return nil, fmt.Errorf("line %d of %s (%q): %w", line+1, procTablePath, text, err)
			}
			table[*cur] = append(table[*cur], d)
		default:
			k, ok, err := parseProcService(fields)
			if err != nil {
				return nil, fmt.Errorf("line %d of %s (%q): %w", line+1, procTablePath, text, err)
			}
			cur = nil
			if ok {
				cur = &k
				table[k] = []Destination{}
			}
		}
	}
	return table, sc.Err()
}

// parseProcService parses "TCP  0A600001:0050 rr ..."; ok is false for a
// firewall-mark service.
func parseProcService(fields []string) (k Key, ok bool, err error) {
	if len(fields) < 3 {
		return Key{}, false, fmt.Errorf("too few fields")
	}
	switch fields[0] {
	case "TCP":
		k.Proto = TCP
	case "UDP":
		k.Proto = UDP
	case "SCTP":
		k.Proto = SCTP
	case "FWM":
		return Key{}, false, nil
	default:
		return Key{}, false, fmt.Errorf("unknown protocol %q", fields[0])
	}
	k.Addr, k.Port, err = parseProcAddrPort(fields[1])
	return k, err == nil, err
}

// parseProcDest parses "-> 0A010001:1F90 Masq 1 0 0".
func parseProcDest(fields []string) (Destination, error) {
	if len(fields) < 6 {
		return Destination{}, fmt.Errorf("too few fields")
	}
	var d Destination
	var err error
	if d.Addr, d.Port, err = parseProcAddrPort(fields[1]); err != nil {
		return Destination{}, err
	}
	switch fields[2] {
	case "Masq":
		d.Forward = Masquerade
	case "Tunnel":
		d.Forward = Tunnel
	case "Local":
		d.Forward = forwardLocal
	case "Route":
		d.Forward = forwardRoute
	default:
		return Destination{}, fmt.Errorf("unknown forwarding method %q", fields[2])
	}
	for i, n := range []*int{&d.Weight, &d.ActiveConns, &d.InactiveConns} {
		if *n, err = strconv.Atoi(fields[3+i]); err != nil {
			return Destination{}, fmt.Errorf("bad number %q", fields[3+i])
		}
	}
	return d, nil
}

// parseProcAddrPort parses "0A600001:0050" (IPv4 in hex) or "[fd00:...]:0050".
func parseProcAddrPort(s string) (netip.Addr, uint16, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return netip.Addr{}, 0, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(s[i+1:], 16, 16)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("bad port in %q", s)
	}
	host := s[:i]
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		a, err := netip.ParseAddr(host[1 : len(host)-1])
		if err != nil {
			return netip.Addr{}, 0, fmt.Errorf("bad address %q", s)
		}
		return a, uint16(port), nil
	}
	v4, err := strconv.ParseUint(host, 16, 32)
	if err != nil || len(host) != 8 {
		return netip.Addr{}, 0, fmt.Errorf("bad address %q", s)
	}
	return netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, uint32(v4)))), uint16(port), nil
}
