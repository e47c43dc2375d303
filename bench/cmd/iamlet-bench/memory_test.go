package main

import (
	"testing"
	"time"
)

const procStatus = `Name:	iamlet
Umask:	0022
State:	S (sleeping)
VmPeak:	 1267340 kB
VmRSS:	   18432 kB
RssAnon:	   10240 kB
RssFile:	    8192 kB
RssShmem:	       0 kB
Threads:	9
`

func TestParseStatus(t *testing.T) {
	got, err := parseStatus([]byte(procStatus))
	want := Mem{RSSMiB: 18, AnonMiB: 10, FileMiB: 8}
	if err != nil || got != want {
		t.Errorf("parseStatus() = %+v, %v, want %+v", got, err, want)
	}
	for name, text := range map[string]string{
		"kernel thread": "Name:\tkthreadd\nState:\tS (sleeping)\n",
		"bad number":    "VmRSS:\tlots kB\nRssAnon:\t1 kB\nRssFile:\t1 kB\n",
	} {
		if m, err := parseStatus([]byte(text)); err == nil {
			t.Errorf("parseStatus(%s) = %+v, want an error", name, m)
		}
	}
}

func TestParseCPU(t *testing.T) {
	for _, tc := range []struct {
		name, stat string
		want       time.Duration
	}{
		{"plain", "1234 (iamlet) S 1 1234 1234 0 -1 4194560 5000 0 0 0 150 30 0 0 20 0 9 0 100 1000000 4500", 1800 * time.Millisecond},
		{"spaces and parentheses in the name", "99 (a (b) c) R 1 99 99 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 100 10", 100 * time.Millisecond},
	} {
		got, err := parseCPU([]byte(tc.stat))
		if err != nil || got != tc.want {
			t.Errorf("parseCPU(%s) = %v, %v, want %v", tc.name, got, err, tc.want)
		}
	}
	if d, err := parseCPU([]byte("1 (x) S 1 2")); err == nil {
		t.Errorf("parseCPU(short) = %v, want an error", d)
	}
}

func TestStatValue(t *testing.T) {
	st := []byte("anon 7340032\nfile 4194304\nactive_file 1048576\ninactive_file 3145728\ntotal_inactive_file 99\n")
	for _, tc := range []struct {
		key  string
		want int64
	}{{"inactive_file", 3145728}, {"total_inactive_file", 99}, {"anon", 7340032}} {
		if got, err := statValue(st, tc.key); err != nil || got != tc.want {
			t.Errorf("statValue(%q) = %d, %v, want %d", tc.key, got, err, tc.want)
		}
	}
	if v, err := statValue(st, "inactive"); err == nil {
		t.Errorf("statValue(%q) = %d, want an error (no prefix matches)", "inactive", v)
	}
}

func TestV1CgroupOf(t *testing.T) {
	self := []byte("9:name=systemd:/\n4:memory:/process_api/eb6c\n2:cpu,cpuacct:/x\n0::/\n")
	for _, tc := range []struct{ ctl, want string }{{"memory", "/process_api/eb6c"}, {"cpuacct", "/x"}} {
		if got, err := v1CgroupOf(self, tc.ctl); err != nil || got != tc.want {
			t.Errorf("v1CgroupOf(%q) = %q, %v, want %q", tc.ctl, got, err, tc.want)
		}
	}
	if got, err := v1CgroupOf([]byte("0::/user.slice\n"), "memory"); err == nil {
		t.Errorf("v1CgroupOf(v2 only) = %q, want an error", got)
	}
}

func TestV1MountOf(t *testing.T) {
	mi := []byte(`31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`)
	if got, err := v1MountOf(mi, "memory"); err != nil || got != "/sys/fs/cgroup/memory" {
		t.Errorf("v1MountOf(memory) = %q, %v, want /sys/fs/cgroup/memory", got, err)
	}
	// A bind mount of a subtree does not show the whole hierarchy.
	sub := []byte("35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
	if got, err := v1MountOf(sub, "memory"); err == nil {
		t.Errorf("v1MountOf(subtree) = %q, want an error", got)
	}
}
