package daemon

import (
	"os"
	"strings"
	"testing"

	"github.com/kube-routerd/kube-routerd/internal/testenv/benchfig"
)

func TestReadOnlySegmentsAreTheExecutablesUnwritableOnes(t *testing.T) {
	maps := `00400000-021c3000 r-xp 00000000 fe:00 42                           /usr/bin/kube-routerd
021c3000-04639000 r--p 01dc3000 fe:00 42                           /usr/bin/kube-routerd
04639000-046e1000 rw-p 04239000 fe:00 42                           /usr/bin/kube-routerd
046e1000-0672e000 rw-p 00000000 00:00 0
7f1a44809000-7f1a44b89000 r--p 00000000 fe:00 43                   /usr/lib/locale/C.utf8/LC_CTYPE
7f1a44c00000-7f1a44c01000 r--s 00000000 fe:00 42                   /usr/bin/kube-routerd
7ffd5e9f0000-7ffd5ea11000 rw-p 00000000 00:00 0                          [stack]
`
	got, err := readOnlySegments(strings.NewReader(maps), 42)
	if err != nil {
		t.Fatal(err)
	}
	want := []segment{{0x400000, 0x21c3000}, {0x21c3000, 0x4639000}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("segments %x, want %x (code and read-only data; not the data, other files or shared mappings)", got, want)
	}
	if _, err := readOnlySegments(strings.NewReader("zz-10 r-xp 0 fe:00 42 /x\n"), 42); err == nil {
		t.Error("a bad address range was taken")
	}
}

// TestReleaseCodePagesShrinksRSS releases the test binary's own code pages, on the
// real kernel: the process's file-backed RSS falls to what runs after it.
func TestReleaseCodePagesShrinksRSS(t *testing.T) {
	before := rssFileMiB(t)
	mapped, err := unmapCodePages()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFileMiB(t)
	t.Logf("RssFile %.1f MiB before, %.1f MiB after; %d MiB of mappings released", before, after, mapped>>20)
	if mapped == 0 {
		t.Fatal("no mapping of the executable was found")
	}
	if after >= before/2 {
		t.Errorf("RssFile went from %.1f to %.1f MiB, want less than half", before, after)
	}
}

func rssFileMiB(t *testing.T) float64 {
	t.Helper()
	mib, err := benchfig.StatusMiB(os.Getpid(), "RssFile")
	if err != nil {
		t.Fatal(err)
	}
	return mib
}
