// Package kubetest makes kube.Client's calls on a client-go clientset, so that unit tests can use client-go's fake
// (its object tracker and reactors) where the agent uses kube.Client.
package kubetest

import (
	"context"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Client is the part of kube.Client's method set the unit tests need, over a clientset.
type Client struct{ kubernetes.Interface }

// Pods lists and watches the pods of every namespace whose fields match fieldSelector.
func (c Client) Pods(fieldSelector string) cache.ListerWatcher {
	api := c.CoreV1().Pods(metav1.NamespaceAll)
	return c.listWatch(func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		o.FieldSelector = fieldSelector
		return api.List(ctx, o)
	}, func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
		o.FieldSelector = fieldSelector
		return api.Watch(ctx, o)
	})
}

// ServiceAccounts lists and watches the ServiceAccounts of every namespace.
func (c Client) ServiceAccounts() cache.ListerWatcher {
	api := c.CoreV1().ServiceAccounts(metav1.NamespaceAll)
	return c.listWatch(func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return api.List(ctx, o) },
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) { return api.Watch(ctx, o) })
}

// Namespaces lists and watches the Namespaces.
func (c Client) Namespaces() cache.ListerWatcher {
	api := c.CoreV1().Namespaces()
	return c.listWatch(func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return api.List(ctx, o) },
		func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) { return api.Watch(ctx, o) })
}

// listWatch wraps list and watch as generated informers do, so that a reflector learns when the clientset cannot stream
// lists (client-go's fake) instead of waiting forever for the end of a stream that never comes.
func (c Client) listWatch(list cache.ListWithContextFunc, w cache.WatchFuncWithContext) cache.ListerWatcher {
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{ListWithContextFunc: list, WatchFuncWithContext: w}, c.Interface)
}

// CreateToken asks for a token of a ServiceAccount.
func (c Client) CreateToken(ctx context.Context, namespace, serviceAccount string, req *authv1.TokenRequest) (*authv1.TokenRequest, error) {
	return c.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, serviceAccount, req, metav1.CreateOptions{})
}

// Node reads a Node.
func (c Client) Node(ctx context.Context, name string) (*corev1.Node, error) {
	return c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
}

// UpdateNode writes n back.
func (c Client) UpdateNode(ctx context.Context, n *corev1.Node, fieldManager string) error {
	_, err := c.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{FieldManager: fieldManager})
	return err
}
