package agent

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestReleaseAfterFetches(t *testing.T) {
	var allocated uint64
	released := 0
	idle := releaseAfterFetches(100, func() uint64 { return allocated }, func() { released++ })

	for _, step := range []struct {
		alloc uint64 // allocated since the previous run of fetches
		want  int    // releases so far
	}{
		{alloc: 500, want: 1}, // start-up's lists and the node's pods
		{alloc: 30, want: 1},  // a pod now and then: not worth a collection
		{alloc: 30, want: 1},
		{alloc: 40, want: 2}, // together they are
		{alloc: 99, want: 2},
		{alloc: 1, want: 3},
	} {
		allocated += step.alloc
		idle()
		if released != step.want {
			t.Fatalf("after %d bytes allocated in all: %d releases, want %d", allocated, released, step.want)
		}
	}
}

func TestHeapAllocatedCounts(t *testing.T) {
	before := heapAllocated()
	sink := make([]byte, 1<<20)
	runtime.KeepAlive(sink)
	if after := heapAllocated(); after-before < 1<<20 {
		t.Errorf("heapAllocated() grew by %d bytes over a 1 MiB allocation, want at least 1 MiB", after-before)
	}
}

func TestStartupMemoryEndsOnce(t *testing.T) {
	pace := debug.SetGCPercent(100)
	defer debug.SetGCPercent(pace)
	released := 0
	end := startupMemory(func() { released++ })
	if got := debug.SetGCPercent(startupGCPercent); got != startupGCPercent {
		t.Errorf("GOGC during start-up = %d, want %d", got, startupGCPercent)
	}
	end()
	end()
	if got := debug.SetGCPercent(100); got != 100 || released != 1 {
		t.Errorf("after start-up: GOGC %d, released %d times; want 100, once", got, released)
	}
}
