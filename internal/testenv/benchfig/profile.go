package benchfig

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CPUProfile writes a CPU profile of the next seconds of a process, what they are
// (for the log), to $KUBEROUTERD_BENCH_OUT/name, if that is set: call it as the
// measured phase starts (a process's start too), and what it returns once the phase
// is over. It asks url (a net/http/pprof profile endpoint, reached through client)
// every few milliseconds until the process answers, for up to a minute.
func CPUProfile(b *testing.B, client *http.Client, url string, seconds int, name, what string) (wait func()) {
	dir := os.Getenv("KUBEROUTERD_BENCH_OUT")
	if dir == "" {
		return func() {}
	}
	done := make(chan string, 1)
	go func() {
		url := fmt.Sprintf("%s?seconds=%d", url, seconds)
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			resp, err := client.Get(url)
			if err != nil {
				continue
			}
			profile, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("HTTP %d", resp.StatusCode)
			}
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, name), profile, 0o644)
			}
			if err != nil {
				done <- fmt.Sprintf("CPU profile %s: %v", name, err)
			} else {
				done <- fmt.Sprintf("CPU profile of %s (%d s): %s", what, seconds, filepath.Join(dir, name))
			}
			return
		}
		done <- fmt.Sprintf("CPU profile %s: %s did not answer within a minute", name, url)
	}()
	return func() {
		b.Helper()
		b.Log(<-done)
	}
}
