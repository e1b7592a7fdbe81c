//go:build integration

package proxy

import (
	"bytes"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
	"github.com/kube-routerd/kube-routerd/internal/testenv"
	"github.com/kube-routerd/kube-routerd/internal/testenv/netns"
)

func TestCleanupWithoutIPVSSaysSoInOneLine(t *testing.T) {
	testenv.RequireRoot(t)
	loaded, err := ipvs.Loaded()
	if err != nil {
		t.Fatal(err)
	}
	if loaded {
		testenv.Unavailable(t, "needs a kernel without IPVS (the host tier's)")
	}
	ns := netns.NewNS(t, "node", "cleanup")
	var logs, mobyLogs bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	// moby/ipvs logs through logrus when it cannot load or find IPVS.
	logrus.SetOutput(&mobyLogs)
	t.Cleanup(func() {
		slog.SetDefault(prev)
		logrus.SetOutput(os.Stderr)
	})

	if err := cleanupAt(t.Context(), config.Default().ServiceProxy, ns.Handle, slog.Default()); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], "IPVS is not loaded in this kernel") {
		t.Errorf("cleanup logged %q, want one line saying IPVS is not loaded", logs.String())
	}
	if mobyLogs.Len() != 0 {
		t.Errorf("moby/ipvs logged %q, want nothing", mobyLogs.String())
	}
}
