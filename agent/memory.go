package agent

import (
	"log/slog"
	"runtime/debug"
	runtimemetrics "runtime/metrics"
	"sync"
	"sync/atomic"
)

// startupMemory slows the collector for start-up, and returns the func that ends start-up's memory regime: the
// collector's pace back to what it was, and what start-up touched handed back (release). Ending twice is ending once.
//
// Collecting at every few MiB of the burst would spend the cores the lists need; a memory limit still caps the heap.
func startupMemory(release func()) (end func()) {
	pace := debug.SetGCPercent(startupGCPercent)
	return sync.OnceFunc(func() {
		debug.SetGCPercent(pace)
		release()
	})
}

// releaser hands back to the kernel what a burst of work (start-up, a run of fetches) left the process holding
// but not using:
//   - the heap's free pages: start-up's garbage (the cluster-wide lists as they streamed in), which the runtime
//     would otherwise return only over minutes;
//   - its mappings of the binary's read-only pages (unmapExecutablePages): start-up maps nearly all of them, a run
//     of fetches the SDK's and the token client's code, and the kernel would count them in VmRSS for the life of
//     the process. What the agent runs between bursts is mapped again on its first touch, from the page cache.
type releaser struct {
	log    *slog.Logger
	broken atomic.Bool // the binary's pages could not be released once: not tried again
}

func (r *releaser) release() {
	debug.FreeOSMemory()
	if r.broken.Load() {
		return
	}
	n, err := unmapExecutablePages()
	if err != nil {
		r.broken.Store(true)
		r.log.Warn("could not release the binary's pages; VmRSS keeps what start-up touched", "err", err)
		return
	}
	r.log.Debug("released the binary's pages", "bytes", n)
}

// releaseAfterFetches is the cache's Idle: after a run of fetches it releases (see releaser), but only once the
// agent has allocated at least every bytes since it last did. A node's pods at start or a scale-up leave megabytes
// the runtime would return only over minutes; a pod now and then leaves a few hundred KiB, and a forced collection
// for each (a node with steady churn: one every few seconds or faster) costs more than it returns. Only the
// cache's Run calls Idle, so last needs no lock.
func releaseAfterFetches(every uint64, allocated func() uint64, release func()) (idle func()) {
	var last uint64
	return func() {
		if now := allocated(); now-last >= every {
			last = now
			release()
		}
	}
}

// releaseEvery is releaseAfterFetches' bound: about 40 pods' fetches (TokenRequest and STS, ~100 KiB each).
const releaseEvery = 4 << 20

// heapAllocated is the bytes the heap has allocated since the process started.
func heapAllocated() uint64 {
	s := []runtimemetrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	runtimemetrics.Read(s)
	return s[0].Value.Uint64()
}

// startupGCPercent is GOGC until the agent is ready. 500 started faster still but left the heap more scattered:
// 0.9 MiB more held after the pages went back (make bench -only scale, 10 node pods, 10,000 cluster pods).
const startupGCPercent = 300
