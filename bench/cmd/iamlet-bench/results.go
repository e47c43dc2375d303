package main

import (
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/iamlet/iamlet/bench/loadresult"
)

// Results is everything one run measured, raw (every run of every figure), so the report can be
// re-rendered and the medians checked.
type Results struct {
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"seconds"`
	Runs     int       `json:"runs"`
	Quick    bool      `json:"quick,omitempty"`
	Host     HostInfo  `json:"host"`
	Failures []string  `json:"failures,omitempty"`

	// Pin is where workload 1 ran its server and its load generator; nil when it could not pin them.
	Pin *Pin `json:"pin,omitempty"`
	// WorkingSet says how the working sets were read, or why they were not.
	WorkingSet string `json:"working_set,omitempty"`

	Cached    []CachedPoint   `json:"cached,omitempty"`
	Collector *CollectorPoint `json:"collector,omitempty"`
	Cold      []ColdRun       `json:"cold,omitempty"`
	Herd      []HerdRun       `json:"herd,omitempty"`
	Churn     []ChurnRun      `json:"churn,omitempty"`
	Scale     []ScaleRun      `json:"scale,omitempty"`
	StartBase []StartBaseline `json:"start_baseline,omitempty"`
	Economy   Economy         `json:"economy"`
	Micro     []Micro         `json:"micro,omitempty"`
}

// Pin is the CPU the server (iamlet or the floor) was pinned to and the one the load generator was.
type Pin struct {
	Server  int `json:"server"`
	Loadgen int `json:"loadgen"`
}

// HostInfo says where and on what the numbers were taken.
type HostInfo struct {
	CPUs       int     `json:"cpus"`
	CPUModel   string  `json:"cpu_model"`
	MemGiB     float64 `json:"mem_gib"`
	Kernel     string  `json:"kernel"`
	GoVersion  string  `json:"go_version"`
	Commit     string  `json:"commit"`
	LoadBefore string  `json:"load_before"`
	LoadAfter  string  `json:"load_after"`
}

// Load is one loadgen run (its JSON) plus the server's CPU time over it.
type Load struct {
	loadresult.Result
	// ServerCPUPerReq is the server process's user+system CPU time over the whole loadgen run, per
	// request (warm-up included), in microseconds.
	ServerCPUPerReq float64 `json:"server_cpu_us_per_req"`
}

// CachedPoint is workload 1 at one concurrency: every run against iamlet and against the floor.
type CachedPoint struct {
	Clients int    `json:"clients"`
	Agent   []Load `json:"agent"`
	Floor   []Load `json:"floor"`
}

// CollectorPoint is workload 1 at cachedTarget clients again, on an agent started with GOGC set: what collecting
// less often buys in throughput and tail, and what it costs in memory, beside the default agent's figures under the
// same load.
type CollectorPoint struct {
	GOGC  int    `json:"gogc"`
	Agent []Load `json:"agent"` // the agent started with GOGC
	Floor []Load `json:"floor"` // alternating with it
	// Bytes allocated per answer, collections per 1,000 answers and memory right after the runs, for the default agent
	// (its cachedTarget runs in Cached) and for the agent started with GOGC.
	DefaultAllocPerAnswer float64 `json:"default_alloc_bytes_per_answer"`
	AllocPerAnswer        float64 `json:"alloc_bytes_per_answer"`
	DefaultGCPer1000      float64 `json:"default_gc_per_1000"`
	GCPer1000             float64 `json:"gc_per_1000"`
	DefaultMem            Mem     `json:"default_mem"`
	Mem                   Mem     `json:"mem"`
}

// ColdRun is one cold answer (workload 2) and its baseline, in milliseconds.
type ColdRun struct {
	TotalMS    float64 `json:"total_ms"` // the pod's GET, as the pod timed it
	TokenMS    float64 `json:"token_ms"` // the agent's TokenRequest (its histogram's sum)
	STSMS      float64 `json:"sts_ms"`   // the agent's AssumeRoleWithWebIdentity
	Outcome    string  `json:"outcome"`  // the agent's count for the pod: "miss" expected
	STSCalls   float64 `json:"sts_calls"`
	BaseToken  float64 `json:"base_token_ms"`
	BaseSTS    float64 `json:"base_sts_ms"`
	BaseFailed string  `json:"base_failed,omitempty"`
}

// OverheadMS is the cold answer's time not spent in TokenRequest or STS.
func (c ColdRun) OverheadMS() float64 { return c.TotalMS - c.TokenMS - c.STSMS }

// BaseMS is the baseline's total.
func (c ColdRun) BaseMS() float64 { return c.BaseToken + c.BaseSTS }

// HerdRun is one burst of concurrent cold requests from one pod (workload 5).
type HerdRun struct {
	Requests int     `json:"requests"`
	OK       int64   `json:"ok"`
	STSCalls float64 `json:"sts_calls"`
	Fetches  float64 `json:"fetches"`
	P50MS    float64 `json:"p50_ms"`
	MaxMS    float64 `json:"max_ms"`
	// The same burst against the floor server (the answer already in hand): the latency baseline.
	FloorP50MS float64 `json:"floor_p50_ms"`
	FloorMaxMS float64 `json:"floor_max_ms"`
}

// ChurnRun is one burst of pod creation at a fixed rate (workload 3).
type ChurnRun struct {
	Label      string    `json:"label,omitempty"` // the load: "50 pods/s", "burst"
	Rate       int       `json:"rate"`
	Pods       int       `json:"pods"`
	CreateSecs float64   `json:"create_secs"`  // how long creating them took (rate check)
	ToCachedMS []float64 `json:"to_cached_ms"` // from the status update's sending
	StatusMS   []float64 `json:"status_update_ms"`
	NotCached  int       `json:"not_cached"`
	// First requests, made from pod network namespaces 1 s after the pod's IP reached the API.
	Checked  int     `json:"checked"`
	Hits     int     `json:"hits"`
	Misses   int     `json:"misses"`
	Failed   int     `json:"failed"`
	LateMS   float64 `json:"late_ms"` // the latest a first request was sent after IP+1s (exec overhead)
	STSCalls float64 `json:"sts_calls"`
	// The agent's own cost of the run (its /status polled every 100 ms included): CPU seconds, and garbage
	// collections, forced ones included.
	AgentCPUSecs float64 `json:"agent_cpu_secs,omitempty"`
	GCCycles     float64 `json:"gc_cycles,omitempty"`
}

// ScaleRun is one agent process with NodePods on its node and ClusterPods elsewhere (workloads 4, 6).
type ScaleRun struct {
	NodePods    int     `json:"node_pods"`
	ClusterPods int     `json:"cluster_pods"`
	ClusterSAs  int     `json:"cluster_service_accounts"`
	ClusterNS   int     `json:"cluster_namespaces,omitempty"`
	StartupMS   float64 `json:"startup_ms"`   // process start to /readyz 200
	InitMS      float64 `json:"init_ms"`      // process start to "waiting for informers to sync" (Go init, flags, clients)
	RulesMS     float64 `json:"rules_ms"`     // process start to "interception rules in place" (informers synced, listeners, iptables)
	AllCachedS  float64 `json:"all_cached_s"` // process start to every node pod's credentials cached
	Mem
	HeapMiB     float64 `json:"heap_inuse_mib"`
	HeapGoalMiB float64 `json:"heap_goal_mib"` // the GC's next goal: about twice the heap live after the last GC
	CPUStartS   float64 `json:"cpu_start_s"`   // CPU time from start until every pod was cached
	IdleCPUPct  float64 `json:"idle_cpu_pct"`
	Goroutines  float64 `json:"goroutines"`
}

// StartBaseline is what start-up cannot go below on this machine, measured in the same run: a trivial Go
// server's exec to first answer, the agent's own informers (agent/pods, agent/roles) run in-process until
// synced, and the iptables detection, inspection and conntrack flush it does when its rules are in place.
type StartBaseline struct {
	ClusterPods int     `json:"cluster_pods"`
	ProcMS      float64 `json:"proc_ms"`
	SyncMS      float64 `json:"sync_ms"`
	IptablesMS  float64 `json:"iptables_ms"`
	// NoIptablesMS is iamlet's own exec to /readyz with --iptables=false: its start-up without the
	// interception step.
	NoIptablesMS float64 `json:"no_iptables_ms"`
	// FloorMem is the floor server's memory, idle after its first answer: the memory figures' baseline.
	FloorMem Mem `json:"floor_mem"`
}

// Economy counts STS calls against what they served.
type Economy struct {
	CachedRequests float64 `json:"cached_requests"` // credential documents served during workload 1
	CachedSTSCalls float64 `json:"cached_sts_calls"`
	ChurnPods      int     `json:"churn_pods"`
	ChurnSTSCalls  float64 `json:"churn_sts_calls"`
	ColdRequests   int     `json:"cold_requests"`
	ColdSTSCalls   float64 `json:"cold_sts_calls"`
}

// Micro is one Go micro-benchmark: medians over -count runs.
type Micro struct {
	Pkg      string             `json:"pkg"`
	Name     string             `json:"name"`
	Runs     int                `json:"runs"`
	NsPerOp  float64            `json:"ns_per_op"`
	BPerOp   float64            `json:"b_per_op"`
	Allocs   float64            `json:"allocs_per_op"`
	Extra    map[string]float64 `json:"extra,omitempty"`
	NsSpread [2]float64         `json:"ns_spread"` // min, max
}

// median of xs (NaN-free); 0 for none; the mean of the middle two for an even count.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentile of xs, nearest rank: the smallest x with at least q of xs at or below it; q=0 is the
// minimum, q=1 the maximum.
func percentile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[loadresult.Rank(len(s), q)]
}

func medianOf[T any](xs []T, f func(T) float64) float64 {
	v := make([]float64, 0, len(xs))
	for _, x := range xs {
		v = append(v, f(x))
	}
	return median(v)
}

func gitDescribe() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += " (with uncommitted changes)"
	}
	return c
}
