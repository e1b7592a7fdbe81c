package ipvs

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestParseProcTable(t *testing.T) {
	text := `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port Forward Weight ActiveConn InActConn
TCP  0A600001:0050 rr persistent 10800
  -> 0A010001:1F90      Masq    1      3          7
  -> 0A010002:1F90      Masq    0      0          0
TCP  C0000207:01BB rr
  -> 0A010003:01BB      Tunnel  1      0          2
FWM  00000001 wlc
  -> 0A010009:0050      Route   1      0          0
UDP  [fd00:0096:0000:0000:0000:0000:0000:0035]:0035 rr
  -> [fd00:0001:0000:0000:0000:0000:0000:0002]:0035      Masq    1      0          0
SCTP  0A600002:0BB8 sh
`
	got, err := parseProcTable([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	key := func(a string, p Protocol, port uint16) Key {
		return Key{Addr: netip.MustParseAddr(a), Proto: p, Port: port}
	}
	dest := func(a string, port uint16, w, active, inactive int) Destination {
		return Destination{DestKey: DestKey{Addr: netip.MustParseAddr(a), Port: port}, Weight: w, ActiveConns: active, InactiveConns: inactive}
	}
	tunnel := dest("10.1.0.3", 443, 1, 0, 2)
	tunnel.Forward = Tunnel
	want := map[Key][]Destination{
		key("192.0.2.7", TCP, 443):   {tunnel},
		key("10.96.0.1", TCP, 80):    {dest("10.1.0.1", 8080, 1, 3, 7), dest("10.1.0.2", 8080, 0, 0, 0)},
		key("fd00:96::35", UDP, 53):  {dest("fd00:1::2", 53, 1, 0, 0)},
		key("10.96.0.2", SCTP, 3000): {},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
}

func TestParseProcTableRejectsWhatItCannotRead(t *testing.T) {
	header := "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
	for _, body := range []string{
		"XTP  0A600001:0050 rr\n",
		"TCP  0A6000:0050 rr\n",
		"TCP  0A600001:0050 rr\n  -> 0A010001:1F90      Masq    one      0          0\n",
		"TCP  0A600001 rr\n",
		"TCP  0A600001:0050 rr\n  -> 0A010001:1F90      Carrier    1      0          0\n",
	} {
		if _, err := parseProcTable([]byte(header + body)); err == nil || !strings.Contains(err.Error(), "line 4") && !strings.Contains(err.Error(), "line 5") {
			t.Errorf("%q: got %v, want an error naming the line", body, err)
		}
	}
}
