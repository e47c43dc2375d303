// Package loadresult is the JSON a bench/loadgen run prints and the benchmark report reads.
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
}
