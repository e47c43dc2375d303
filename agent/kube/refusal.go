package kube

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// ErrRefused: the apiserver refuses (403, 401) the agent's list or watch of a resource: its RBAC changed under the
// agent, a rollback. An informer keeps what it last saw through any error, so what it holds may be stale.
var ErrRefused = errors.New("the apiserver refuses the agent's list or watch")

// Refusal tracks whether the apiserver refused one ListerWatcher's list or watch since what its consumer holds was
// last replaced. It is set by the refusal and cleared by Answered, which the consumer calls once it has replaced what
// it holds from a list the apiserver answered: not when a request merely succeeds, since a streamed list opens (and
// the reflector's store still holds the old objects) long before its last object arrives. A failure to reach the
// apiserver is no refusal: while it is down, nothing it holds changes either.
type Refusal struct {
	what string
	last atomic.Pointer[error]
}

// TrackRefusals wraps lw, of what (a phrase: "this node's pods"), in a ListerWatcher whose refusals r notes.
func TrackRefusals(what string, lw cache.ListerWatcher) (cache.ListerWatcher, *Refusal) {
	r := &Refusal{what: what}
	u, ok := lw.(interface{ IsWatchListSemanticsUnSupported() bool })
	return &refusalNoter{lw: cache.ToListerWatcherWithContext(lw), r: r, noWatchList: ok && u.IsWatchListSemanticsUnSupported()}, r
}

// Err is ErrRefused, with what and the apiserver's words, from a refusal until Answered; nil otherwise.
func (r *Refusal) Err() error {
	if e := r.last.Load(); e != nil {
		return *e
	}
	return nil
}

// Answered ends a refusal: the consumer has replaced what it holds from a list answered since. It reports whether
// there was one to end.
func (r *Refusal) Answered() bool { return r.last.Swap(nil) != nil }

func (r *Refusal) note(err error) {
	if apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) {
		e := fmt.Errorf("%w of %s, so what the agent holds of them may be stale: %w", ErrRefused, r.what, err)
		r.last.Store(&e)
	}
}

type refusalNoter struct {
	lw          cache.ListerWatcherWithContext
	r           *Refusal
	noWatchList bool
}

func (n *refusalNoter) ListWithContext(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
	obj, err := n.lw.ListWithContext(ctx, o)
	n.r.note(err)
	return obj, err
}

func (n *refusalNoter) WatchWithContext(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	w, err := n.lw.WatchWithContext(ctx, o)
	n.r.note(err)
	return w, err
}

func (n *refusalNoter) List(o metav1.ListOptions) (runtime.Object, error) {
	return n.ListWithContext(context.Background(), o)
}

func (n *refusalNoter) Watch(o metav1.ListOptions) (watch.Interface, error) {
	return n.WatchWithContext(context.Background(), o)
}

// IsWatchListSemanticsUnSupported passes on what the wrapped ListerWatcher says (client-go's fake does not stream).
func (n *refusalNoter) IsWatchListSemanticsUnSupported() bool { return n.noWatchList }
