package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/iamlet/iamlet/bench/loadresult"
)

// fixture is a run that meets some targets and misses others, with a figure for each.
func fixture() *Results {
	load := func(rps, p99, cpu float64) Load {
		return Load{Result: loadresult.Result{Requests: 1000, RPS: rps, P50: p99 / 4, P99: p99, P999: 2 * p99, CPUSeconds: cpu, WallSeconds: 2.3},
			ServerCPUPerReq: 1e6 / rps}
	}
	r := &Results{Started: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), Seconds: 300, Runs: 5, Pin: &Pin{Server: 0, Loadgen: 1},
		WorkingSet: "cgroup v2"}
	for _, c := range []struct {
		clients         int
		agent, floor    float64 // req/s
		agP99, floorP99 float64
	}{{1, 9000, 9500, 300, 330}, {16, 20000, 24000, 2000, 1700}, {64, 21000, 24000, 5000, 3600}} {
		r.Cached = append(r.Cached, CachedPoint{Clients: c.clients,
			Agent: []Load{load(c.agent, c.agP99, 1.2)}, Floor: []Load{load(c.floor, c.floorP99, 1.4)}})
	}
	r.Collector = &CollectorPoint{GOGC: 400, Agent: []Load{load(23000, 4000, 1.2)}, Floor: []Load{load(24500, 3500, 1.4)},
		DefaultAllocPerAnswer: 2600, AllocPerAnswer: 2650, DefaultGCPer1000: 14.2, GCPer1000: 3.1,
		DefaultMem: Mem{RSSMiB: 24, AnonMiB: 7.5}, Mem: Mem{RSSMiB: 36, AnonMiB: 19.4}}
	for range 3 {
		r.Churn = append(r.Churn,
			ChurnRun{Label: "50 pods/s", Rate: 50, Pods: 100, Checked: 20, Hits: 20, STSCalls: 100, ToCachedMS: []float64{10, 20, 30}, StatusMS: []float64{5}},
			ChurnRun{Label: "burst: 110 pods in 2 s", Rate: 55, Pods: 110, Checked: 20, Hits: 19, Misses: 1, STSCalls: 110, ToCachedMS: []float64{20, 900, 1300}, StatusMS: []float64{6}})
	}
	scale := func(node, pods, sas, ns int, startMS, rss, anon float64) ScaleRun {
		return ScaleRun{NodePods: node, ClusterPods: pods, ClusterSAs: sas, ClusterNS: ns, StartupMS: startMS,
			Mem: Mem{RSSMiB: rss, AnonMiB: anon, FileMiB: rss - anon, WorkingSetMiB: anon + 1}, HeapMiB: 5, HeapGoalMiB: 8}
	}
	r.Scale = []ScaleRun{
		scale(110, 1000, 1000, 100, 120, 19, 9), scale(110, 1000, 1000, 100, 130, 19, 9),
		scale(110, 10000, 10000, 1000, 160, 21, 11.5), scale(110, 10000, 10000, 1000, 150, 21, 11.5),
	}
	for range 3 {
		r.Cold = append(r.Cold, ColdRun{TotalMS: 14, TokenMS: 7, STSMS: 5, Outcome: "miss×1", STSCalls: 1, BaseToken: 6.5, BaseSTS: 4})
	}
	for _, c := range []int{1000, 10000} {
		r.StartBase = append(r.StartBase, StartBaseline{ClusterPods: c, ProcMS: 20, SyncMS: 30, IptablesMS: 50, NoIptablesMS: 90,
			FloorMem: Mem{RSSMiB: 7, AnonMiB: 2, FileMiB: 5, WorkingSetMiB: 2.5}})
	}
	return r
}

func TestJudge(t *testing.T) {
	want := []struct{ name, verdict, measured string }{
		{"anonymous memory (RssAnon) ≤ 12 MiB", "**met**", "iamlet 11.5 MiB (VmRSS 21.0, RssFile 9.5, working set 12.5) at 110 node pods, 10,000 cluster pods / 10,000 ServiceAccounts / 1,000 namespaces; floor 2.0 MiB"},
		{"anonymous memory flat within 2 MiB", "**not met**", "110 node pods 9.0 → 11.5 MiB (+2.5); floor 2.0 → 2.0 MiB"},
		{"VmRSS ≤ 20 MiB", "**not met**", "iamlet 21.0 MiB"},
		{"ready within 150 ms", "**not met**", "iamlet 125 ms with 1,000 cluster pods, 155 ms with 10,000 cluster pods; floor server (exec to first answer) 20, 20 ms; iamlet with `--iptables=false` 90, 90 ms"},
		{"first request a cache hit, with one STS call per pod: 50 pods/s", "**met**", "60 / 60 hits"},
		{"first request a cache hit, with one STS call per pod: burst: 110 pods in 2 s", "**not met**", "57 / 60 hits (3 misses, 0 failed); 330 STS calls for 330 pods (1.00 per pod)"},
		{"cached answer p99 ≤ 1.3×", "**not met**", "5000 vs 3600 µs: 1.39× (load generator at 52% / 61% of its core)"},
		{"cached answer throughput ≥ 0.85×", "**met**", "21000 vs 24000 req/s: 0.88×"},
	}
	got := judge(fixture())
	if len(got) != len(want) {
		t.Fatalf("judge() = %d targets, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if !strings.Contains(g.name, w.name) || g.verdict != w.verdict || !strings.Contains(g.measured, w.measured) {
			t.Errorf("judge()[%d] = %q | %q | %q,\nwant name with %q, verdict %q, measured with %q", i, g.name, g.measured, g.verdict, w.name, w.verdict, w.measured)
		}
	}
}

func TestJudgeWithoutData(t *testing.T) {
	for _, tg := range judge(&Results{}) {
		if tg.verdict != noData {
			t.Errorf("judge(empty) %q = %q, want %q", tg.name, tg.verdict, noData)
		}
	}
	// A cluster smaller than the target's is no verdict on the target, whatever its figures.
	r := fixture()
	for i := range r.Scale {
		r.Scale[i].ClusterSAs /= 10
	}
	for _, tg := range []target{judge(r)[0], judge(r)[2]} {
		if !strings.HasPrefix(tg.verdict, noData) {
			t.Errorf("judge(1,000 ServiceAccounts) %q = %q, want %q", tg.name, tg.verdict, noData)
		}
	}
}

func TestReportRendersEverySection(t *testing.T) {
	var w strings.Builder
	report(&w, fixture(), nil)
	out := w.String()
	for _, s := range []string{"## Targets", "| anonymous memory (RssAnon) ≤ 12 MiB", "## 1. Cached answer", "pinned to CPU 0",
		"## 3. New pods", "| burst: 110 pods in 2 s | 110 |", "## 4. Scale", "| 110 | 10000 | 10000 | 1000 | 21.0 | 11.5 | 9.5 | 12.5 |",
		"## 5. Start-up", "**Start-up at 110 node pods:**",
		"| default (GOGC=100) | 0.88× | 1.39× | 47.6 µs | 41.7 µs | 2600 | 14.2 | 7.5 | 24.0 |",
		"| `GOGC=400` | 0.94× | 1.14× | 43.5 µs | 40.8 µs | 2650 | 3.1 | 19.4 | 36.0 |",
		"**The collector's share at 64 clients:** the default agent allocates 2600 bytes per answer and collects 14.2 times " +
			"per 1,000 answers; started with `GOGC=400`, 3.1 times, and it answers at 0.94× of the floor's throughput with " +
			"1.14× of its p99 (default: 0.88×, 1.39×), holding 19.4 MiB RssAnon under that load against 7.5."} {
		if !strings.Contains(out, s) {
			t.Errorf("report() lacks %q", s)
		}
	}
	t.Logf("\n%s", out)
}

// committedResults is bench/results.json as committed; the test is skipped without it.
func committedResults(t *testing.T) *Results {
	t.Helper()
	b, err := os.ReadFile("../../results.json")
	if err != nil {
		t.Skip(err)
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

// The committed results.json, of whatever age, still renders: -report-only must not break on old runs.
func TestReportRendersCommittedResults(t *testing.T) {
	var w strings.Builder
	report(&w, committedResults(t), nil)
	if !strings.Contains(w.String(), "## Targets") {
		t.Errorf("report(results.json) has no targets table")
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 10000: "10,000", 1234567: "1,234,567", -1000: "-1,000"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}
