package kubetest

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// Gate passes a ListerWatcher's answers on until told to refuse (the agent's RBAC changed under it: its list and
// watch answer 403) or cut off (the apiserver out of the agent's reach: they fail to connect); either way the watches
// it had open end, as the apiserver's would in time, or client-go's health check would.
type Gate struct {
	lw       cache.ListerWatcherWithContext
	resource string

	mu      sync.Mutex
	refuse  bool
	cut     bool
	watches []watch.Interface
}

// NewGate gates lw, a ListerWatcher of resource (a plural: "pods").
func NewGate(resource string, lw cache.ListerWatcher) *Gate {
	return &Gate{lw: cache.ToListerWatcherWithContext(lw), resource: resource}
}

// Refuse makes the gate refuse from now on (ending its open watches), or answer again.
func (g *Gate) Refuse(refuse bool) { g.set(&g.refuse, refuse) }

// CutOff makes the gate fail to connect from now on (ending its open watches), or answer again.
func (g *Gate) CutOff(cut bool) { g.set(&g.cut, cut) }

func (g *Gate) set(mode *bool, on bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	*mode = on
	if on {
		for _, w := range g.watches {
			w.Stop()
		}
		g.watches = nil
	}
}

// failure is the gate's answer to verb while it refuses or is cut off; nil while it passes requests on. Call it
// with g.mu held.
func (g *Gate) failure(verb string) error {
	switch {
	case g.refuse:
		return g.forbidden(verb)
	case g.cut:
		return &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	}
	return nil
}

func (g *Gate) forbidden(verb string) error {
	return apierrors.NewForbidden(schema.GroupResource{Resource: g.resource}, "",
		errors.New(`User "system:serviceaccount:kube-system:iamlet" cannot `+verb+` resource "`+g.resource+`"`))
}

// ListWithContext lists through the gate.
func (g *Gate) ListWithContext(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
	g.mu.Lock()
	err := g.failure("list")
	g.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return g.lw.ListWithContext(ctx, o)
}

// WatchWithContext watches through the gate; Refuse ends the watch.
func (g *Gate) WatchWithContext(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.failure("watch"); err != nil {
		return nil, err
	}
	w, err := g.lw.WatchWithContext(ctx, o)
	if err == nil {
		g.watches = append(g.watches, w)
	}
	return w, err
}

// List is ListWithContext without a context.
func (g *Gate) List(o metav1.ListOptions) (runtime.Object, error) {
	return g.ListWithContext(context.Background(), o)
}

// Watch is WatchWithContext without a context.
func (g *Gate) Watch(o metav1.ListOptions) (watch.Interface, error) {
	return g.WatchWithContext(context.Background(), o)
}

// IsWatchListSemanticsUnSupported: client-go's fake, which the gates wrap, does not stream lists.
func (g *Gate) IsWatchListSemanticsUnSupported() bool { return true }
