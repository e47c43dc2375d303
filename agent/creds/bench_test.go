package creds_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/utils/clock"

	"github.com/iamlet/iamlet/agent/creds"
)

func BenchmarkCachedCredentials(b *testing.B) {
	f := newFetcher(clock.RealClock{}, time.Hour)
	c := creds.New(f, creds.Config{})
	r := request("web", "reader")
	ctx := context.Background()
	if _, _, err := c.Get(ctx, r); err != nil {
		b.Fatalf("Get() error = %v", err)
	}
	// A node's worth of other entries, so the lookup is not into a map of one.
	for i := range 200 {
		if _, _, err := c.Get(ctx, request(fmt.Sprint("pod-", i), "reader")); err != nil {
			b.Fatalf("Get() error = %v", err)
		}
	}

	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, out, err := c.Get(ctx, r); out != creds.Hit || err != nil {
				b.Fatalf("Get() = %v, %v, want Hit, nil", outcomeName(out), err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, out, err := c.Get(ctx, r); out != creds.Hit || err != nil {
					b.Errorf("Get() = %v, %v, want Hit, nil", outcomeName(out), err)
					return
				}
			}
		})
	})
}

// BenchmarkConcurrentMisses1000 measures 1,000 callers missing one key at once; the fetch is held
// until every caller has arrived, so all but the first join it (or, arriving late, hit).
func BenchmarkConcurrentMisses1000(b *testing.B) {
	const callers = 1000
	b.ReportAllocs()
	var fetches int64
	for b.Loop() {
		var arrived atomic.Int64
		all := make(chan struct{})
		f := newFetcher(clock.RealClock{}, time.Hour)
		f.fn = func(ctx context.Context, _ creds.Request, n int) (creds.Credentials, error) {
			<-all
			return f.issue(n), nil
		}
		c := creds.New(f, creds.Config{})
		r := request("web", "reader")
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				if arrived.Add(1) == callers {
					close(all)
				}
				if _, _, err := c.Get(context.Background(), r); err != nil {
					b.Errorf("Get() error = %v", err)
				}
			})
		}
		wg.Wait()
		fetches += int64(f.Calls())
	}
	b.ReportMetric(float64(fetches)/float64(b.N), "fetches/op")
}
