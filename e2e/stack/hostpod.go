package stack

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The kubelet puts every pod in a cgroup below its pods cgroup, and a hostNetwork pod's processes differ from the
// node's only by it. Each run gets a pods cgroup of its own in the machine's cgroup v2 hierarchy, laid out as the
// kubelet's systemd driver lays it out, so that runs sharing the machine never see each other's pods.

// CgroupV2Mount is where the machine's cgroup v2 hierarchy is mounted (/sys/fs/cgroup on unified hosts, often
// /sys/fs/cgroup/unified on hybrid ones). Inside the node namespace `ip netns exec` has remounted /sys, hiding it;
// it is then mounted again at /sys/fs/cgroup, in this process's own mount namespace only, as a unified host has it.
func CgroupV2Mount() (string, error) {
	if m, err := cgroupV2Mount(); err == nil || os.Getenv(envInside) == "" {
		return m, err
	}
	if out, err := exec.Command("mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup").CombinedOutput(); err != nil {
		return "", fmt.Errorf("mounting the cgroup v2 hierarchy in the node namespace: %v: %s", err, out)
	}
	return cgroupV2Mount()
}

func cgroupV2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		if fields := strings.Fields(pre); len(fields) >= 5 {
			return fields[4], nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted (hostNetwork pods are told apart by it)")
}

// PodsCgroup is this run's pods cgroup, relative to the cgroup v2 mount: what the agent's --pods-cgroup names.
func (s *Stack) PodsCgroup() string { return "iamlet-" + s.Run + "/kubepods.slice" }

// QoS classes the kubelet's cgroup layout distinguishes.
const (
	QoSBestEffort = "besteffort"
	QoSBurstable  = "burstable"
	QoSGuaranteed = "guaranteed" // directly below the pods cgroup
)

// PodCgroup is the cgroup (absolute path) of the container a pod with this UID and QoS class runs its processes in,
// as the kubelet's systemd driver with containerd names it.
func (s *Stack) PodCgroup(uid, qos string) (string, error) {
	root, err := CgroupV2Mount()
	if err != nil {
		return "", err
	}
	u := strings.ReplaceAll(uid, "-", "_")
	dir := filepath.Join(root, s.PodsCgroup())
	if qos == QoSGuaranteed {
		dir = filepath.Join(dir, "kubepods-pod"+u+".slice")
	} else {
		dir = filepath.Join(dir, "kubepods-"+qos+".slice", "kubepods-"+qos+"-pod"+u+".slice")
	}
	return filepath.Join(dir, "cri-containerd-"+strings.ReplaceAll(uid, "-", "")+".scope"), nil
}

// makeCgroup creates a pod's container cgroup and returns a function that removes it once its processes are gone.
func makeCgroup(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return func() { removeCgroup(dir) }, nil
}

// removeCgroup kills what is left in a container cgroup and removes it and its pod cgroup (not the shared QoS and
// pods cgroups).
func removeCgroup(dir string) {
	killCgroup(dir)
	for _, d := range []string{dir, filepath.Dir(dir)} {
		deadline := time.Now().Add(10 * time.Second)
		for os.Remove(d) != nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond) // a killed process leaves the cgroup once it is reaped
		}
	}
}

func killCgroup(dir string) {
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	for _, f := range strings.Fields(string(b)) {
		_ = exec.Command("kill", "-9", f).Run()
	}
}

// RemoveRunCgroups removes what is left of a run's pods cgroup, deepest first.
func RemoveRunCgroups(run string) {
	root, err := CgroupV2Mount()
	if err != nil {
		return
	}
	top := filepath.Join(root, "iamlet-"+run)
	var dirs []string
	_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		killCgroup(dirs[i])
	}
	// A killed process leaves its cgroup only once it is reaped, so each removal is retried for a while.
	for i := len(dirs) - 1; i >= 0; i-- {
		deadline := time.Now().Add(10 * time.Second)
		for os.Remove(dirs[i]) != nil && time.Now().Before(deadline) {
			if _, err := os.Stat(dirs[i]); err != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// InCgroup wraps argv so that it runs in cgroup dir: a shell moves itself there, then becomes argv.
func InCgroup(dir string, argv ...string) []string {
	return append([]string{"/bin/sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, dir}, argv...)
}

// HostPod is a hostNetwork pod: a Pod object (hostNetwork, the node's addresses) and a container cgroup in which its
// processes run in the node's network namespace.
type HostPod struct {
	*Pod
	Cgroup string
}

// NewHostPod creates a hostNetwork pod of the given QoS class and its cgroup; both go when the test ends.
func (s *Stack) NewHostPod(t TB, name, qos string, o PodOptions) *HostPod {
	t.Helper()
	o.HostNetwork = true
	p := s.NewPod(t, name, o)
	dir, err := s.PodCgroup(p.UID, qos)
	if err != nil {
		t.Fatal(err)
	}
	remove, err := makeCgroup(dir)
	if err != nil {
		t.Fatalf("pod %s cgroup: %v", name, err)
	}
	t.Cleanup(remove)
	return &HostPod{Pod: p, Cgroup: dir}
}

// Exec runs argv as one of the pod's processes: in the node's network namespace, in the pod's cgroup, with the
// same environment as Pod.Exec.
func (h *HostPod) Exec(ctx context.Context, env []string, argv ...string) Result {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
	}
	cmd := h.Start(ctx, env, argv...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return Result{Stdout: out.String(), Stderr: errb.String(), Err: err}
}

// Start returns the command Exec runs, for a test that needs the process to outlive a change (the pod's deletion).
func (h *HostPod) Start(ctx context.Context, env []string, argv ...string) *exec.Cmd {
	base := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "AWS_CONFIG_FILE=/nonexistent",
		"AWS_SHARED_CREDENTIALS_FILE=/nonexistent", "AWS_REGION=us-east-1", "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv4"}
	full := append([]string{"env", "-i"}, append(mergeEnv(base, env), argv...)...)
	args := InCgroup(h.Cgroup, full...)
	return exec.CommandContext(ctx, args[0], args[1:]...)
}

// String names the pod for test messages.
func (h *HostPod) String() string { return fmt.Sprintf("hostNetwork pod %s/%s", h.Namespace, h.Name) }
