// Command iamlet-bench is `make bench`: it brings up the real local stack (e2e/stack), runs iamlet on
// it, measures it against the targets of issue 18, each figure next to a baseline measured in the same
// run, and writes bench/results.md, bench/results.json and the plots in bench/plots/. bench/README.md
// says what each part measures and why it is there.
//
// Workloads: the cached answer through the DNAT path against a trivial server behind the same kind of
// rule, each pinned to a core of its own (cached.go); the cold answer against the same TokenRequest and
// STS call made directly (cold.go); pod churn and a node's scale-up burst (churn.go); memory, CPU and
// start-up at node and cluster scale (scale.go). STS calls are counted through all of these. Every loop
// is bounded in count and time, and traffic only goes to loopback and to the network namespaces the
// stack creates.
//
//	make bench                                        # micro-benchmarks, then everything below (as root)
//	go run ./bench/cmd/iamlet-bench                   # the stack workloads only
//	go run ./bench/cmd/iamlet-bench -quick -only cold # one workload, fewer runs, while working on it
//	go run ./bench/cmd/iamlet-bench -only cached -perf /tmp/prof   # plus perf profiles of iamlet and the floor
//	go run ./bench/cmd/iamlet-bench -report-only      # re-render results.md and the plots from results.json
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/iamlet/iamlet/agent/kube"
	"github.com/iamlet/iamlet/e2e/stack"
)

// options are the command's flags.
type options struct {
	out        string // directory for results.md, results.json and plots/
	micro      string // `go test -bench` output to include
	runs       int    // runs per figure where a run is cheap
	quick      bool   // fewer and shorter runs, for working on the benchmark itself
	only       string // comma-separated workloads to run (cached, churn, cold, scale); empty = all
	reportOnly bool   // re-render results.md and the plots from results.json
	perf       string // directory for CPU profiles (perf) of iamlet and the floor under load; empty = none
}

func main() {
	var o options
	flag.StringVar(&o.out, "out", "bench", "directory for results.md, results.json and plots/")
	flag.StringVar(&o.micro, "micro", "", "file holding `go test -bench -benchmem` output to include")
	flag.IntVar(&o.runs, "runs", 5, "runs per figure where a run is cheap (at least 3)")
	flag.BoolVar(&o.quick, "quick", false, "fewer and shorter runs (for working on the benchmark, not for results)")
	flag.StringVar(&o.only, "only", "", "comma-separated workloads to run: cached, churn, cold, scale (default all)")
	flag.StringVar(&o.perf, "perf", "", "after workload 1, profile iamlet and the floor with perf at 64 clients into this directory")
	flag.BoolVar(&o.reportOnly, "report-only", false, "only re-render results.md and the plots from OUT/results.json")
	flag.Parse()
	if abs, err := filepath.Abs(o.out); err == nil {
		o.out = abs
	}
	if o.micro != "" {
		if abs, err := filepath.Abs(o.micro); err == nil {
			o.micro = abs
		}
	}
	o.runs = max(o.runs, 3)
	if o.reportOnly {
		if err := reportOnly(o); err != nil {
			fmt.Fprintln(os.Stderr, "iamlet-bench:", err)
			os.Exit(1)
		}
		return
	}
	os.Exit(stack.Main(func(s *stack.Stack) int { return run(s, o) }))
}

func reportOnly(o options) error {
	b, err := os.ReadFile(filepath.Join(o.out, "results.json"))
	if err != nil {
		return err
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		return err
	}
	return writeReport(o.out, &r)
}

// bench is one run of the benchmark on a running stack.
type bench struct {
	s    *stack.Stack
	o    options
	kube kubernetes.Interface // unthrottled, for creating objects fast and for the baselines
	api  *kube.Client         // the agent's own client, for running its informers
	bins struct{ agent, loadgen, floor string }
	res  *Results
	ips  ipAlloc
	// cgroups gives each server process a memory cgroup of its own; nil when the machine has no memory
	// controller the benchmark can use (then working sets are not measured).
	cgroups *memCgroups
}

func run(s *stack.Stack, o options) (code int) {
	t0 := time.Now()
	b := &bench{s: s, o: o, res: &Results{Started: t0.UTC(), Runs: o.runs, Quick: o.quick}}
	b.res.Host = hostInfo()
	if o.micro != "" {
		m, err := readMicro(o.micro)
		if err != nil {
			fmt.Fprintln(os.Stderr, "iamlet-bench: micro-benchmarks:", err)
			return 1
		}
		b.res.Micro = m
	}
	if err := b.setup(); err != nil {
		fmt.Fprintln(os.Stderr, "iamlet-bench: setup:", err)
		return 1
	}
	defer b.cgroups.close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	type workload struct {
		name string
		f    func(context.Context) error
	}
	// Scale runs last: its 10,000 cluster pods would otherwise weigh on everything after it.
	all := []workload{
		{"cached", b.cached},
		{"churn", b.churn},
		{"cold", b.cold},
		{"scale", b.scale},
	}
	failed := false
	for _, w := range all {
		if !b.selected(w.name) {
			continue
		}
		logf("== %s", w.name)
		wt := time.Now()
		if err := w.f(ctx); err != nil {
			// A failed workload is reported and the others still run: a partial table beats none.
			logf("%s FAILED: %v", w.name, err)
			b.res.Failures = append(b.res.Failures, fmt.Sprintf("%s: %v", w.name, err))
			failed = true
		}
		logf("%s took %s", w.name, time.Since(wt).Round(time.Second))
	}
	b.res.Host.LoadAfter = loadAvg()
	b.res.Seconds = time.Since(t0).Seconds()
	if err := writeResults(o.out, b.res); err != nil {
		fmt.Fprintln(os.Stderr, "iamlet-bench: writing results:", err)
		return 1
	}
	logf("results in %s (took %s)", filepath.Join(o.out, "results.md"), time.Since(t0).Round(time.Second))
	if failed {
		return 1
	}
	return 0
}

func (b *bench) selected(name string) bool {
	if b.o.only == "" {
		return true
	}
	for _, w := range strings.Split(b.o.only, ",") {
		if strings.TrimSpace(w) == name {
			return true
		}
	}
	return false
}

func (b *bench) setup() error {
	var err error
	if b.bins.agent, err = stack.BuildAgent(b.s.Dir); err != nil {
		return err
	}
	if b.bins.loadgen, err = stack.BuildProgram(b.s.Dir, "loadgen", "./bench/loadgen"); err != nil {
		return err
	}
	if b.bins.floor, err = stack.BuildProgram(b.s.Dir, "floor", "./bench/floor"); err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", b.s.Kubeconfig)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = -1, 0 // no client-side throttling: the point is to load the apiserver
	rc.UserAgent = "iamlet-bench"
	if b.kube, err = kubernetes.NewForConfig(rc); err != nil {
		return err
	}
	if b.api, err = kube.New(rc); err != nil {
		return err
	}
	if b.cgroups, err = newMemCgroups(b.s.Run); err != nil {
		b.res.WorkingSet = "not measured: " + err.Error()
		logf("working sets %s", b.res.WorkingSet)
	} else {
		b.res.WorkingSet = b.cgroups.About
	}
	return nil
}

func writeResults(dir string, r *Results) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	j, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(j, '\n'), 0o644); err != nil {
		return err
	}
	return writeReport(dir, r)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s bench: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// tb is the harness's TB for programs: Fatal stops the phase, cleanups (pods, namespaces, processes)
// run when it ends.
type tb = stack.Program

// phase runs f as one phase of the benchmark with its own cleanups; a Fatal inside it is reported
// and becomes an error.
func phase(f func(t *tb) error) error {
	t := &stack.Program{}
	var err error
	if code := t.Run("bench phase", func() int { err = f(t); return 0 }); code != 0 && err == nil {
		return errors.New("phase stopped by a fatal error (reported above)")
	}
	return err
}

func hostInfo() HostInfo {
	h := HostInfo{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), LoadBefore: loadAvg()}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kib int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kib); err == nil {
			h.MemGiB = float64(kib) / (1 << 20)
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				h.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	h.Commit = gitDescribe()
	return h
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
