package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestLoadAgainstARealServer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bad" {
			_, _ = w.Write([]byte("no keys here"))
			return
		}
		_, _ = w.Write([]byte(`{"AccessKeyId":"ASIA"}`))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	req := func(path string) []byte { return []byte("GET " + path + " HTTP/1.1\r\nHost: " + addr + "\r\n\r\n") }
	newStats := func() *stats { return &stats{expect: []byte(`"AccessKeyId"`), statuses: map[int]int64{}} }

	for _, tc := range []struct {
		name             string
		run              func(*stats) (Result, error)
		requests, errors int64
	}{
		{"timed, bounded by -n", func(st *stats) (Result, error) {
			return runTimed(addr, req("/"), 4, 10*time.Second, 0, 50, time.Second, st)
		}, 50, 0},
		{"burst", func(st *stats) (Result, error) { return runBurst(addr, req("/"), 10, time.Second, st) }, 10, 0},
		{"unexpected body", func(st *stats) (Result, error) {
			return runTimed(addr, req("/bad"), 1, 10*time.Second, 0, 5, time.Second, st)
		}, 0, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := tc.run(newStats())
			if err != nil {
				t.Fatal(err)
			}
			if r.Requests != tc.requests || r.Errors != tc.errors {
				t.Errorf("requests, errors = %d, %d (%s), want %d, %d", r.Requests, r.Errors, r.FirstError, tc.requests, tc.errors)
			}
			if tc.requests > 0 && (r.P50 <= 0 || r.P50 > r.P99 || r.P99 > r.Max) {
				t.Errorf("latencies p50 %v, p99 %v, max %v: want 0 < p50 ≤ p99 ≤ max", r.P50, r.P99, r.Max)
			}
		})
	}
}
