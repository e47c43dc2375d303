package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/iamlet/iamlet/e2e/stack"
)

// Mem is a process's memory in MiB, the ways it costs. From /proc/PID/status: the resident set (VmRSS)
// and its private anonymous part (RssAnon: heap, stacks, what only this process holds and the kernel
// cannot drop) and file-backed part (RssFile: the binary's pages, shared and reclaimable). From the
// cgroup the process runs alone in: its working set (usage minus inactive file pages), what a
// memory-limited container is charged and evicted by. Zero where not measured.
type Mem struct {
	RSSMiB        float64 `json:"rss_mib"`
	AnonMiB       float64 `json:"anon_mib,omitempty"`
	FileMiB       float64 `json:"file_mib,omitempty"`
	WorkingSetMiB float64 `json:"working_set_mib,omitempty"`
}

// parseStatus reads VmRSS, RssAnon and RssFile from the text of /proc/PID/status.
func parseStatus(b []byte) (Mem, error) {
	var m Mem
	seen := 0
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		var dst *float64
		switch k {
		case "VmRSS":
			dst = &m.RSSMiB
		case "RssAnon":
			dst = &m.AnonMiB
		case "RssFile":
			dst = &m.FileMiB
		default:
			continue
		}
		kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return Mem{}, fmt.Errorf("%s: %w", k, err)
		}
		*dst = float64(kib) / 1024
		seen++
	}
	if seen != 3 {
		return Mem{}, errors.New("no VmRSS, RssAnon and RssFile (a kernel thread or a zombie?)")
	}
	return m, nil
}

// parseCPU reads user+system CPU time from the text of /proc/PID/stat.
func parseCPU(b []byte) (time.Duration, error) {
	// Fields after the command name, which is in parentheses and may hold spaces and parentheses: state is
	// [0], utime [11], stime [12], in clock ticks (USER_HZ, 100 on Linux).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, errors.New("short /proc/PID/stat")
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/PID/stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil
}

// procMem reads a process's memory from /proc.
func procMem(pid int) (Mem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Mem{}, err
	}
	return parseStatus(b)
}

// procCPU reads a process's user+system CPU time from /proc.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseCPU(b)
}

func cpuOf(pid int) time.Duration {
	c, _ := procCPU(pid)
	return c
}

// sampleMem reads pid's memory (and the working set of cgroup dir, if any) five times a quarter second
// apart and returns each figure's median.
func (b *bench) sampleMem(pid int, dir string) (Mem, error) {
	var rss, anon, file, ws []float64
	for i := range 5 {
		if i > 0 {
			time.Sleep(250 * time.Millisecond)
		}
		m, err := procMem(pid)
		if err != nil {
			return Mem{}, err
		}
		rss, anon, file = append(rss, m.RSSMiB), append(anon, m.AnonMiB), append(file, m.FileMiB)
		if dir != "" {
			w, err := b.cgroups.workingSet(dir)
			if err != nil {
				return Mem{}, err
			}
			ws = append(ws, w)
		}
	}
	return Mem{RSSMiB: median(rss), AnonMiB: median(anon), FileMiB: median(file), WorkingSetMiB: median(ws)}, nil
}

// memCgroups makes a memory cgroup for each process whose working set the benchmark reads, so that the
// process is charged alone, from its exec on (it is started in it).
type memCgroups struct {
	parent   string // the cgroups are made in here
	usage    string // the file with the cgroup's usage: memory.current (v2), memory.usage_in_bytes (v1)
	inactive string // memory.stat's inactive file pages: inactive_file (v2), total_inactive_file (v1)
	v1       bool   // the parent is this process's to remove
	unmount  string // a v1 hierarchy this process mounted, to unmount at the end
	n        int
	About    string // how the working set is read, for the report
}

// newMemCgroups finds a memory controller: cgroup v2's, in a child of this run's own cgroup (the stack
// removes it at the end; the benchmark's own v2 cgroup holds processes, so the controller cannot be given
// to children of it); or, where memory is bound to cgroup v1 (hybrid hosts), a child of the benchmark's
// own v1 memory cgroup, the hierarchy mounted first if `ip netns exec` hid it.
func newMemCgroups(run string) (*memCgroups, error) {
	if root, err := stack.CgroupV2Mount(); err == nil && hasWord(filepath.Join(root, "cgroup.controllers"), "memory") {
		top := filepath.Join(root, "iamlet-"+run)
		parent := filepath.Join(top, "bench")
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return nil, err
		}
		for _, d := range []string{root, top, parent} {
			if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte("+memory"), 0o644); err != nil {
				return nil, fmt.Errorf("enabling the memory controller below %s: %w", d, err)
			}
		}
		return &memCgroups{parent: parent, usage: "memory.current", inactive: "inactive_file",
			About: "cgroup v2: memory.current − inactive_file of a cgroup of its own, below the run's"}, nil
	}
	own, err := ownV1Cgroup()
	if err != nil {
		return nil, err
	}
	c := &memCgroups{v1: true, usage: "memory.usage_in_bytes", inactive: "total_inactive_file",
		About: "cgroup v1 (the machine binds the memory controller to v1): memory.usage_in_bytes − total_inactive_file of a child of the benchmark's own memory cgroup"}
	mnt, err := v1MemoryMount()
	if err != nil {
		if mnt, err = os.MkdirTemp("", "iamlet-bench-memcg-"); err != nil {
			return nil, err
		}
		if out, err := exec.Command("mount", "-t", "cgroup", "-o", "memory", "cgroup", mnt).CombinedOutput(); err != nil {
			_ = os.Remove(mnt)
			return nil, fmt.Errorf("mounting the cgroup v1 memory hierarchy: %v: %s", err, out)
		}
		c.unmount = mnt
	}
	c.parent = filepath.Join(mnt, own, "iamlet-bench-"+run)
	if err := os.Mkdir(c.parent, 0o755); err != nil {
		c.v1 = false // not ours to remove
		c.close()
		return nil, err
	}
	return c, nil
}

// make creates a cgroup for one process named name; run it there with stack.InCgroup.
func (c *memCgroups) make(name string) (string, error) {
	c.n++
	dir := filepath.Join(c.parent, fmt.Sprintf("%s-%d", name, c.n))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(dir, c.usage)); err != nil {
		_ = os.Remove(dir)
		return "", fmt.Errorf("no memory accounting in %s: %w", dir, err)
	}
	return dir, nil
}

// workingSet is cgroup dir's usage minus its inactive file pages, in MiB.
func (c *memCgroups) workingSet(dir string) (float64, error) {
	u, err := os.ReadFile(filepath.Join(dir, c.usage))
	if err != nil {
		return 0, err
	}
	usage, err := strconv.ParseInt(strings.TrimSpace(string(u)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", c.usage, err)
	}
	st, err := os.ReadFile(filepath.Join(dir, "memory.stat"))
	if err != nil {
		return 0, err
	}
	inactive, err := statValue(st, c.inactive)
	if err != nil {
		return 0, err
	}
	return float64(max(usage-inactive, 0)) / (1 << 20), nil
}

// remove removes a cgroup once its process has been reaped.
func (c *memCgroups) remove(dir string) {
	if c == nil || dir == "" {
		return
	}
	for deadline := time.Now().Add(5 * time.Second); os.Remove(dir) != nil && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
}

// close removes the parent cgroup (v1; the stack removes the v2 one) and the mount newMemCgroups made.
func (c *memCgroups) close() {
	if c == nil {
		return
	}
	if c.v1 {
		c.remove(c.parent)
	}
	if c.unmount != "" {
		_ = exec.Command("umount", c.unmount).Run()
		_ = os.Remove(c.unmount)
	}
}

// statValue is key's value in the text of a cgroup's memory.stat.
func statValue(b []byte, key string) (int64, error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), " "); ok && k == key {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("memory.stat: no %s", key)
}

// ownV1Cgroup is this process's memory cgroup in the v1 hierarchy.
func ownV1Cgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	return v1CgroupOf(b, "memory")
}

// v1CgroupOf is the cgroup of the v1 controller in the text of /proc/PID/cgroup.
func v1CgroupOf(b []byte, controller string) (string, error) {
	for _, l := range strings.Split(string(b), "\n") {
		// id:controllers:path
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		if slices.Contains(strings.Split(f[1], ","), controller) {
			return f[2], nil
		}
	}
	return "", fmt.Errorf("no %s controller in cgroup v1 or v2", controller)
}

// v1MemoryMount is where the v1 memory hierarchy is mounted in this mount namespace.
func v1MemoryMount() (string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	return v1MountOf(b, "memory")
}

// v1MountOf is the mount point of the v1 controller in the text of /proc/PID/mountinfo.
func v1MountOf(b []byte, controller string) (string, error) {
	for _, l := range strings.Split(string(b), "\n") {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, ok := strings.Cut(l, " - ")
		f, p := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(p) < 3 || p[0] != "cgroup" || f[3] != "/" {
			continue
		}
		if slices.Contains(strings.Split(p[2], ","), controller) {
			return f[4], nil
		}
	}
	return "", fmt.Errorf("the cgroup v1 %s hierarchy is not mounted here", controller)
}

func hasWord(file, word string) bool {
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	for _, w := range strings.Fields(string(b)) {
		if w == word {
			return true
		}
	}
	return false
}
