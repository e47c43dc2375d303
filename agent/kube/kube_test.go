package kube_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/iamlet/iamlet/agent/kube"
)

// apiserver answers each request with the JSON body its path maps to (a 404 Status otherwise) and records what was
// asked. The real apiserver is the e2e suite's; this pins each call's verb, path, query and body.
type apiserver struct {
	answers map[string]string // "VERB /path" -> body

	mu   sync.Mutex
	got  []string // "VERB /path?query"
	body []string
}

func (a *apiserver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	a.mu.Lock()
	a.got = append(a.got, r.Method+" "+r.URL.RequestURI())
	a.body = append(a.body, string(b))
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if out, ok := a.answers[r.Method+" "+r.URL.Path]; ok {
		_, _ = io.WriteString(w, out)
		return
	}
	w.WriteHeader(http.StatusNotFound)
	_, _ = io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not here"}`)
}

func (a *apiserver) last() (string, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.got) == 0 {
		return "", ""
	}
	return a.got[len(a.got)-1], a.body[len(a.body)-1]
}

// asJSON is a request body as JSON: objects are sent in protobuf, as generated clients send them; patches as they are.
func asJSON(t *testing.T, body string) string {
	t.Helper()
	if body == "" || strings.HasPrefix(body, "{") {
		return body
	}
	obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(body), nil, nil)
	if err != nil {
		t.Fatalf("decoding the request body: %v", err)
	}
	b, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func start(t *testing.T, answers map[string]string) (*kube.Client, *apiserver) {
	t.Helper()
	a := &apiserver{answers: answers}
	srv := httptest.NewServer(a)
	t.Cleanup(srv.Close)
	c, err := kube.New(&rest.Config{Host: srv.URL, QPS: 50, Burst: 100})
	if err != nil {
		t.Fatalf("kube.New() error = %v", err)
	}
	return c, a
}

func TestCalls(t *testing.T) {
	c, api := start(t, map[string]string{
		"POST /api/v1/namespaces/ns/serviceaccounts/app/token":                    `{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","status":{"token":"minted"}}`,
		"POST /apis/authentication.k8s.io/v1/selfsubjectreviews":                  `{"kind":"SelfSubjectReview","apiVersion":"authentication.k8s.io/v1","status":{"userInfo":{"username":"system:serviceaccount:iamlet-system:iamlet","extra":{"authentication.kubernetes.io/node-name":["node-1"]}}}}`,
		"GET /api/v1/nodes/node-1":                                                `{"kind":"Node","apiVersion":"v1","metadata":{"name":"node-1","resourceVersion":"7"},"spec":{"taints":[{"key":"k","effect":"NoSchedule"}]}}`,
		"PUT /api/v1/nodes/node-1":                                                `{"kind":"Node","apiVersion":"v1","metadata":{"name":"node-1"}}`,
		"PATCH /api/v1/namespaces/iamlet-system":                                  `{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"iamlet-system"}}`,
		"GET /apis/apps/v1/namespaces/iamlet-system/daemonsets/iamlet-cleanup":    `{"kind":"DaemonSet","apiVersion":"apps/v1","metadata":{"name":"iamlet-cleanup","generation":2},"status":{"observedGeneration":2,"numberReady":3}}`,
		"DELETE /apis/apps/v1/namespaces/iamlet-system/daemonsets/iamlet-cleanup": `{"kind":"Status","apiVersion":"v1","status":"Success"}`,
	})
	ctx := context.Background()
	secs := int64(600)

	steps := []struct {
		name     string
		call     func(t *testing.T)
		wantReq  string
		wantBody string // a fragment of the request's body, as JSON
	}{
		{"CreateToken", func(t *testing.T) {
			out, err := c.CreateToken(ctx, "ns", "app", &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
				Audiences: []string{"sts.amazonaws.com"}, ExpirationSeconds: &secs,
				BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: "web", UID: "u-1"}}})
			if err != nil || out.Status.Token != "minted" {
				t.Errorf("CreateToken() = %+v, %v; want the token minted", out.Status, err)
			}
		}, "POST /api/v1/namespaces/ns/serviceaccounts/app/token", `"boundObjectRef":{"kind":"Pod","apiVersion":"v1","name":"web","uid":"u-1"}`},
		{"WhoAmI", func(t *testing.T) {
			u, err := c.WhoAmI(ctx)
			if err != nil || u.Username != "system:serviceaccount:iamlet-system:iamlet" || u.Extra["authentication.kubernetes.io/node-name"][0] != "node-1" {
				t.Errorf("WhoAmI() = %+v, %v", u, err)
			}
		}, "POST /apis/authentication.k8s.io/v1/selfsubjectreviews", `"status":{"userInfo":{}}`},
		{"Node", func(t *testing.T) {
			n, err := c.Node(ctx, "node-1")
			if err != nil || n.ResourceVersion != "7" || len(n.Spec.Taints) != 1 {
				t.Errorf("Node() = %+v, %v", n, err)
			}
		}, "GET /api/v1/nodes/node-1", ""},
		{"UpdateNode", func(t *testing.T) {
			n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", ResourceVersion: "7"}}
			if err := c.UpdateNode(ctx, n, "iamlet"); err != nil {
				t.Errorf("UpdateNode() error = %v", err)
			}
		}, "PUT /api/v1/nodes/node-1?fieldManager=iamlet", `"resourceVersion":"7"`},
		{"MergePatchNamespace", func(t *testing.T) {
			if err := c.MergePatchNamespace(ctx, "iamlet-system", []byte(`{"metadata":{"labels":{"a":"b"}}}`)); err != nil {
				t.Errorf("MergePatchNamespace() error = %v", err)
			}
		}, "PATCH /api/v1/namespaces/iamlet-system", `{"metadata":{"labels":{"a":"b"}}}`},
		{"DaemonSet", func(t *testing.T) {
			ds, err := c.DaemonSet(ctx, "iamlet-system", "iamlet-cleanup")
			if err != nil || ds.Generation != 2 || ds.Status.NumberReady != 3 {
				t.Errorf("DaemonSet() = %+v, %v", ds, err)
			}
		}, "GET /apis/apps/v1/namespaces/iamlet-system/daemonsets/iamlet-cleanup", ""},
		{"DeleteDaemonSet", func(t *testing.T) {
			if err := c.DeleteDaemonSet(ctx, "iamlet-system", "iamlet-cleanup"); err != nil {
				t.Errorf("DeleteDaemonSet() error = %v", err)
			}
		}, "DELETE /apis/apps/v1/namespaces/iamlet-system/daemonsets/iamlet-cleanup", ""},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			s.call(t)
			req, body := api.last()
			if req != s.wantReq {
				t.Errorf("request = %q, want %q", req, s.wantReq)
			}
			if got := asJSON(t, body); !strings.Contains(got, s.wantBody) {
				t.Errorf("body = %s, want it to hold %s", got, s.wantBody)
			}
		})
	}
}

// TestErrorsAreAPIStatus: the callers classify errors with apierrors (a gone pod, a conflict), so a Status the
// apiserver answers must come back as one, with its reason.
func TestErrorsAreAPIStatus(t *testing.T) {
	c, _ := start(t, nil)
	_, err := c.Node(context.Background(), "gone")
	if !apierrors.IsNotFound(err) {
		t.Errorf("Node(gone) error = %v, want NotFound", err)
	}
	_, err = c.CreateToken(context.Background(), "ns", "app", &authv1.TokenRequest{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("CreateToken() error = %v, want NotFound", err)
	}
}

// TestListsAskForWhatTheyWatch: the pods list carries the caller's field selector (the node's pods only), and the
// lists decode into typed lists the reflectors store.
func TestListsAskForWhatTheyWatch(t *testing.T) {
	list := func(kind string) string {
		b, _ := json.Marshal(map[string]any{"kind": kind, "apiVersion": "v1", "metadata": map[string]string{"resourceVersion": "5"},
			"items": []map[string]any{{"metadata": map[string]string{"name": "x", "namespace": "ns"}}}})
		return string(b)
	}
	c, api := start(t, map[string]string{
		"GET /api/v1/pods":            list("PodList"),
		"GET /api/v1/serviceaccounts": list("ServiceAccountList"),
		"GET /api/v1/namespaces":      list("NamespaceList"),
	})
	ctx := context.Background()

	got, err := cache.ToListerWatcherWithContext(c.Pods("spec.nodeName=node-1")).ListWithContext(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if pl, ok := got.(*corev1.PodList); err != nil || !ok || len(pl.Items) != 1 || pl.Items[0].Name != "x" {
		t.Fatalf("Pods().List() = %#v, %v; want a PodList of one", got, err)
	}
	if req, _ := api.last(); req != "GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1&resourceVersion=0" {
		t.Errorf("pods list request = %q", req)
	}
	if got, err := cache.ToListerWatcherWithContext(c.ServiceAccounts()).ListWithContext(ctx, metav1.ListOptions{}); err != nil || len(got.(*corev1.ServiceAccountList).Items) != 1 {
		t.Errorf("ServiceAccounts().List() = %#v, %v", got, err)
	}
	if req, _ := api.last(); req != "GET /api/v1/serviceaccounts" {
		t.Errorf("serviceaccounts list request = %q", req)
	}
	if got, err := cache.ToListerWatcherWithContext(c.Namespaces()).ListWithContext(ctx, metav1.ListOptions{}); err != nil || len(got.(*corev1.NamespaceList).Items) != 1 {
		t.Errorf("Namespaces().List() = %#v, %v", got, err)
	}
}
