// Package kube is iamlet's client of the Kubernetes API: the few calls it makes (its node's pods, ServiceAccounts and
// Namespaces, TokenRequest, SelfSubjectReview, its Node, and the chart hooks' Namespace and DaemonSet), made with
// client-go's REST client and a scheme of only the types they carry. client-go's generated clientset registers every
// API group there is: most of the binary, and of what the kernel maps of it.
package kube

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/flowcontrol"
)

// Client makes iamlet's calls to one apiserver, as one identity.
type Client struct {
	core, authn, apps *rest.RESTClient
	params            runtime.ParameterCodec
}

// New returns a client for rc. Its three API groups share one connection pool and one rate limiter (rc's QPS and
// Burst), as a generated clientset's do.
func New(rc *rest.Config) (*Client, error) {
	c := *rc
	if c.RateLimiter == nil && c.QPS > 0 {
		if c.Burst <= 0 {
			return nil, fmt.Errorf("kubernetes client: a QPS (%v) needs a Burst", c.QPS)
		}
		c.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(c.QPS, c.Burst)
	}
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	hc, err := rest.HTTPClientFor(&c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	scheme, err := newScheme()
	if err != nil {
		return nil, err
	}
	codecs := rest.CodecFactoryForGeneratedClient(scheme, serializer.NewCodecFactory(scheme)).WithoutConversion()
	group := func(gv schema.GroupVersion, apiPath string) (*rest.RESTClient, error) {
		gc := c
		gc.GroupVersion, gc.APIPath, gc.NegotiatedSerializer = &gv, apiPath, codecs
		return rest.RESTClientForConfigAndClient(&gc, hc)
	}
	k := &Client{params: runtime.NewParameterCodec(scheme)}
	if k.core, err = group(corev1.SchemeGroupVersion, "/api"); err == nil {
		if k.authn, err = group(authv1.SchemeGroupVersion, "/apis"); err == nil {
			k.apps, err = group(appsv1.SchemeGroupVersion, "/apis")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return k, nil
}

// newScheme holds the types the client's calls carry, and Status and the other unversioned types, as client-go's
// scheme has them.
func newScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, authv1.AddToScheme, appsv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, fmt.Errorf("kubernetes client scheme: %w", err)
		}
	}
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
	return scheme, nil
}

// Pods lists and watches the pods of every namespace whose fields match fieldSelector.
func (k *Client) Pods(fieldSelector string) cache.ListerWatcher {
	return k.listWatch("pods", fieldSelector)
}

// ServiceAccounts lists and watches the ServiceAccounts of every namespace.
func (k *Client) ServiceAccounts() cache.ListerWatcher { return k.listWatch("serviceaccounts", "") }

// Namespaces lists and watches the Namespaces.
func (k *Client) Namespaces() cache.ListerWatcher { return k.listWatch("namespaces", "") }

// listWatch lists and watches a core resource in every namespace, in protobuf as generated clients ask for built-in
// types: it decodes in a fraction of JSON's time and garbage, which is most of a large cluster's start-up.
func (k *Client) listWatch(resource, fieldSelector string) cache.ListerWatcher {
	req := func(o metav1.ListOptions) *rest.Request {
		if fieldSelector != "" {
			o.FieldSelector = fieldSelector
		}
		return k.core.Get().Resource(resource).VersionedParams(&o, k.params).UseProtobufAsDefault()
	}
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return req(o).Do(ctx).Get()
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.Watch = true
			return req(o).Watch(ctx)
		},
	}
}

// CreateToken asks for a token of a ServiceAccount (its TokenRequest subresource).
func (k *Client) CreateToken(ctx context.Context, namespace, serviceAccount string, req *authv1.TokenRequest) (*authv1.TokenRequest, error) {
	out := &authv1.TokenRequest{}
	err := k.core.Post().Namespace(namespace).Resource("serviceaccounts").Name(serviceAccount).SubResource("token").
		UseProtobufAsDefault().Body(req).Do(ctx).Into(out)
	return out, err
}

// WhoAmI asks the apiserver who the client is (a SelfSubjectReview).
func (k *Client) WhoAmI(ctx context.Context) (authv1.UserInfo, error) {
	out := &authv1.SelfSubjectReview{}
	err := k.authn.Post().Resource("selfsubjectreviews").UseProtobufAsDefault().Body(&authv1.SelfSubjectReview{}).Do(ctx).Into(out)
	return out.Status.UserInfo, err
}

// Node reads a Node.
func (k *Client) Node(ctx context.Context, name string) (*corev1.Node, error) {
	out := &corev1.Node{}
	err := k.core.Get().Resource("nodes").Name(name).UseProtobufAsDefault().Do(ctx).Into(out)
	return out, err
}

// UpdateNode writes n back: a compare-and-swap on the resourceVersion it was read with.
func (k *Client) UpdateNode(ctx context.Context, n *corev1.Node, fieldManager string) error {
	return k.core.Put().Resource("nodes").Name(n.Name).
		VersionedParams(&metav1.UpdateOptions{FieldManager: fieldManager}, k.params).UseProtobufAsDefault().Body(n).Do(ctx).Error()
}

// MergePatchNamespace applies a JSON merge patch to a Namespace.
func (k *Client) MergePatchNamespace(ctx context.Context, name string, patch []byte) error {
	return k.core.Patch(types.MergePatchType).Resource("namespaces").Name(name).Body(patch).Do(ctx).Error()
}

// DaemonSet reads a DaemonSet.
func (k *Client) DaemonSet(ctx context.Context, namespace, name string) (*appsv1.DaemonSet, error) {
	out := &appsv1.DaemonSet{}
	err := k.apps.Get().Namespace(namespace).Resource("daemonsets").Name(name).UseProtobufAsDefault().Do(ctx).Into(out)
	return out, err
}

// DeleteDaemonSet deletes a DaemonSet.
func (k *Client) DeleteDaemonSet(ctx context.Context, namespace, name string) error {
	return k.apps.Delete().Namespace(namespace).Resource("daemonsets").Name(name).UseProtobufAsDefault().Do(ctx).Error()
}
