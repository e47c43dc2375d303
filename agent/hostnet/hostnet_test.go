package hostnet

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Pod UIDs, and as the systemd driver writes them into cgroup names.
const (
	uid          = "6f1c3f9e-1b2a-4c3d-9e8f-0a1b2c3d4e5f"
	uidSystemd   = "6f1c3f9e_1b2a_4c3d_9e8f_0a1b2c3d4e5f"
	other        = "0d5e7a8b-2c3d-4e5f-8a9b-1c2d3e4f5a6b"
	otherSystemd = "0d5e7a8b_2c3d_4e5f_8a9b_1c2d3e4f5a6b"
)

// mkdirs makes a directory tree below root, a stand-in for a cgroup v2 hierarchy: directory inodes are real.
func mkdirs(t *testing.T, root string, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func inodeOf(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	id, err := inode(fi)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestPodUID(t *testing.T) {
	const (
		systemd  = "kubepods.slice"
		cgroupfs = "kubepods"
		be       = "kubepods.slice/kubepods-besteffort.slice/"
		bu       = "kubepods.slice/kubepods-burstable.slice/"
	)
	tests := []struct {
		name, pods, dir string
		want            string // "" for no pod
	}{
		{"systemd besteffort", systemd, be + "kubepods-besteffort-pod" + uidSystemd + ".slice", uid},
		{"systemd besteffort container", systemd, be + "kubepods-besteffort-pod" + uidSystemd + ".slice/cri-containerd-abc.scope", uid},
		{"systemd burstable container", systemd, bu + "kubepods-burstable-pod" + uidSystemd + ".slice/crio-abc.scope", uid},
		{"systemd guaranteed", systemd, "kubepods.slice/kubepods-pod" + uidSystemd + ".slice", uid},
		{"systemd guaranteed container", systemd, "kubepods.slice/kubepods-pod" + uidSystemd + ".slice/cri-containerd-abc.scope", uid},
		{"systemd nested below a container", systemd, "kubepods.slice/kubepods-pod" + uidSystemd + ".slice/cri-containerd-abc.scope/a/b/c", uid},
		{"systemd lookalike inside a pod names the outer pod", systemd,
			be + "kubepods-besteffort-pod" + uidSystemd + ".slice/cri-containerd-abc.scope/kubepods-besteffort-pod" + otherSystemd + ".slice", uid},
		{"systemd custom pods slice", "custom.slice/custom-kubepods.slice",
			"custom.slice/custom-kubepods.slice/custom-kubepods-burstable.slice/custom-kubepods-burstable-pod" + uidSystemd + ".slice/x.scope", uid},

		{"systemd pods cgroup", systemd, "kubepods.slice", ""},
		{"systemd qos cgroup", systemd, "kubepods.slice/kubepods-burstable.slice", ""},
		{"systemd qos mismatch", systemd, be + "kubepods-burstable-pod" + uidSystemd + ".slice", ""},
		{"systemd qos pod directly below pods", systemd, "kubepods.slice/kubepods-besteffort-pod" + uidSystemd + ".slice", ""},
		{"systemd guaranteed pod below qos", systemd, be + "kubepods-pod" + uidSystemd + ".slice", ""},
		{"systemd unknown qos", systemd, "kubepods.slice/kubepods-guaranteed.slice/kubepods-guaranteed-pod" + uidSystemd + ".slice", ""},
		{"systemd pod below another cgroup", systemd, "kubepods.slice/other.slice/kubepods-besteffort-pod" + uidSystemd + ".slice", ""},
		{"systemd pod two levels down", systemd, be + "x.slice/kubepods-besteffort-pod" + uidSystemd + ".slice", ""},
		{"systemd outside the pods cgroup", systemd, "system.slice/kubepods-pod" + uidSystemd + ".slice", ""},
		{"systemd cgroupfs name", systemd, "kubepods.slice/pod" + uid, ""},
		{"systemd dashes", systemd, "kubepods.slice/kubepods-pod" + uid + ".slice", ""},
		{"systemd no .slice", systemd, "kubepods.slice/kubepods-pod" + uidSystemd, ""},
		{"systemd suffix after .slice", systemd, "kubepods.slice/kubepods-pod" + uidSystemd + ".slicex", ""},
		{"systemd uppercase", systemd, "kubepods.slice/kubepods-pod" + strings.ToUpper(uidSystemd) + ".slice", ""},
		{"systemd static pod hash", systemd, "kubepods.slice/kubepods-pod2b5e1c7d9a0f4e3b8c6d1a2b3c4d5e6f.slice", ""},
		{"systemd short uid", systemd, "kubepods.slice/kubepods-pod" + uidSystemd[:35] + ".slice", ""},
		{"systemd non-hex", systemd, "kubepods.slice/kubepods-pod" + "g" + uidSystemd[1:] + ".slice", ""},
		{"systemd groups misplaced", systemd, "kubepods.slice/kubepods-pod6f1c3f9e1_b2a_4c3d_9e8f_0a1b2c3d4e5f.slice", ""},

		{"cgroupfs besteffort", cgroupfs, "kubepods/besteffort/pod" + uid, uid},
		{"cgroupfs burstable container", cgroupfs, "kubepods/burstable/pod" + uid + "/0123456789abcdef", uid},
		{"cgroupfs guaranteed", cgroupfs, "kubepods/pod" + uid, uid},
		{"cgroupfs guaranteed container", cgroupfs, "kubepods/pod" + uid + "/0123456789abcdef", uid},
		{"cgroupfs lookalike inside a pod names the outer pod", cgroupfs, "kubepods/besteffort/pod" + uid + "/ctr/pod" + other, uid},

		{"cgroupfs qos cgroup", cgroupfs, "kubepods/besteffort", ""},
		{"cgroupfs unknown qos", cgroupfs, "kubepods/guaranteed/pod" + uid, ""},
		{"cgroupfs two levels down", cgroupfs, "kubepods/besteffort/x/pod" + uid, ""},
		{"cgroupfs outside the pods cgroup", cgroupfs, "other/pod" + uid, ""},
		{"cgroupfs underscores", cgroupfs, "kubepods/besteffort/pod" + uidSystemd, ""},
		{"cgroupfs systemd name", cgroupfs, "kubepods/kubepods-pod" + uidSystemd + ".slice", ""},
		{"cgroupfs suffix", cgroupfs, "kubepods/pod" + uid + "x", ""},
		{"cgroupfs uppercase", cgroupfs, "kubepods/pod" + strings.ToUpper(uid), ""},
		{"cgroupfs static pod hash", cgroupfs, "kubepods/pod2b5e1c7d9a0f4e3b8c6d1a2b3c4d5e6f", ""},
		{"cgroupfs braces", cgroupfs, "kubepods/pod{" + uid + "}", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			mkdirs(t, root, tc.pods, tc.dir)
			c, err := newCgroups(root, tc.pods)
			if err != nil {
				t.Fatal(err)
			}
			id := inodeOf(t, filepath.Join(root, tc.dir))
			got, ok, err := c.PodUID(id)
			if err != nil {
				t.Fatalf("PodUID(%s) error: %v", tc.dir, err)
			}
			if got != tc.want || ok != (tc.want != "") {
				t.Errorf("PodUID(%s) = %q, %v, want %q", tc.dir, got, ok, tc.want)
			}
		})
	}
}

func TestPodUIDCachesAndRescans(t *testing.T) {
	root := t.TempDir()
	podA := "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidSystemd + ".slice"
	mkdirs(t, root, podA+"/cri-containerd-a.scope")
	c, err := newCgroups(root, "")
	if err != nil {
		t.Fatal(err)
	}
	ctrA := inodeOf(t, filepath.Join(root, podA, "cri-containerd-a.scope"))

	lookup := func(id uint64, want string, scans uint64) {
		t.Helper()
		got, ok, err := c.PodUID(id)
		if err != nil || got != want || ok != (want != "") {
			t.Errorf("PodUID(%d) = %q, %v, %v, want %q", id, got, ok, err, want)
		}
		if c.started != scans {
			t.Errorf("after PodUID(%d): %d scans, want %d", id, c.started, scans)
		}
	}
	lookup(ctrA, uid, 1)
	lookup(ctrA, uid, 1) // cached

	// A container that starts later is found by the scan its first miss makes.
	mkdirs(t, root, podA+"/cri-containerd-b.scope")
	lookup(inodeOf(t, filepath.Join(root, podA, "cri-containerd-b.scope")), uid, 2)

	// An id below no pod is not remembered: every miss looks again.
	_, _, pods := c.Pods()
	lookup(pods, "", 3)
	lookup(pods, "", 4)

	// A new pod appears while the old one goes: the next scan finds the new one and forgets the old.
	podB := "kubepods.slice/kubepods-pod" + otherSystemd + ".slice"
	mkdirs(t, root, podB+"/cri-containerd-c.scope")
	if err := os.RemoveAll(filepath.Join(root, podA)); err != nil {
		t.Fatal(err)
	}
	ctrC := inodeOf(t, filepath.Join(root, podB, "cri-containerd-c.scope"))
	lookup(ctrC, other, 5)
	want := map[uint64]string{inodeOf(t, filepath.Join(root, podB)): other, ctrC: other}
	if len(c.known) != len(want) || c.known[ctrC] != other {
		t.Errorf("after pod %s went, the cache holds %v, want %v", uid, c.known, want)
	}
}

func TestPodUIDConcurrent(t *testing.T) {
	root := t.TempDir()
	qos := "kubepods/burstable"
	mkdirs(t, root, qos)
	c, err := newCgroups(root, "kubepods")
	if err != nil {
		t.Fatal(err)
	}
	uids := []string{uid, other, "11111111-2222-4333-8444-555555555555", "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"}
	var wg sync.WaitGroup
	for _, u := range uids {
		dir := filepath.Join(root, qos, "pod"+u, "ctr")
		mkdirs(t, root, filepath.Join(qos, "pod"+u, "ctr"))
		id := inodeOf(t, dir)
		for range 8 {
			wg.Go(func() {
				for range 20 {
					if got, ok, err := c.PodUID(id); err != nil || !ok || got != u {
						t.Errorf("PodUID(%d) = %q, %v, %v, want %q", id, got, ok, err, u)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	// Every cgroup exists before the first lookup: the first scan finds them all, and callers that missed while it
	// ran share one more at most. Without sharing, each of the 32 callers' first miss would scan.
	if c.started > uint64(len(uids)) {
		t.Errorf("%d scans for %d pods looked up by %d callers each, want at most %d", c.started, len(uids), 8, len(uids))
	}
}

func TestPodCgroup(t *testing.T) {
	root := t.TempDir()
	const top = "kubepods.slice"
	guaranteed := top + "/kubepods-pod" + uidSystemd + ".slice"
	burstable := top + "/kubepods-burstable.slice/kubepods-burstable-pod" + otherSystemd + ".slice"
	third := "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
	mkdirs(t, root,
		guaranteed+"/cri-containerd-a.scope",
		burstable+"/cri-containerd-b.scope",
		// Only a lookalike for third, inside another pod's container.
		burstable+"/cri-containerd-b.scope/kubepods-pod"+strings.ReplaceAll(third, "-", "_")+".slice",
	)
	c, err := newCgroups(root, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		uid, dir string
		level    uint32
	}{
		{uid, guaranteed, 2},
		{other, burstable, 3},
	} {
		level, id, err := c.PodCgroup(tc.uid)
		if want := inodeOf(t, filepath.Join(root, tc.dir)); err != nil || level != tc.level || id != want {
			t.Errorf("PodCgroup(%s) = %d, %d, %v, want %d, %d", tc.uid, level, id, err, tc.level, want)
		}
	}
	if _, _, err := c.PodCgroup(third); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("PodCgroup(%s) error = %v, want fs.ErrNotExist", third, err)
	}
	if _, _, err := c.PodCgroup(uidSystemd); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("PodCgroup(%s) error = %v, want not a UID", uidSystemd, err)
	}

	// The kubelet never makes two; if a pod has two, which one to exempt is a guess.
	mkdirs(t, root, top+"/kubepods-besteffort.slice/kubepods-besteffort-pod"+uidSystemd+".slice")
	if _, _, err := c.PodCgroup(uid); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("PodCgroup(%s) with two cgroups: error = %v, want one", uid, err)
	}
}

func TestNewCgroups(t *testing.T) {
	t.Run("detects kubepods.slice", func(t *testing.T) {
		root := t.TempDir()
		mkdirs(t, root, "kubepods.slice", "kubepods")
		writeFile(t, filepath.Join(root, "cgroup.controllers"))
		c, err := NewCgroups(root, "")
		if err != nil {
			t.Fatal(err)
		}
		rel, level, id := c.Pods()
		if want := inodeOf(t, filepath.Join(root, "kubepods.slice")); rel != "kubepods.slice" || level != 1 || id != want {
			t.Errorf("Pods() = %q, %d, %d, want kubepods.slice, 1, %d", rel, level, id, want)
		}
	})
	t.Run("detects kubepods", func(t *testing.T) {
		root := t.TempDir()
		mkdirs(t, root, "kubepods")
		c, err := newCgroups(root, "")
		if err != nil {
			t.Fatal(err)
		}
		if rel, level, _ := c.Pods(); rel != "kubepods" || level != 1 {
			t.Errorf("Pods() = %q, %d, want kubepods, 1", rel, level)
		}
	})
	t.Run("given", func(t *testing.T) {
		root := t.TempDir()
		mkdirs(t, root, "a/b/kubepods.slice")
		c, err := newCgroups(root, "a/b/kubepods.slice/")
		if err != nil {
			t.Fatal(err)
		}
		if rel, level, _ := c.Pods(); rel != "a/b/kubepods.slice" || level != 3 {
			t.Errorf("Pods() = %q, %d, want a/b/kubepods.slice, 3", rel, level)
		}
	})

	for _, tc := range []struct {
		name, pods, want string
		files            []string
	}{
		{"not cgroup v2", "kubepods.slice", "not a cgroup v2 hierarchy", nil},
		{"below the root", "kubepods.slice", "below the root", []string{"cgroup.controllers", "cgroup.events"}},
		{"no pods cgroup", "", "no pods cgroup", []string{"cgroup.controllers"}},
		{"missing pods cgroup", "kubepods", "pods cgroup", []string{"cgroup.controllers"}},
		{"escaping", "../kubepods.slice", "below the hierarchy's root", []string{"cgroup.controllers"}},
		{"absolute", "/kubepods.slice", "below the hierarchy's root", []string{"cgroup.controllers"}},
		{"the root", ".", "below the hierarchy's root", []string{"cgroup.controllers"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			if tc.pods == "kubepods.slice" {
				mkdirs(t, root, tc.pods)
			}
			for _, f := range tc.files {
				writeFile(t, filepath.Join(root, f))
			}
			if _, err := NewCgroups(root, tc.pods); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewCgroups(%s, %q) error = %v, want one that says %q", root, tc.pods, err, tc.want)
			}
		})
	}
}

func writeFile(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestParseUID(t *testing.T) {
	for _, tc := range []struct {
		in   string
		sep  byte
		want string
	}{
		{uid, '-', uid},
		{uidSystemd, '_', uid},
		{uid, '_', ""},
		{uidSystemd, '-', ""},
		{strings.ToUpper(uid), '-', ""},
		{"", '-', ""},
		{uid + "0", '-', ""},
		{"6f1c3f9e1b2a4c3d9e8f0a1b2c3d4e5f", '-', ""},
		{"6f1c3f9e-1b2a-4c3d-9e8f-0a1b2c3d4e5g", '-', ""},
		{"6f1c3f9e-1b2a-4c3d-9e8f--a1b2c3d4e5f", '-', ""},
	} {
		got, ok := parseUID(tc.in, tc.sep)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("parseUID(%q, %q) = %q, %v, want %q", tc.in, tc.sep, got, ok, tc.want)
		}
	}
}

// TestStaticPods: static pods' cgroups, named after a 32-hex-digit manifest hash, are found at the kubelet's
// positions under both drivers; API pods and lookalikes deeper down are not static pods.
func TestStaticPods(t *testing.T) {
	const hash = "0123456789abcdef0123456789abcdef"
	for _, c := range []struct {
		pods   string
		static []string // pod cgroups of static pods, relative to pods
		others []string
	}{
		{"kubepods.slice",
			[]string{"kubepods-pod" + hash + ".slice", "kubepods-burstable.slice/kubepods-burstable-pod" + hash + ".slice"},
			[]string{"kubepods-besteffort.slice/kubepods-besteffort-pod" + uidSystemd + ".slice",
				"kubepods-besteffort.slice/kubepods-besteffort-pod" + uidSystemd + ".slice/kubepods-pod" + hash + ".slice",
				"kubepods-burstable.slice/kubepods-burstable-pod" + strings.ToUpper(hash) + ".slice"}},
		{"kubepods",
			[]string{"burstable/pod" + hash},
			[]string{"besteffort/pod" + uid, "burstable/pod" + hash + "0"}},
	} {
		t.Run(c.pods, func(t *testing.T) {
			root := t.TempDir()
			for _, d := range append(append([]string{}, c.static...), c.others...) {
				mkdirs(t, root, filepath.Join(c.pods, d))
			}
			cg, err := newCgroups(root, c.pods)
			if err != nil {
				t.Fatal(err)
			}
			levels, ids, err := cg.StaticPods()
			if err != nil {
				t.Fatal(err)
			}
			want := map[uint64]uint32{}
			for _, d := range c.static {
				want[inodeOf(t, filepath.Join(root, c.pods, d))] = uint32(1 + strings.Count(d, "/") + 1)
			}
			if len(ids) != len(want) {
				t.Fatalf("StaticPods() = %v %v, want %d static pods", levels, ids, len(want))
			}
			for i, id := range ids {
				if l, ok := want[id]; !ok || l != levels[i] {
					t.Errorf("StaticPods() returned level %d id %d; want one of %v (id: level)", levels[i], id, want)
				}
			}
		})
	}
}
