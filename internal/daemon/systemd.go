package daemon

import (
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// SystemdNotifier talks to systemd through $NOTIFY_SOCKET. Outside systemd (no
// socket) every call is a no-op.
type SystemdNotifier struct{}

// Notify sends one sd_notify state string.
func (SystemdNotifier) Notify(state string) error {
	_, err := sd.SdNotify(false, state)
	return err
}

// WatchdogInterval reads $WATCHDOG_USEC (for our PID); 0 when the watchdog is off.
func (SystemdNotifier) WatchdogInterval() time.Duration {
	iv, err := sd.SdWatchdogEnabled(false)
	if err != nil {
		return 0
	}
	return iv
}
