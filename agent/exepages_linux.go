package agent

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// unmapExecutablePages drops the process's mappings of its own executable's read-only pages (text, rodata, the
// function tables) and returns how many bytes of address space it advised. Start-up runs every package's init and
// touches nearly every 64 KiB of the binary once; the kernel keeps those pages mapped, and counted in VmRSS, for
// the life of the process. What the agent still runs is mapped again on its next touch, from the page cache.
func unmapExecutablePages() (uint64, error) {
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0, fmt.Errorf("read own mappings: %w", err)
	}
	spans, err := executableSpans(smaps, uint64(reflect.ValueOf(unmapExecutablePages).Pointer()))
	if err != nil {
		return 0, err
	}
	var advised uint64
	for _, s := range spans {
		// The address is the kernel's to check: no Go pointer is made of it.
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(s.start), uintptr(s.end-s.start), unix.MADV_DONTNEED); errno != 0 {
			return advised, fmt.Errorf("madvise %#x-%#x: %w", s.start, s.end, errno)
		}
		advised += s.end - s.start
	}
	return advised, nil
}

// span is an address range [start, end).
type span struct{ start, end uint64 }

// executableSpans reads smaps (the format of /proc/PID/smaps) for the mappings of the file that holds pc, read-only
// and holding no page of the process's own. A page the process wrote (a relocation under RELRO, a debugger's or a
// uprobe's breakpoint) is anonymous, or swapped out, and dropping it would bring back the file's bytes instead; such
// mappings are skipped. (A uprobe placed between the read and the madvise would be dropped: the shipped binary is
// static and not PIE, so only such a probe can write to these mappings at all.)
func executableSpans(smaps []byte, pc uint64) ([]span, error) {
	type mapping struct {
		span
		perms, file string // file: device, inode and path, as smaps prints them
		anonymous   bool
	}
	var ms []mapping
	sc := bufio.NewScanner(bytes.NewReader(smaps))
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			lo, hi, _ := strings.Cut(f[0], "-")
			start, err1 := strconv.ParseUint(lo, 16, 64)
			end, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 != nil || err2 != nil || end <= start || len(f[1]) < 4 {
				return nil, fmt.Errorf("own mappings: unexpected line %q", line)
			}
			ms = append(ms, mapping{span: span{start, end}, perms: f[1], file: strings.Join(f[3:], " ")})
			continue
		}
		for _, key := range []string{"Anonymous:", "Swap:"} {
			if v, ok := strings.CutPrefix(line, key); ok && len(ms) > 0 {
				ms[len(ms)-1].anonymous = ms[len(ms)-1].anonymous || strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")) != "0"
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("own mappings: %w", err)
	}
	file := ""
	for _, m := range ms {
		if m.start <= pc && pc < m.end {
			file = m.file
		}
	}
	if f := strings.Fields(file); len(f) < 3 || f[1] == "0" {
		return nil, fmt.Errorf("own mappings: no file mapping holds the text at %#x", pc)
	}
	var spans []span
	for _, m := range ms {
		if m.file == file && m.perms[1] != 'w' && !m.anonymous {
			spans = append(spans, m.span)
		}
	}
	return spans, nil
}
