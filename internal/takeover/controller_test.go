package takeover

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/kube-routerd/kube-routerd/internal/daemon"
)

// TestRunBeatsWhileTheOthersSync: at the top of the scale envelope the other
// controllers' first syncs take minutes, and waiting for them must not make this
// loop look stuck (which withholds systemd's watchdog pings).
func TestRunBeatsWhileTheOthersSync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		c := &Controller{}
		c.StartAfter(make(chan struct{})) // the others never finish here
		hb := daemon.NewHeartbeat("takeover", nil)
		done := make(chan error)
		go func() { done <- c.Run(ctx, hb) }()

		const stall = 2 * time.Minute
		time.Sleep(3 * stall)
		synctest.Wait()
		if !hb.Alive(stall) {
			t.Errorf("no beat for %s while waiting for the other controllers", stall)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}
