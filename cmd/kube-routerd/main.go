// Command kube-routerd is the node networking daemon: service proxy (IPVS), network
// policy (iptables + ipsets) and pod routing (BGP), run as a systemd service.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/kube-routerd/kube-routerd/internal/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitBadConfig is the exit status when the config cannot be read or is invalid:
// EX_CONFIG of sysexits.h. The unit's RestartPreventExitStatus= names it, so systemd
// does not restart a daemon that would fail the same way every time.
const exitBadConfig = 78

const usage = `kube-routerd: Kubernetes node networking (IPVS service proxy, network policy, BGP routing)

Usage:
  kube-routerd [run] [--config FILE]       run the daemon (default command)
  kube-routerd check-config [--config FILE] validate the config and print the effective settings
  kube-routerd status [--config FILE] [--json]  show what the running daemon programs
  kube-routerd explain [--config FILE] [-o json] NS/SRC-POD NS/DST-POD PORT[/PROTO] [4|6]
                                           which policies allow or deny a connection, and where
  kube-routerd cleanup [--config FILE]     remove everything kube-routerd programmed
  kube-routerd version                     print the version
`

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

func runMain(args []string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	configPath := fs.String("config", config.DefaultPath, "path of the TOML config file")
	asJSON := fs.Bool("json", false, "status, explain: print the raw JSON report")
	output := fs.String("o", "text", "explain: output format, text or json")
	// Flags may come before, between or after explain's arguments.
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if fs.NArg() == 0 || cmd != "explain" {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected argument %q\n%s", fs.Arg(0), usage)
		return 2
	}

	switch cmd {
	case "version":
		fmt.Fprintf(stdout, "kube-routerd %s\n", version)
		return 0
	case "check-config":
		return checkConfig(*configPath, stdout, stderr)
	case "run", "cleanup", "status", "explain":
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "unknown command %q\n%s", cmd, usage)
		return 2
	}

	cfg, err := config.Load(*configPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitBadConfig
	}
	slog.SetDefault(newLogger(cfg.Logging, stderr))

	switch cmd {
	case "status":
		return printStatus(cfg, *asJSON, stdout, stderr)
	case "explain":
		if *output != "text" && *output != "json" {
			fmt.Fprintf(stderr, "-o %s: want text or json\n", *output)
			return 2
		}
		return printExplain(cfg, positional, *asJSON || *output == "json", stdout, stderr)
	case "cleanup":
		if err := cleanup(context.Background(), cfg); err != nil {
			slog.Error("cleanup incomplete", "err", err)
			return 1
		}
		slog.Info("cleanup done")
		return 0
	}

	ctx, stop := signalContext()
	defer stop()
	if err := run(ctx, cfg, version); err != nil {
		slog.Error("kube-routerd stopped with an error", "err", err)
		return 1
	}
	slog.Info("kube-routerd stopped; the dataplane is left in place")
	return 0
}

func checkConfig(path string, stdout, stderr io.Writer) int {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitBadConfig
	}
	out, err := cfg.Encode()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "# %s is valid; effective configuration:\n%s", path, out)
	return 0
}

func newLogger(c config.Logging, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.SlogLevel()}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// signalContext is cancelled by the first SIGTERM or SIGINT, which starts a graceful
// stop; a second signal exits at once.
func signalContext() (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-ch
		slog.Info("stopping; send the signal again to force exit", "signal", sig.String())
		cancel()
		sig = <-ch
		slog.Warn("second signal; exiting now", "signal", sig.String())
		os.Exit(1)
	}()
	return ctx, func() { signal.Stop(ch); cancel() }
}
