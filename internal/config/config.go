// Package config holds kube-routerd's configuration: the TOML schema, its defaults,
// strict decoding and validation. A Config that Load returns is valid and complete.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultPath is where the packaged config file lives.
const DefaultPath = "/etc/kube-router/config.toml"

// Config is the whole daemon configuration.
type Config struct {
	Kubernetes    Kubernetes    `toml:"kubernetes"`
	ServiceProxy  ServiceProxy  `toml:"service_proxy"`
	NetworkPolicy NetworkPolicy `toml:"network_policy"`
	Routing       Routing       `toml:"routing"`
	PodNetwork    PodNetwork    `toml:"pod_network"`
	LoadBalancer  LoadBalancer  `toml:"loadbalancer"`
	Health        Health        `toml:"health"`
	Metrics       Metrics       `toml:"metrics"`
	Logging       Logging       `toml:"logging"`
	Memory        Memory        `toml:"memory"`
	Debug         Debug         `toml:"debug"`
}

// Kubernetes says how to reach the API server and which Node object is ours.
type Kubernetes struct {
	// Kubeconfig is the path of the node's kubeconfig.
	Kubeconfig string `toml:"kubeconfig"`
	// NodeName overrides the node name; empty means the host name.
	NodeName string `toml:"node_name"`
	// ResyncPeriod is the informers' relist period (0 disables it).
	ResyncPeriod Duration `toml:"resync_period"`
	// QPS and Burst limit our requests to the API server.
	QPS   float64 `toml:"qps"`
	Burst int     `toml:"burst"`
}

// Health configures the /healthz and /readyz endpoints.
type Health struct {
	// Listen is host:port; empty disables the endpoint.
	Listen HostPort `toml:"listen"`
	// StallTimeout is how long a controller's loop may go without a heartbeat before
	// it counts as stuck (health fails and systemd watchdog pings stop).
	StallTimeout Duration `toml:"stall_timeout"`
}

// Metrics configures the Prometheus /metrics endpoint.
type Metrics struct {
	// Listen is host:port; empty disables the endpoint.
	Listen HostPort `toml:"listen"`
}

// Logging configures log/slog output.
type Logging struct {
	// Level is one of debug, info, warn, error.
	Level string `toml:"level"`
	// Format is "text" or "json".
	Format string `toml:"format"`
}

// Memory tunes the Go runtime's use of memory.
type Memory struct {
	// GCHeadroomMiB caps how far the heap may grow beyond its live part before Go
	// collects: GOGC is lowered as the live heap outgrows it (never below 20), so a
	// large cluster's caches are not doubled in RSS. 0 leaves Go's default; a GOGC in
	// the environment wins.
	GCHeadroomMiB int `toml:"gc_headroom_mib"`
}

// Debug holds diagnostics for operators, all off by default.
type Debug struct {
	// PprofListen is a loopback host:port that serves Go's runtime profiles
	// (net/http/pprof) under /debug/pprof/; empty, the default, serves none.
	PprofListen HostPort `toml:"pprof_listen"`
}

// Default returns the configuration a node runs with when the file sets nothing.
func Default() Config {
	return Config{
		Kubernetes: Kubernetes{
			Kubeconfig:   "/etc/kube-router/kubeconfig",
			ResyncPeriod: Duration{0},
			QPS:          20,
			Burst:        40,
		},
		ServiceProxy:  defaultServiceProxy(),
		NetworkPolicy: defaultNetworkPolicy(),
		Routing:       defaultRouting(),
		PodNetwork:    defaultPodNetwork(),
		LoadBalancer:  defaultLoadBalancer(),
		Health:        Health{Listen: "127.0.0.1:20244", StallTimeout: Duration{2 * time.Minute}},
		Metrics:       Metrics{Listen: "127.0.0.1:20245"},
		Logging:       Logging{Level: "info", Format: "text"},
		Memory:        Memory{GCHeadroomMiB: 40},
	}
}

// Problem is one thing wrong with a config file.
type Problem struct {
	Key     string // dotted TOML key, e.g. "routing.asn"
	Line    int    // 1-based line in the file; 0 when the key is not in the file
	Message string
}

func (p Problem) String() string {
	if p.Line > 0 {
		return fmt.Sprintf("line %d: %s: %s", p.Line, p.Key, p.Message)
	}
	return fmt.Sprintf("%s: %s", p.Key, p.Message)
}

// Error lists every problem found in a config file.
type Error struct {
	Path     string
	Problems []Problem
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "config %s: %d problem(s)", e.Path, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

// Load reads and validates the config file at path.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("reading config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes data strictly over the defaults and validates the result. Every
// problem is reported at once, each with its key and line: a value of the wrong type
// or format is reported and left at its default, so the keys after it are still
// checked.
func Parse(path string, data []byte) (Config, error) {
	lines := indexKeyLines(data)
	var tree map[string]any
	if _, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&tree); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return Config{}, &Error{Path: path, Problems: []Problem{{
				Key: pe.LastKey, Line: pe.Position.Line, Message: pe.Message,
			}}}
		}
		return Config{}, &Error{Path: path, Problems: []Problem{decodeProblem(err)}}
	}
	cfg, md, problems, err := decodeTree(tree, lines)
	if err != nil {
		return Config{}, &Error{Path: path, Problems: problems}
	}
	cfg.normalize()
	undecoded := map[string]bool{}
	for _, k := range md.Undecoded() {
		undecoded[k.String()] = true
	}
	for _, k := range md.Undecoded() {
		if len(k) > 1 && undecoded[k[:len(k)-1].String()] {
			continue // reported with its unknown table
		}
		msg := "unknown key"
		if md.Type(k...) == "Hash" {
			msg = "unknown section"
		}
		problems = append(problems, Problem{Key: k.String(), Line: lines.find(k.String()), Message: msg})
	}
	v := &validator{lines: lines}
	cfg.validate(v)
	// A value dropped for its type is already reported; its default may not be valid
	// in this file's context, but that is no second problem.
	dropped := map[string]bool{}
	for _, p := range problems {
		dropped[p.Key] = true
	}
	for _, p := range v.problems {
		if !dropped[indexRE.ReplaceAllString(p.Key, "")] {
			problems = append(problems, p)
		}
	}
	if len(problems) > 0 {
		sort.SliceStable(problems, func(i, j int) bool { return problems[i].Line < problems[j].Line })
		return Config{}, &Error{Path: path, Problems: problems}
	}
	return cfg, nil
}

// decodeTree decodes the parsed file over the defaults. The decoder stops at the
// first value it cannot take, so each such value is recorded as a problem (with its
// line in the file) and dropped, and the rest decoded again. err is set only when a
// problem cannot be attributed to a key, which would stop the loop.
func decodeTree(tree map[string]any, lines keyLines) (Config, toml.MetaData, []Problem, error) {
	var problems []Problem
	for {
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(tree); err != nil {
			return Config{}, toml.MetaData{}, append(problems, Problem{Key: "(file)", Message: err.Error()}), err
		}
		cfg := Default()
		md, err := toml.NewDecoder(&buf).Decode(&cfg)
		if err == nil {
			return cfg, md, problems, nil
		}
		p := decodeProblem(err)
		var pe toml.ParseError
		if errors.As(err, &pe) {
			p = Problem{Key: pe.LastKey, Message: pe.Message}
		}
		p.Line = lines.find(p.Key)
		problems = append(problems, p)
		if !deleteKey(tree, strings.Split(p.Key, ".")) {
			return Config{}, toml.MetaData{}, problems, err
		}
	}
}

// deleteKey removes a dotted key from a decoded TOML tree, from every table of an
// array of tables on its path; it reports whether it found the key.
func deleteKey(tree map[string]any, path []string) bool {
	if len(path) == 0 || path[0] == "" {
		return false
	}
	v, ok := tree[path[0]]
	if !ok {
		return false
	}
	if len(path) == 1 {
		delete(tree, path[0])
		return true
	}
	switch sub := v.(type) {
	case map[string]any:
		return deleteKey(sub, path[1:])
	case []map[string]any:
		found := false
		for _, t := range sub {
			found = deleteKey(t, path[1:]) || found
		}
		return found
	}
	// A scalar where a table was expected: drop the whole value.
	delete(tree, path[0])
	return true
}

// indexRE matches the "[1]" of "routing.peers[1].asn".
var indexRE = regexp.MustCompile(`\[\d+\]`)

// typeErrorRE matches the decoder's type errors, which are plain errors that carry
// the line and key only in their text.
var typeErrorRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

func decodeProblem(err error) Problem {
	if m := typeErrorRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		return Problem{Key: m[2], Line: line, Message: m[3]}
	}
	return Problem{Key: "(file)", Message: strings.TrimPrefix(err.Error(), "toml: ")}
}

// normalize makes lists the file wrote as [] equal to lists it left out.
func (c *Config) normalize() {
	for _, l := range []*[]Prefix{&c.ServiceProxy.ClusterCIDRs, &c.ServiceProxy.NodePortAddresses,
		&c.ServiceProxy.ExternalIPRanges, &c.ServiceProxy.LoadBalancerIPRanges, &c.PodNetwork.ServiceCIDRs} {
		if len(*l) == 0 {
			*l = nil
		}
	}
	if len(c.Routing.Peers) == 0 {
		c.Routing.Peers = nil
	}
	for _, l := range []*[]IPPool{&c.LoadBalancer.IPv4Pools, &c.LoadBalancer.IPv6Pools} {
		if len(*l) == 0 {
			*l = nil
		}
	}
}

// Validate checks a Config built in code (tests, the demo); Parse already does this.
func (c Config) Validate() error {
	v := &validator{}
	c.validate(v)
	if len(v.problems) > 0 {
		return &Error{Path: "(in memory)", Problems: v.problems}
	}
	return nil
}

func (c Config) validate(v *validator) {
	if c.Kubernetes.QPS <= 0 {
		v.add("kubernetes.qps", "must be greater than 0")
	}
	if c.Kubernetes.Burst < 1 {
		v.add("kubernetes.burst", "must be at least 1")
	}
	if err := c.Health.Listen.Validate(); err != nil {
		v.add("health.listen", err.Error())
	}
	if c.Health.StallTimeout.Duration < time.Second {
		v.add("health.stall_timeout", "must be at least 1s")
	}
	if err := c.Metrics.Listen.Validate(); err != nil {
		v.add("metrics.listen", err.Error())
	}
	if c.Memory.GCHeadroomMiB < 0 {
		v.add("memory.gc_headroom_mib", "must be 0 (Go's default) or more")
	}
	if err := c.Debug.PprofListen.Validate(); err != nil {
		v.add("debug.pprof_listen", err.Error())
	} else if c.Debug.PprofListen != "" && !c.Debug.PprofListen.IsLoopback() {
		// Profiles show the daemon's memory and code and cost CPU on demand: never to the network.
		v.add("debug.pprof_listen", fmt.Sprintf("%q is not a loopback address: want an IP of 127.0.0.0/8 or ::1 with a port, e.g. \"127.0.0.1:6060\"", string(c.Debug.PprofListen)))
	}
	switch c.Logging.Level {
	case "debug", "info", "warn", "error":
	default:
		v.add("logging.level", fmt.Sprintf("unknown level %q (want debug, info, warn or error)", c.Logging.Level))
	}
	switch c.Logging.Format {
	case "text", "json":
	default:
		v.add("logging.format", fmt.Sprintf("unknown format %q (want text or json)", c.Logging.Format))
	}
	c.ServiceProxy.validate(v)
	c.NetworkPolicy.validate(v)
	c.Routing.validate(v)
	c.PodNetwork.validate(v)
	c.LoadBalancer.validate(v, c.ServiceProxy)
}

// SlogLevel maps the configured level name to a slog.Level.
func (l Logging) SlogLevel() slog.Level {
	switch l.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// Encode writes the effective configuration as TOML (check-config prints it).
func (c Config) Encode() ([]byte, error) {
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(c); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// validator collects problems with the file line of each key.
type validator struct {
	lines    keyLines
	problems []Problem
}

func (v *validator) add(key, msg string) {
	v.problems = append(v.problems, Problem{Key: key, Line: v.lines.find(key), Message: msg})
}
