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
// VPC CNI waits before giving a deleted pod's address to another pod (its IP cooldown). A watch broken without a
// word counts from when client-go's HTTP/2 health check ends it, about 45 s later.
const StaleAfter = 30 * time.Second

// Staleness tracks whether what one ListerWatcher's consumer holds may be stale. A refusal (403, 401) makes it stale
// at once, until the consumer calls Answered once it has replaced what it holds from a list the apiserver answered:
// not when a request merely succeeds, since a streamed list opens (and the reflector's store still holds the old
// objects) long before its last object arrives. Any other failure makes it stale once requests have failed for
// StaleAfter without an answer in between; an answered request ends that (a resumed watch first replays what it
// missed).
type Staleness struct {
	what    string
	fresh   func() // called when requests are answered again after StaleAfter without an answer; may be nil
	refused atomic.Pointer[error]
	failing atomic.Pointer[failure] // since when requests fail, and the last error; nil while they are answered
}

type failure struct {
	since time.Time
	err   error
}

// TrackStaleness wraps lw, of what (a phrase: "this node's pods"), in a ListerWatcher whose answers s notes. fresh,
// if not nil, is called when a request is answered after the requests had failed for StaleAfter: what the consumer
// skipped meanwhile can be done again. (A refusal ends in the consumer's own Replace, which knows.)
func TrackStaleness(what string, lw cache.ListerWatcher, fresh func()) (cache.ListerWatcher, *Staleness) {
	s := &Staleness{what: what, fresh: fresh}
	u, ok := lw.(interface{ IsWatchListSemanticsUnSupported() bool })
	return &noter{lw: cache.ToListerWatcherWithContext(lw), s: s, noWatchList: ok && u.IsWatchListSemanticsUnSupported()}, s
}

// Err is ErrRefused or ErrUnanswered, with what and the apiserver's words, while what the consumer holds may be
// stale; nil otherwise.
func (s *Staleness) Err() error {
	if e := s.refused.Load(); e != nil {
		return *e
	}
	if f := s.failing.Load(); f != nil {
		if d := time.Since(f.since); d >= StaleAfter {
			return fmt.Errorf("%w of %s for %s, so what the agent holds of them may be stale: %w", ErrUnanswered, s.what, d.Round(time.Second), f.err)
		}
	}
	return nil
}

// Answered ends a refusal: the consumer has replaced what it holds from a list answered since. It reports whether
// there was one to end.
func (s *Staleness) Answered() bool {
	s.failing.Store(nil)
	return s.refused.Swap(nil) != nil
}

func (s *Staleness) note(err error) {
	switch {
	case err == nil:
		if f := s.failing.Swap(nil); f != nil && time.Since(f.since) >= StaleAfter && s.fresh != nil {
			s.fresh()
		}
	case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
		e := fmt.Errorf("%w of %s, so what the agent holds of them may be stale: %w", ErrRefused, s.what, err)
		s.refused.Store(&e)
	default:
		f := &failure{since: time.Now(), err: err}
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
	obj, err := n.lw.ListWithContext(ctx, o)
	n.s.note(err)
	return obj, err
}

func (n *noter) WatchWithContext(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	w, err := n.lw.WatchWithContext(ctx, o)
	n.s.note(err)
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
