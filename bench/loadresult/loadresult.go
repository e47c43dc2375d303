// Package loadresult is the JSON a bench/loadgen run prints and the benchmark report reads, and the
// percentile rule both use.
package loadresult

// Result is what loadgen prints. Latencies are of answered requests (any status), in microseconds.
type Result struct {
	Clients    int              `json:"clients"`
	Seconds    float64          `json:"seconds"`
	Requests   int64            `json:"requests"` // answered 200 with the expected body, in the window
	All        int64            `json:"all"`      // every request answered or failed, warm-up included
	Errors     int64            `json:"errors"`   // transport errors, other statuses, unexpected bodies
	Statuses   map[string]int64 `json:"statuses"`
	RPS        float64          `json:"rps"`
	P50        float64          `json:"p50_us"`
	P90        float64          `json:"p90_us"`
	P99        float64          `json:"p99_us"`
	P999       float64          `json:"p999_us"`
	Max        float64          `json:"max_us"`
	Mean       float64          `json:"mean_us"`
	FirstError string           `json:"first_error,omitempty"`
	// The load generator's own cost: its user+system CPU time and its wall time from start to exit
	// (token, dials and warm-up included). On a machine it shares with the server, a load generator
	// near 100% of its core is what limits the figures, not the server.
	CPUSeconds  float64 `json:"cpu_s,omitempty"`
	WallSeconds float64 `json:"wall_s,omitempty"`
}

// Rank is the index, in n sorted samples, of the q-quantile by nearest rank: the smallest sample with
// at least a fraction q of the samples at or below it. q=0 is the first, q=1 the last. The tolerance
// keeps products such as 0.9×10 = 9.000000000000002 from rounding up a rank.
func Rank(n int, q float64) int {
	i := int(q*float64(n)+0.999999) - 1
	return min(max(i, 0), n-1)
}
