package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// A /proc/PID/smaps with the mappings a Go binary and its neighbours have, trimmed to the lines that matter.
const smapsSample = `00400000-00d57000 r-xp 00000000 fe:00 9978146                            /opt/iamlet
Size:               9564 kB
Rss:                4800 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me
00d57000-016d8000 r--p 00957000 fe:00 9978146                            /opt/iamlet
Size:               9732 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
016d8000-016e0000 r--p 012d8000 fe:00 9978146                            /opt/iamlet
Size:                 32 kB
Anonymous:             8 kB
VmFlags: rd mr mw me ac
016e0000-016e8000 r--p 012d8000 fe:00 9978146                            /opt/iamlet
Size:                 32 kB
Anonymous:             0 kB
Swap:                  4 kB
016e8000-01793000 rw-p 012e0000 fe:00 9978146                            /opt/iamlet
Size:                724 kB
Anonymous:           120 kB
01793000-037db000 rw-p 00000000 00:00 0 
Size:              33056 kB
Anonymous:           120 kB
7f0000000000-7f0000020000 r-xp 00000000 fe:00 1234                       /usr/lib/libother.so
Size:                128 kB
Anonymous:             0 kB
7ffd0000000-7ffd0021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Anonymous:            12 kB
`

func TestExecutableSpans(t *testing.T) {
	got, err := executableSpans([]byte(smapsSample), 0x500000)
	if err != nil {
		t.Fatal(err)
	}
	// The text and the read-only data; not the pages the process wrote (relocations under RELRO), in memory or
	// swapped out, not the writable data, not another file's text.
	want := []span{{0x400000, 0xd57000}, {0xd57000, 0x16d8000}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("executableSpans = %#x, want %#x", got, want)
	}

	for _, tc := range []struct {
		name  string
		smaps string
		pc    uint64
	}{
		{"pc in an anonymous mapping", smapsSample, 0x1800000},
		{"pc in no mapping", smapsSample, 0x100},
		{"a malformed mapping line", "zz-00400000 r-xp 00000000 fe:00 1 /opt/iamlet\n", 0x400000},
	} {
		if spans, err := executableSpans([]byte(tc.smaps), tc.pc); err == nil {
			t.Errorf("%s: executableSpans = %#x, want an error", tc.name, spans)
		}
	}
}

// A fresh process of the test binary (a Go binary like the agent, whose init has just mapped much of it) releases
// its pages, and must be left holding much less: a process of its own, since other tests release too.
func TestUnmapExecutablePages(t *testing.T) {
	if os.Getenv("IAMLET_TEST_UNMAP") == "1" {
		before := executableResident(t)
		advised, err := unmapExecutablePages()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("advised=%d before=%d after=%d\n", advised, before, executableResident(t))
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestUnmapExecutablePages$", "-test.count=1")
	cmd.Env = append(os.Environ(), "IAMLET_TEST_UNMAP=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var advised, before, after uint64
	if _, err := fmt.Sscanf(string(out[bytes.Index(out, []byte("advised=")):]), "advised=%d before=%d after=%d", &advised, &before, &after); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Logf("advised %d KiB; resident %d KiB before, %d KiB after", advised>>10, before>>10, after>>10)
	if advised == 0 || before == 0 || after > before/2 {
		t.Errorf("advised %d bytes; the binary's read-only pages went from %d to %d KiB resident, want at most half", advised, before>>10, after>>10)
	}
}

// executableResident is the resident size of the spans executableSpans picks in this process.
func executableResident(t *testing.T) uint64 {
	t.Helper()
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	spans, err := executableSpans(smaps, uint64(reflect.ValueOf(unmapExecutablePages).Pointer()))
	if err != nil {
		t.Fatal(err)
	}
	picked := map[uint64]bool{}
	for _, s := range spans {
		picked[s.start] = true
	}
	var rss uint64
	in := false
	sc := bufio.NewScanner(bytes.NewReader(smaps))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-"):
			lo, _, _ := strings.Cut(f[0], "-")
			start, _ := strconv.ParseUint(lo, 16, 64)
			in = picked[start]
		case in && len(f) == 3 && f[0] == "Rss:":
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			rss += kb << 10
		}
	}
	return rss
}
