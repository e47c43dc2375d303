package kube

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// What a reflector holds may be stale: the apiserver refused its list or watch, or has not answered it for a while.
// An informer or a reflector keeps what it last saw through any error, so whoever reads what it holds asks
// Staleness first.
var (
	// ErrRefused: the apiserver refuses (403, 401) the agent's list or watch of a resource: its RBAC changed under
	// the agent, a rollback.
	ErrRefused = errors.New("the apiserver refuses the agent's list or watch")
	// ErrUnanswered: the agent's list or watch has failed for StaleAfter and more (the apiserver out of reach or
	// failing). The apiserver may be down for everyone, and then nothing changes; but the agent may be the only one
	// cut off (its route to the apiserver is the node's kube-proxy, the kubelet's is not), and then pods are deleted
	// and their addresses given to new ones meanwhile.
	ErrUnanswered = errors.New("the apiserver has not answered the agent's list or watch")
)

// StaleAfter is how long the agent's list or watch may fail before what it holds counts as stale: as long as the AWS
// VPC CNI waits before giving a deleted pod's address to another pod (its IP cooldown). It counts from the start of
// the first request that failed; a watch broken without a word fails only when client-go's HTTP/2 health check ends
// it, about 45 s later.
const StaleAfter = 30 * time.Second

// Staleness tracks whether what one ListerWatcher's consumer holds may be stale: from a refusal (403, 401), or once
// requests have failed for StaleAfter without an answer in between, until the consumer calls Answered, having
// replaced what it holds from a list the apiserver answered since. Not when a request merely succeeds: a streamed
// list opens (and the reflector's store still holds the old objects) long before its last object arrives, and a
// watch resumed after a long outage may replay what it missed, or be told its place is too old and relist. So
// while stale, a watch that is no list (one resuming from where the store left off) is answered 410 Gone here, and
// the reflector lists afresh. A shorter failure ends with the next answer: a resumed watch replays what it missed.
type Staleness struct {
	what    string
	stale   atomic.Pointer[error]   // why, from a refusal or a long failure until Answered; nil: not (yet) stale
	failing atomic.Pointer[failure] // since when requests fail, and the last error; nil while they are answered
}

type failure struct {
	since time.Time // the start of the first failed request
	err   error
}

// TrackStaleness wraps lw, of what (a phrase: "this node's pods"), in a ListerWatcher whose answers s notes.
func TrackStaleness(what string, lw cache.ListerWatcher) (cache.ListerWatcher, *Staleness) {
	s := &Staleness{what: what}
	u, ok := lw.(interface{ IsWatchListSemanticsUnSupported() bool })
	return &noter{lw: cache.ToListerWatcherWithContext(lw), s: s, noWatchList: ok && u.IsWatchListSemanticsUnSupported()}, s
}

// Err is ErrRefused or ErrUnanswered, with what and the apiserver's words, while what the consumer holds may be
// stale; nil otherwise.
func (s *Staleness) Err() error {
	if e := s.stale.Load(); e != nil {
		return *e
	}
	if f := s.failing.Load(); f != nil && time.Since(f.since) >= StaleAfter {
		return s.unanswered(f)
	}
	return nil
}

func (s *Staleness) unanswered(f *failure) error {
	return fmt.Errorf("%w of %s for %s, so what the agent holds of them may be stale: %w", ErrUnanswered, s.what,
		time.Since(f.since).Round(time.Second), f.err)
}

// Answered ends the staleness: the consumer has replaced what it holds from a list answered since. It reports
// whether what it held was stale.
func (s *Staleness) Answered() bool {
	f := s.failing.Swap(nil)
	latched := s.stale.Swap(nil) != nil
	return latched || f != nil && time.Since(f.since) >= StaleAfter
}

// note records the answer to a request that started at start.
func (s *Staleness) note(err error, start time.Time) {
	switch {
	case err == nil:
		// Answered, but after failing for StaleAfter: stale until a list replaces what the consumer holds.
		if f := s.failing.Swap(nil); f != nil && start.Sub(f.since) >= StaleAfter {
			e := s.unanswered(f)
			s.stale.CompareAndSwap(nil, &e)
		}
	case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
		e := fmt.Errorf("%w of %s, so what the agent holds of them may be stale: %w", ErrRefused, s.what, err)
		s.stale.Store(&e)
	default:
		f := &failure{since: start, err: err}
		if old := s.failing.Load(); old != nil {
			f.since = old.since
		}
		s.failing.Store(f)
	}
}

type noter struct {
	lw          cache.ListerWatcherWithContext
	s           *Staleness
	noWatchList bool
}

func (n *noter) ListWithContext(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
	start := time.Now()
	obj, err := n.lw.ListWithContext(ctx, o)
	n.s.note(err, start)
	return obj, err
}

func (n *noter) WatchWithContext(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	streamsList := o.SendInitialEvents != nil && *o.SendInitialEvents
	if err := n.s.Err(); err != nil && !streamsList {
		// Resuming would leave the store stale for good: only a list ends the staleness.
		return nil, apierrors.NewResourceExpired(fmt.Sprintf("iamlet relists %s: %v", n.s.what, err))
	}
	start := time.Now()
	w, err := n.lw.WatchWithContext(ctx, o)
	n.s.note(err, start)
	return w, err
}

func (n *noter) List(o metav1.ListOptions) (runtime.Object, error) {
	return n.ListWithContext(context.Background(), o)
}

func (n *noter) Watch(o metav1.ListOptions) (watch.Interface, error) {
	return n.WatchWithContext(context.Background(), o)
}

// IsWatchListSemanticsUnSupported passes on what the wrapped ListerWatcher says (client-go's fake does not stream).
func (n *noter) IsWatchListSemanticsUnSupported() bool { return n.noWatchList }
