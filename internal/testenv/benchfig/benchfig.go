// Package benchfig reports the figures every kube-routerd benchmark prints beside its
// timings: the spread of repeated runs, the kernel floor ratio, the machine's load
// and the process's peak memory and CPU time.
package benchfig

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ReportSpread reports min-ms and max-ms of repeated syncs, load1 and, when floors
// were measured, floor-ms (their mean) and x-floor (mean sync over mean floor).
func ReportSpread(b *testing.B, syncs, floors []time.Duration, load1 float64) {
	b.ReportMetric(MS(slices.Min(syncs)), "min-ms")
	b.ReportMetric(MS(slices.Max(syncs)), "max-ms")
	b.ReportMetric(load1, "load1")
	if len(floors) > 0 {
		floor := Mean(floors)
		b.ReportMetric(MS(floor), "floor-ms")
		b.ReportMetric(float64(Mean(syncs))/float64(floor), "x-floor")
	}
}

// Mean is the mean of ds.
func Mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

// MS is d in milliseconds.
func MS(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// LoadAverage1 is the machine's 1-minute load average (/proc/loadavg; in the VM the
// guest's, which does not see the host's other work): how busy it was besides the
// benchmark, printed beside its figures.
func LoadAverage1() float64 {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// CPUTime is the user+system CPU time the process has used, and the part of it its
// exited children (iptables-restore) used.
func CPUTime() (total, children time.Duration) {
	var self, kids syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	children = time.Duration(kids.Utime.Nano() + kids.Stime.Nano())
	return time.Duration(self.Utime.Nano()+self.Stime.Nano()) + children, children
}

// PeakRSSMiB reads the process's high-water resident set size.
func PeakRSSMiB() float64 {
	mib, _ := StatusMiB(os.Getpid(), "VmHWM")
	return mib
}

// StatusMiB reads a memory field (VmHWM: peak resident set, VmRSS: now) of process
// pid's /proc status, in MiB.
func StatusMiB(pid int, field string) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, field+":") {
			kb, _ := strconv.Atoi(strings.Fields(line)[1])
			return float64(kb) / 1024, nil
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}
