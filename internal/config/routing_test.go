package config

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRoutingPeerPrefixLimit(t *testing.T) {
	t.Run("an IPv6 peer with a prefix limit is accepted", func(t *testing.T) {
		cfg, err := Parse("test.toml", []byte("[[routing.peers]]\naddress = \"2001:db8::1\"\nasn = 65000\nmax_prefixes = 100\n"))
		if err != nil {
			t.Fatal(err)
		}
		want := Peer{Address: Addr{netip.MustParseAddr("2001:db8::1")}, ASN: 65000, MaxPrefixes: 100}
		if len(cfg.Routing.Peers) != 1 || cfg.Routing.Peers[0] != want {
			t.Errorf("peers = %+v, want %+v", cfg.Routing.Peers, want)
		}
	})
	for _, tc := range []struct {
		name, value, want string
	}{
		{"a negative limit is rejected", "-1", "line 4: routing.peers[0].max_prefixes: invalid prefix limit -1 (want 0-4294967295, 0 for none)"},
		{"a limit beyond 32 bits is rejected", "4294967296", "line 4: routing.peers[0].max_prefixes: invalid prefix limit 4294967296 (want 0-4294967295, 0 for none)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := problems(t, "[[routing.peers]]\naddress = \"192.0.2.1\"\nasn = 65000\nmax_prefixes = "+tc.value+"\n")
			if !slices.Equal(got, []string{tc.want}) {
				t.Errorf("problems = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRoutingPeerPasswordFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte("s3cret\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil { // umask may have narrowed it
			t.Fatal(err)
		}
		return path
	}
	private, groupReadable, worldReadable := write("private", 0o600), write("group", 0o640), write("world", 0o604)
	parse := func(extra string) error {
		_, err := Parse("test.toml", []byte("[[routing.peers]]\naddress = \"192.0.2.1\"\nasn = 65000\n"+extra))
		return err
	}
	if err := parse(fmt.Sprintf("password_file = %q\n", private)); err != nil {
		t.Errorf("a file only its owner reads is refused: %v", err)
	}
	if pw, err := ReadSecretFile(private); err != nil || pw != "s3cret" {
		t.Errorf("ReadSecretFile = %q, %v; want the password without its newline", pw, err)
	}
	for _, tc := range []struct{ name, extra, want string }{
		{"a file its group may read is refused", fmt.Sprintf("password_file = %q\n", groupReadable), "has mode 0640"},
		{"a file others may read is refused", fmt.Sprintf("password_file = %q\n", worldReadable), "has mode 0604"},
		{"a missing file is refused", fmt.Sprintf("password_file = %q\n", filepath.Join(dir, "none")), "no such file"},
		{"a password and a password file together are refused", fmt.Sprintf("password = \"x\"\npassword_file = %q\n", private), "either password or password_file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := parse(tc.extra)
			if err == nil || !strings.Contains(err.Error(), "routing.peers[0].password_file") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one naming routing.peers[0].password_file with %q", err, tc.want)
			}
		})
	}
}

func TestParseCommunityAcceptsKubeRoutersForms(t *testing.T) {
	for in, want := range map[string]string{"64512:100": "64512:100", "4259905637": "65001:101", "no-export": "65535:65281", "NO-ADVERTISE": "65535:65282"} {
		c, err := ParseCommunity(in)
		if err != nil || FormatCommunity(c) != want {
			t.Errorf("ParseCommunity(%q) = %s, %v; want %s", in, FormatCommunity(c), err, want)
		}
	}
	for _, in := range []string{"65536:1", "1:2:3", "no-such-name", "-1", "4294967296"} {
		if _, err := ParseCommunity(in); err == nil {
			t.Errorf("ParseCommunity(%q) accepted", in)
		}
	}
}

func TestRoutingBFD(t *testing.T) {
	cfg, err := Parse("test.toml", []byte("[routing]\nbfd_min_rx_interval = \"100ms\"\n[[routing.peers]]\naddress = \"192.0.2.1\"\nasn = 65000\nbfd = true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Routing.Peers[0].BFD || cfg.Routing.BFDMinRxInterval.Duration.String() != "100ms" || cfg.Routing.BFDMultiplier != 3 {
		t.Errorf("peer bfd %v, min rx %s, multiplier %d; want true, 100ms and the default 3",
			cfg.Routing.Peers[0].BFD, cfg.Routing.BFDMinRxInterval, cfg.Routing.BFDMultiplier)
	}
	for _, tc := range []struct{ name, toml, want string }{
		{"an interval under 10ms is rejected", "[routing]\nbfd_min_tx_interval = \"5ms\"\n", "routing.bfd_min_tx_interval: BFD interval 5ms must be 10ms-10s"},
		{"a zero multiplier is rejected", "[routing]\nbfd_multiplier = 0\n", "routing.bfd_multiplier: invalid BFD detect multiplier 0 (want 1-255)"},
		{"BFD with a multihop peer is rejected", "[[routing.peers]]\naddress = \"192.0.2.1\"\nasn = 65000\nmultihop = 2\nbfd = true\n",
			"routing.peers[0].bfd: BFD runs with directly connected peers only; unset multihop or bfd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("test.toml", []byte(tc.toml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one with %q", err, tc.want)
			}
		})
	}
}

func TestRoutingOverlayEncapsulation(t *testing.T) {
	for _, tc := range []struct {
		toml     string
		wantPort uint16
		want     []string
	}{
		{"[routing]\noverlay_encap = \"ipip\"\n", 0, nil},
		{"[routing]\noverlay_encap = \"fou\"\n", 5555, nil},
		{"[routing]\noverlay_encap = \"vxlan\"\n", 4789, nil},
		{"[routing]\noverlay_encap = \"vxlan\"\noverlay_encap_port = 8472\nvxlan_vni = 16777215\n", 8472, nil},
		{"[routing]\noverlay_encap = \"gre\"\n", 0, []string{`line 2: routing.overlay_encap: unknown encapsulation "gre" (want ipip, fou or vxlan)`}},
		{"[routing]\noverlay_encap = \"fou\"\noverlay_encap_port = 53\n", 0, []string{"line 3: routing.overlay_encap_port: invalid port 53: must be 1024-65535, or 0 for the encapsulation's own"}},
		{"[routing]\nvxlan_vni = 16777216\n", 0, []string{"line 2: routing.vxlan_vni: invalid VNI 16777216: must be 1-16777215"}},
	} {
		if tc.want != nil {
			if got := problems(t, tc.toml); !slices.Equal(got, tc.want) {
				t.Errorf("%q: problems = %q, want %q", tc.toml, got, tc.want)
			}
			continue
		}
		cfg, err := Parse("test.toml", []byte(tc.toml))
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.Routing.EncapPort(); got != tc.wantPort {
			t.Errorf("%q: port %d, want %d", tc.toml, got, tc.wantPort)
		}
	}
}
