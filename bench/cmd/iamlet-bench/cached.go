package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/iamlet/iamlet/agent/roles"
	"github.com/iamlet/iamlet/e2e/stack"
	"github.com/iamlet/iamlet/iptables"
)

// The floor's addresses: a link-local address of its own, DNATed in the node namespace to a port on
// the node address, exactly as 169.254.169.254:80 is DNATed to iamlet on NodeIP:8181.
const (
	floorVIP    = "169.254.170.254"
	floorPort   = "18181"
	floorChain  = "IAMLET-BENCH-FLOOR"
	credsExpect = `"AccessKeyId"`
)

// cachedConcurrency are the client counts of workload 1; the targets are judged at cachedTarget.
var cachedConcurrency = []int{1, 16, cachedTarget}

const cachedTarget = 64

// cached is workload 1: a pod asks for its cached credentials through the DNAT path, at 1, 16 and 64
// concurrent keep-alive clients; the same load goes to the floor server through a DNAT rule of its own.
// The server (iamlet or the floor) runs on one core and the load generator on another, so neither takes
// the other's CPU and the load generator's own CPU can be read beside each figure. The per-pod connection
// and request limits are off: they exist to throttle a pod this busy.
func (b *bench) cached(ctx context.Context) error {
	server, load := -1, -1
	if p, ok := pinCPUs(); ok {
		b.res.Pin = &p
		server, load = p.Server, p.Loadgen
	} else {
		logf("cached: fewer than 2 CPUs to run on; server and load generator are not pinned")
	}
	return phase(func(t *tb) error {
		ag, err := b.startAgentOn("iamlet-cached", server, nil, cachedAgentArgs...)
		if err != nil {
			return err
		}
		t.Cleanup(ag.stop)
		pod := b.s.NewPod(t, "load", stack.PodOptions{ServiceAccount: stack.SAA})
		if err := waitLoadPod(ctx, "the load pod's credentials"); err != nil {
			return err
		}
		path := credsPath()
		agentURL := "http://" + stack.IMDSv4 + path
		floorURL := "http://" + floorVIP + path

		// The floor answers the bytes iamlet answered this pod.
		body := filepath.Join(b.s.Dir, "floor-body.json")
		if _, err := b.loadgen(ctx, pod.NetNS, "-url", agentURL, "-c", "1", "-n", "1", "-warmup", "0", "-token", "-expect", credsExpect, "-body-out", body); err != nil {
			return fmt.Errorf("first request through iamlet: %w", err)
		}
		floor, err := b.startFloor(t, server, path, body)
		if err != nil {
			return err
		}
		if _, err := b.loadgen(ctx, pod.NetNS, "-url", floorURL, "-c", "1", "-n", "1", "-warmup", "0", "-token", "-expect", credsExpect); err != nil {
			return fmt.Errorf("first request through the floor's DNAT rule: %w", err)
		}

		m0, err := scrape()
		if err != nil {
			return err
		}
		var coll CollectorPoint
		plan := loadPlan{netns: pod.NetNS, cpu: load, runs: b.o.runs, dur: "2s"}
		if b.o.quick {
			plan.runs, plan.dur = 3, "1s"
		}
		agentAt, floorAt := endpoint{agentURL, ag.p.Pid()}, endpoint{floorURL, floor.Pid()}
		for _, c := range cachedConcurrency {
			pt := CachedPoint{Clients: c}
			var gc0 stack.Metrics
			if c == cachedTarget {
				if gc0, err = scrape(); err != nil {
					return err
				}
			}
			if pt.Agent, pt.Floor, err = b.alternate(ctx, plan, c, agentAt, floorAt); err != nil {
				return err
			}
			b.res.Cached = append(b.res.Cached, pt)
			if c == cachedTarget {
				if coll.DefaultAllocPerAnswer, coll.DefaultGCPer1000, err = collectorRates(gc0); err != nil {
					return err
				}
				if coll.DefaultMem, err = procMem(ag.p.Pid()); err != nil {
					return err
				}
			}
		}
		m1, err := scrape()
		if err != nil {
			return err
		}
		if b.o.perf != "" {
			for _, tg := range []struct {
				name, url string
				pid       int
			}{{"iamlet", agentURL, ag.p.Pid()}, {"floor", floorURL, floor.Pid()}} {
				if err := b.profile(ctx, tg.name, tg.pid, func() error {
					_, err := b.loadgenOn(ctx, pod.NetNS, load, "-url", tg.url, "-c", strconv.Itoa(cachedTarget), "-d", "3s", "-warmup", "0", "-token", "-expect", credsExpect)
					return err
				}); err != nil {
					return err
				}
			}
		}
		b.res.Economy.CachedRequests = servedCreds(m1) - servedCreds(m0)
		b.res.Economy.CachedSTSCalls = stsCalls(m1) - stsCalls(m0)

		// The collector's share. The default agent goes first: both listen on the same address.
		ag.stop()
		if err := b.collectorPoint(ctx, t, &coll, plan, server, agentURL, floorAt); err != nil {
			return err
		}
		b.res.Collector = &coll
		return nil
	})
}

// cachedAgentArgs are the agent's flags in workload 1: its per-pod limits exist to throttle a pod this busy.
var cachedAgentArgs = []string{"--max-conns-per-pod=0", "--requests-per-pod=0"}

// waitLoadPod waits until the agent holds valid credentials for workload 1's pod.
func waitLoadPod(ctx context.Context, what string) error {
	return waitStatus(ctx, what, 30*time.Second, func(st agentStatus) bool { return podStates(st)["default/load"].State == "valid" })
}

// collectorPoint is the same load at cachedTarget clients on a second agent started with GOGC=collectorGOGC, beside the
// floor again, into c: what collecting less often buys, and what it costs in memory.
func (b *bench) collectorPoint(ctx context.Context, t *tb, c *CollectorPoint, plan loadPlan, cpu int, agentURL string, floor endpoint) error {
	slow, err := b.startAgentOn("iamlet-cached-gogc", cpu, []string{"GOGC=" + strconv.Itoa(collectorGOGC)}, cachedAgentArgs...)
	if err != nil {
		return err
	}
	t.Cleanup(slow.stop)
	if err := waitLoadPod(ctx, "the load pod's credentials, GOGC="+strconv.Itoa(collectorGOGC)); err != nil {
		return err
	}
	before, err := scrape()
	if err != nil {
		return err
	}
	c.GOGC = collectorGOGC
	if c.Agent, c.Floor, err = b.alternate(ctx, plan, cachedTarget, endpoint{agentURL, slow.p.Pid()}, floor); err != nil {
		return err
	}
	if c.AllocPerAnswer, c.GCPer1000, err = collectorRates(before); err != nil {
		return err
	}
	c.Mem, err = procMem(slow.p.Pid())
	return err
}

// collectorGOGC is the collector's pace on workload 1's second agent: a quarter as many collections as the default's,
// for four times the heap's headroom.
const collectorGOGC = 400

// endpoint is where the load generator sends a run, and the process that answers it.
type endpoint struct {
	url string
	pid int
}

// loadPlan is how workload 1 runs the load generator: in which pod's network namespace, pinned to which CPU (none if
// negative), how many runs of how long.
type loadPlan struct {
	netns string
	cpu   int
	runs  int
	dur   string
}

// alternate runs the load generator as planned at c clients against each of agent and floor, alternating which goes
// first so drift in the machine's load falls on both alike.
func (b *bench) alternate(ctx context.Context, plan loadPlan, c int, agent, floor endpoint) (a, f []Load, err error) {
	for r := range plan.runs {
		order := []bool{true, false}
		if r%2 == 1 {
			order = []bool{false, true}
		}
		for _, toAgent := range order {
			to, who := floor, "floor "
			if toAgent {
				to, who = agent, "iamlet"
			}
			cpu0 := cpuOf(to.pid)
			l, err := b.loadgenOn(ctx, plan.netns, plan.cpu, "-url", to.url, "-c", strconv.Itoa(c), "-d", plan.dur, "-warmup", "300ms", "-token", "-expect", credsExpect)
			if err != nil {
				return nil, nil, err
			}
			if l.All > 0 {
				l.ServerCPUPerReq = float64((cpuOf(to.pid) - cpu0).Microseconds()) / float64(l.All)
			}
			if toAgent {
				a = append(a, l)
			} else {
				f = append(f, l)
			}
			logf("cached c=%-3d run %d %s: %7.0f req/s p50 %6.0fus p99 %6.0fus p99.9 %6.0fus, loadgen CPU %.0f%%, errors %d %s",
				c, r+1, who, l.RPS, l.P50, l.P99, l.P999, loadgenCPU(l), l.Errors, l.FirstError)
		}
	}
	return a, f, nil
}

// collectorRates are the agent's bytes allocated per credential answer and collections per 1,000 answers since it was
// scraped as before.
func collectorRates(before stack.Metrics) (allocPerAnswer, gcPer1000 float64, err error) {
	after, err := scrape()
	if err != nil {
		return 0, 0, err
	}
	served := servedCreds(after) - servedCreds(before)
	if served <= 0 {
		return 0, 0, fmt.Errorf("no credential answers counted between two scrapes")
	}
	delta := func(name string) float64 {
		v0, _ := before.Value(name, nil)
		v1, _ := after.Value(name, nil)
		return v1 - v0
	}
	return delta("go_memstats_alloc_bytes_total") / served, 1000 * delta("go_gc_duration_seconds") / served, nil
}

// servedCreds is the credential answers the agent has served.
func servedCreds(m stack.Metrics) float64 {
	return m.Sum("iamlet_metadata_requests_total", map[string]string{"class": "credentials", "outcome": "served"})
}

// pinCPUs picks the first two CPUs this process may run on: one for the server, one for the load
// generator.
func pinCPUs() (Pin, bool) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return Pin{}, false
	}
	var cpus []int
	for i := 0; i < 1024 && len(cpus) < 2; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	if len(cpus) < 2 {
		return Pin{}, false
	}
	return Pin{Server: cpus[0], Loadgen: cpus[1]}, true
}

// loadgenCPU is the load generator's CPU over its run, in percent of one core.
func loadgenCPU(l Load) float64 {
	if l.WallSeconds <= 0 {
		return 0
	}
	return 100 * l.CPUSeconds / l.WallSeconds
}

// startFloor runs the floor server answering the bytes in file body on path, pinned to cpu (none if
// cpu < 0), and its DNAT rule; both go when t's phase ends.
func (b *bench) startFloor(t *tb, cpu int, path, body string) (*stack.Proc, error) {
	argv, cg := b.command("floor", cpu, b.bins.floor, "-addr", stack.NodeIP+":"+floorPort, "-path", path, "-body", body)
	floor, err := stack.StartProc(b.s.Dir, "floor", nil, argv[0], argv[1:]...)
	if err != nil {
		b.cgroups.remove(cg)
		return nil, err
	}
	t.Cleanup(func() {
		floor.Stop()
		b.cgroups.remove(cg)
	})
	if err := floor.WaitHTTP("http://"+stack.NodeIP+":"+floorPort+path, 10*time.Second); err != nil {
		return nil, err
	}
	undo, err := floorDNAT("ia" + b.s.Run + "+")
	if err != nil {
		return nil, err
	}
	t.Cleanup(undo)
	return floor, nil
}

// floorDNAT installs the floor's DNAT rule in a chain of its own in the node namespace's nat table,
// with the backend iamlet uses, jumped to from PREROUTING after iamlet's own chain, and returns its
// removal.
func floorDNAT(iface string) (func(), error) {
	backend, err := iptables.DetectBackend(context.Background())
	if err != nil {
		return nil, err
	}
	ipt := func(args ...string) error {
		// -w bounds the wait for the xtables lock; removal must work after ctx has ended, so no ctx here.
		if out, err := exec.Command("iptables-"+backend, append([]string{"-w", "5"}, args...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("iptables-%s %s: %v: %s", backend, strings.Join(args, " "), err, out)
		}
		return nil
	}
	jump := []string{"-m", "comment", "--comment", "iamlet-bench: floor", "-j", floorChain}
	rule := []string{"-i", iface, "-d", floorVIP + "/32", "-p", "tcp", "--dport", "80",
		"-m", "comment", "--comment", "iamlet-bench: floor dnat", "-j", "DNAT", "--to-destination", stack.NodeIP + ":" + floorPort}
	remove := func() {
		_ = ipt(append([]string{"-t", "nat", "-D", "PREROUTING"}, jump...)...)
		_ = ipt("-t", "nat", "-F", floorChain)
		_ = ipt("-t", "nat", "-X", floorChain)
	}
	for _, args := range [][]string{
		{"-t", "nat", "-N", floorChain},
		append([]string{"-t", "nat", "-A", floorChain}, rule...),
		append([]string{"-t", "nat", "-A", "PREROUTING"}, jump...),
	} {
		if err := ipt(args...); err != nil {
			remove()
			return nil, err
		}
	}
	return remove, nil
}

// credsPath is the credential document of role A, the fixtures' ServiceAccount SAA's role.
func credsPath() string {
	return "/latest/meta-data/iam/security-credentials/" + roles.RoleName(stack.RoleARN(stack.AudienceA))
}

// profile records pid's CPU with perf while load runs, and writes perf's report next to the data.
func (b *bench) profile(ctx context.Context, name string, pid int, load func() error) error {
	if err := os.MkdirAll(b.o.perf, 0o755); err != nil {
		return err
	}
	data := filepath.Join(b.o.perf, name+".perf.data")
	rec := exec.CommandContext(ctx, "perf", "record", "-F", "1999", "-g", "-p", strconv.Itoa(pid), "-o", data, "--", "sleep", "3")
	if err := rec.Start(); err != nil {
		return err
	}
	lerr := load()
	if err := rec.Wait(); err != nil {
		return fmt.Errorf("perf record: %w", err)
	}
	if lerr != nil {
		return lerr
	}
	for _, r := range []struct {
		file string
		args []string
	}{
		{name + ".flat.txt", []string{"report", "-i", data, "--stdio", "--no-children", "--sort", "symbol", "-g", "none"}},
		{name + ".cum.txt", []string{"report", "-i", data, "--stdio", "--children", "--sort", "symbol", "-g", "none"}},
	} {
		out, err := exec.CommandContext(ctx, "perf", r.args...).Output()
		if err != nil {
			return fmt.Errorf("perf report: %w", err)
		}
		if err := os.WriteFile(filepath.Join(b.o.perf, r.file), out, 0o644); err != nil {
			return err
		}
	}
	logf("profile of %s under %d clients: %s", name, cachedTarget, b.o.perf)
	return nil
}
