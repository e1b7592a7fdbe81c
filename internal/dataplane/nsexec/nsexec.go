// Package nsexec runs code with the calling OS thread inside another network
// namespace, for what netlink sockets cannot do: /proc/net and /proc/sys files resolve
// to the namespace of the thread that opens them, and child processes inherit it.
package nsexec

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Run runs fn on an OS thread switched to network namespace ns; a closed handle
// (netns.None()) runs fn where the caller is. Processes fn starts (os/exec forks from
// the current thread) run in ns too.
func Run(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("getting current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering netns: %w", err)
			return
		}
		ferr := fn()
		// A thread that cannot go back stays locked, so Go discards it when this
		// goroutine exits instead of reusing it in the wrong namespace.
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}
