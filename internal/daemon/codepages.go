package daemon

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The daemon's executable is about 70 MB of code and read-only data (client-go and
// the API types, GoBGP, the Prometheus client). Every package's init runs at start,
// and the kernel maps a fault's neighbours with it (64 KiB by default), so nearly
// all of it ends up in the process's RSS: 51 MiB, measured, and it stays mapped for
// the process's life. What the daemon runs after its start, neighbours included,
// maps back about 30 MiB.

// ReleaseCodePages unmaps the executable's pages after a phase (after) that ran code
// the daemon does not need again; a failure costs only memory, and is logged.
func ReleaseCodePages(after string) {
	n, err := unmapCodePages()
	if err != nil {
		slog.Warn("cannot release the executable's pages; they stay in RSS", "after", after, "err", err)
		return
	}
	slog.Debug("released the executable's pages", "after", after, "mapped", n)
}

// unmapCodePages unmaps the pages of the executable's read-only segments (code,
// read-only data, the function tables) from this process, so that RSS holds the
// code that runs from now on: the kernel maps a page back, from the page cache,
// the next time it runs. The page cache keeps them; only this process's mapping goes.
// It returns the bytes the mappings covered.
func unmapCodePages() (uint64, error) {
	exe, err := os.Stat("/proc/self/exe")
	if err != nil {
		return 0, err
	}
	st, ok := exe.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("no inode for /proc/self/exe")
	}
	maps, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	defer maps.Close()
	segments, err := readOnlySegments(maps, st.Ino)
	if err != nil {
		return 0, fmt.Errorf("reading /proc/self/maps: %w", err)
	}
	var total uint64
	for _, s := range segments {
		// MADV_DONTNEED on a private file mapping drops the process's page table
		// entries; the pages were never written, so nothing of them is lost.
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, s.start, s.end-s.start, unix.MADV_DONTNEED); errno != 0 {
			return total, fmt.Errorf("madvise %#x-%#x: %w", s.start, s.end, errno)
		}
		total += uint64(s.end - s.start)
	}
	return total, nil
}

type segment struct{ start, end uintptr }

// readOnlySegments returns the private, unwritable mappings of the file with inode
// ino, from the format of /proc/<pid>/maps: "start-end perms offset dev inode path".
func readOnlySegments(maps io.Reader, ino uint64) ([]segment, error) {
	var out []segment
	scanner := bufio.NewScanner(maps)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 6 {
			continue
		}
		perms := fields[1]
		if len(perms) != 4 || perms[1] == 'w' || perms[3] != 'p' {
			continue
		}
		if n, err := strconv.ParseUint(fields[4], 10, 64); err != nil || n != ino {
			continue
		}
		start, end, found := strings.Cut(fields[0], "-")
		if !found {
			return nil, fmt.Errorf("bad address range %q", fields[0])
		}
		s, err := strconv.ParseUint(start, 16, 64)
		if err != nil {
			return nil, fmt.Errorf("bad address range %q", fields[0])
		}
		e, err := strconv.ParseUint(end, 16, 64)
		if err != nil || e <= s {
			return nil, fmt.Errorf("bad address range %q", fields[0])
		}
		out = append(out, segment{start: uintptr(s), end: uintptr(e)})
	}
	return out, scanner.Err()
}
