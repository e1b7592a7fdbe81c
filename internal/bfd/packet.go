// Package bfd runs Bidirectional Forwarding Detection (RFC 5880) sessions in
// asynchronous mode over single-hop UDP (RFC 5881), so the routing controller learns
// of a dead link in well under a second instead of after a BGP hold time. A session
// polls (RFC 5880 section 6.5) when it comes up and moves to the fast rate; changed
// timers start a new session. Echo mode, demand mode and authentication are not
// implemented.
package bfd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// State is a session state (RFC 5880 section 4.1), numbered as on the wire.
type State uint8

// The session states.
const (
	AdminDown State = 0
	Down      State = 1
	Init      State = 2
	Up        State = 3
)

func (s State) String() string {
	switch s {
	case AdminDown:
		return "admin-down"
	case Down:
		return "down"
	case Init:
		return "init"
	case Up:
		return "up"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Diag says why a session last left Up (RFC 5880 section 4.1).
type Diag uint8

// The diagnostics this package sets.
const (
	DiagNone               Diag = 0
	DiagDetectionExpired   Diag = 1
	DiagNeighborSignalDown Diag = 3
	DiagAdminDown          Diag = 7
)

func (d Diag) String() string {
	switch d {
	case DiagNone:
		return "none"
	case DiagDetectionExpired:
		return "control detection time expired"
	case DiagNeighborSignalDown:
		return "neighbor signaled session down"
	case DiagAdminDown:
		return "administratively down"
	}
	return fmt.Sprintf("diag(%d)", uint8(d))
}

// packetLen is the length of a control packet without authentication.
const packetLen = 24

// Packet is a BFD control packet. Intervals are carried in microseconds on the wire.
type Packet struct {
	Diag       Diag
	State      State
	Poll       bool
	Final      bool
	Demand     bool
	Multipoint bool
	// AuthPresent is decoded only to refuse authenticated sessions.
	AuthPresent       bool
	DetectMult        uint8
	MyDiscriminator   uint32
	YourDiscriminator uint32
	DesiredMinTx      time.Duration
	RequiredMinRx     time.Duration
	RequiredMinEchoRx time.Duration
}

const (
	flagPoll       = 0x20
	flagFinal      = 0x10
	flagAuth       = 0x04
	flagDemand     = 0x02
	flagMultipoint = 0x01
)

// Marshal encodes p as a version 1 control packet without authentication.
func (p Packet) Marshal() []byte {
	b := make([]byte, packetLen)
	b[0] = 1<<5 | byte(p.Diag)&0x1f
	b[1] = byte(p.State) << 6
	for _, f := range []struct {
		set  bool
		mask byte
	}{{p.Poll, flagPoll}, {p.Final, flagFinal}, {p.Demand, flagDemand}, {p.Multipoint, flagMultipoint}} {
		if f.set {
			b[1] |= f.mask
		}
	}
	b[2] = p.DetectMult
	b[3] = packetLen
	binary.BigEndian.PutUint32(b[4:], p.MyDiscriminator)
	binary.BigEndian.PutUint32(b[8:], p.YourDiscriminator)
	binary.BigEndian.PutUint32(b[12:], micros(p.DesiredMinTx))
	binary.BigEndian.PutUint32(b[16:], micros(p.RequiredMinRx))
	binary.BigEndian.PutUint32(b[20:], micros(p.RequiredMinEchoRx))
	return b
}

// Unmarshal decodes a control packet and applies the reception checks of RFC 5880
// section 6.8.6 that need no session: version, lengths, detect multiplier,
// multipoint bit and a non-zero My Discriminator.
func Unmarshal(b []byte) (Packet, error) {
	if len(b) < packetLen {
		return Packet{}, fmt.Errorf("bfd packet of %d bytes is shorter than %d", len(b), packetLen)
	}
	if v := b[0] >> 5; v != 1 {
		return Packet{}, fmt.Errorf("bfd version %d, want 1", v)
	}
	p := Packet{
		Diag:              Diag(b[0] & 0x1f),
		State:             State(b[1] >> 6),
		Poll:              b[1]&flagPoll != 0,
		Final:             b[1]&flagFinal != 0,
		AuthPresent:       b[1]&flagAuth != 0,
		Demand:            b[1]&flagDemand != 0,
		Multipoint:        b[1]&flagMultipoint != 0,
		DetectMult:        b[2],
		MyDiscriminator:   binary.BigEndian.Uint32(b[4:]),
		YourDiscriminator: binary.BigEndian.Uint32(b[8:]),
		DesiredMinTx:      time.Duration(binary.BigEndian.Uint32(b[12:])) * time.Microsecond,
		RequiredMinRx:     time.Duration(binary.BigEndian.Uint32(b[16:])) * time.Microsecond,
		RequiredMinEchoRx: time.Duration(binary.BigEndian.Uint32(b[20:])) * time.Microsecond,
	}
	length := int(b[3])
	minLen := packetLen
	if p.AuthPresent {
		minLen = 26
	}
	switch {
	case length < minLen || length > len(b):
		return Packet{}, fmt.Errorf("bfd length field %d does not fit the %d bytes received", length, len(b))
	case p.DetectMult == 0:
		return Packet{}, errors.New("bfd detect multiplier is zero")
	case p.Multipoint:
		return Packet{}, errors.New("bfd multipoint bit is set")
	case p.MyDiscriminator == 0:
		return Packet{}, errors.New("bfd my discriminator is zero")
	}
	return p, nil
}

func micros(d time.Duration) uint32 { return uint32(min(d/time.Microsecond, 1<<32-1)) }
