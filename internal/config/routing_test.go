package config

import (
	"errors"
	"net/netip"
	"slices"
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
			_, err := Parse("test.toml", []byte("[[routing.peers]]\naddress = \"192.0.2.1\"\nasn = 65000\nmax_prefixes = "+tc.value+"\n"))
			var cerr *Error
			if !errors.As(err, &cerr) {
				t.Fatalf("want *config.Error, got %v", err)
			}
			var got []string
			for _, p := range cerr.Problems {
				got = append(got, p.String())
			}
			if !slices.Equal(got, []string{tc.want}) {
				t.Errorf("problems = %q, want %q", got, tc.want)
			}
		})
	}
}
