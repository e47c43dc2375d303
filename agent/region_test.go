package agent

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// TestNodeRegionWaitsForTheNodeIMDS: after a rollout the agent's first requests to the node's IMDS can be refused
// until host-rules has exempted the new pod; the region lookup asks again instead of failing the start-up.
func TestNodeRegionWaitsForTheNodeIMDS(t *testing.T) {
	var asked atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut:
			_, _ = io.WriteString(w, "token")
		case asked.Add(1) <= 3:
			http.Error(w, "not yet", http.StatusNotFound)
		default:
			_, _ = io.WriteString(w, `{"region":"eu-west-1"}`) // the instance identity document
		}
	}))
	defer srv.Close()
	region, err := nodeRegion(context.Background(), srv.URL, "", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil || region != "eu-west-1" {
		t.Fatalf("nodeRegion = %q, %v; want eu-west-1 after the refusals", region, err)
	}
	if n := asked.Load(); n != 4 {
		t.Errorf("asked %d times, want 4", n)
	}
}
