package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the config parser. Whatever it reads, it must not
// panic; a file it accepts must validate and survive an encode/parse round trip; a
// file it rejects must say what is wrong.
func FuzzParse(f *testing.F) {
	reference, err := os.ReadFile(filepath.Join("..", "..", "etc", "config.toml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		"",
		string(reference),
		"[routing]\nasn = 4200000000\nrouter_id = \"192.0.2.1\"\noverlay = \"always\"\n",
		"[[routing.peers]]\naddress = \"192.0.2.7\"\nasn = 65001\npassword = \"s3cret\"\nmultihop = 2\n",
		"[service_proxy]\nscheduler = \"wrr\"\ncluster_cidrs = [\"10.244.0.0/16\", \"fd00:10:244::/56\"]\n",
		"[network_policy]\nsync_period = \"-1s\"\n",
		"[routing]\nrouter_id = \"fd00::1\"\nasn = 0\n",
		"[health]\nlisten = \"[::1]:99999\"\n",
		"[kubernetes]\nqps = nan\nburst = -1\n",
		"[routing.peers]\naddress = 1\n",
		"[unknown]\nkey = 1\n[routing]\nnope = true\n",
		"[routing]\ncommunities = [\"65000:100\", \"x:y\", \"70000:1\"]\n",
		"a = \"\\u0000\"\n[[[",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.toml", data)
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("rejection without problems: %v", err)
			}
			for _, p := range ce.Problems {
				if p.Message == "" {
					t.Fatalf("problem without a message: %+v", p)
				}
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("accepted config does not validate: %v\ninput:\n%s", err, data)
		}
		text, err := cfg.Encode()
		if err != nil {
			t.Fatalf("accepted config does not encode: %v", err)
		}
		again, err := Parse("encoded.toml", text)
		if err != nil {
			t.Fatalf("encoded config does not parse: %v\nencoded:\n%s", err, text)
		}
		if !reflect.DeepEqual(again, cfg) {
			t.Fatalf("encode/parse round trip changed the config:\nbefore: %+v\nafter:  %+v", cfg, again)
		}
	})
}
