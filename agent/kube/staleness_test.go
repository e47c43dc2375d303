package kube_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/iamlet/iamlet/agent/kube"
)

// scripted answers every request with the status it was last told to, as a Status body (200: an empty list).
type scripted struct {
	mu   sync.Mutex
	code int
}

func (s *scripted) set(code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.code = code
}

func (s *scripted) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	code := s.code
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if code == http.StatusOK {
		_, _ = io.WriteString(w, `{"kind":"ServiceAccountList","apiVersion":"v1","metadata":{"resourceVersion":"5"},"items":[]}`)
		return
	}
	w.WriteHeader(code)
	_, _ = fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","code":%d,"message":"answered %d"}`, code, code)
}

// TestRefusalLastsUntilAnswered: a 403 or 401 to a list or a watch is a refusal until the consumer says it holds a
// list answered since (Answered), not until a request succeeds: a streamed list's watch opens long before its last
// object arrives. An error that is no refusal (the apiserver failing or out of reach) makes none.
func TestRefusalLastsUntilAnswered(t *testing.T) {
	api := &scripted{code: http.StatusOK}
	srv := httptest.NewServer(api)
	defer srv.Close()
	c, err := kube.New(&rest.Config{Host: srv.URL, QPS: 50, Burst: 100})
	if err != nil {
		t.Fatal(err)
	}
	lw, r := kube.TrackStaleness("ServiceAccounts", c.ServiceAccounts())
	list := func() { _, _ = lw.List(metav1.ListOptions{}) }
	watch := func() {
		if w, err := lw.Watch(metav1.ListOptions{}); err == nil {
			w.Stop()
		}
	}
	answered := func() { r.Answered() }
	steps := []struct {
		name    string
		code    int
		call    func()
		refused bool
	}{
		{"list answered", http.StatusOK, list, false},
		{"list failing", http.StatusInternalServerError, list, false},
		{"list refused", http.StatusForbidden, list, true},
		{"list failing after", http.StatusInternalServerError, list, true},
		{"list answered again, the store not yet replaced", http.StatusOK, list, true},
		{"store replaced", http.StatusOK, answered, false},
		{"watch unauthorized", http.StatusUnauthorized, watch, true},
		{"watch opened again", http.StatusOK, watch, true},
		{"store replaced again", http.StatusOK, answered, false},
	}
	for _, s := range steps {
		api.set(s.code)
		s.call()
		got := r.Err()
		if s.refused != (got != nil) || got != nil && (!errors.Is(got, kube.ErrRefused) || !strings.Contains(got.Error(), "ServiceAccounts")) {
			t.Errorf("%s (%d): Err() = %v, want refused %v (kube.ErrRefused naming ServiceAccounts)", s.name, s.code, got, s.refused)
		}
	}
	if r.Answered() {
		t.Error("Answered() with no refusal to end = true, want false")
	}

	// Out of reach: no answer at all is no refusal.
	srv.Close()
	if _, err := lw.List(metav1.ListOptions{}); err == nil {
		t.Fatal("list from a closed server succeeded")
	}
	if err := r.Err(); err != nil {
		t.Errorf("after a failure to connect: Err() = %v, want nil", err)
	}
}

// TestUnansweredGoesStaleAfterStaleAfter: failed requests (the apiserver failing or out of reach) make what the
// consumer holds stale once they have gone on for kube.StaleAfter, counted from the start of the first, without an
// answer in between. From then on only the consumer's Answered (it replaced what it holds from a list) ends that:
// an answer does not, and a watch resuming where the store left off is turned back with 410 Gone, so the reflector
// lists afresh. A shorter failure ends with the next answer.
func TestUnansweredGoesStaleAfterStaleAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var answer error
		var slow time.Duration
		watches := 0
		lw, s := kube.TrackStaleness("ServiceAccounts", &cache.ListWatch{
			ListWithContextFunc: func(context.Context, metav1.ListOptions) (runtime.Object, error) {
				time.Sleep(slow)
				if answer != nil {
					return nil, answer
				}
				return &corev1.ServiceAccountList{}, nil
			},
			WatchFuncWithContext: func(context.Context, metav1.ListOptions) (watch.Interface, error) {
				watches++
				return watch.NewFake(), answer
			},
		})
		list := func() { _, _ = lw.List(metav1.ListOptions{}) }
		resume := func() error { _, err := lw.Watch(metav1.ListOptions{ResourceVersion: "5"}); return err }
		stream := func() error {
			yes := true
			_, err := lw.Watch(metav1.ListOptions{SendInitialEvents: &yes})
			return err
		}

		// A short failure ends with the next answer.
		answer = apierrors.NewServiceUnavailable("etcd leader changed")
		list()
		time.Sleep(kube.StaleAfter / 2)
		answer = nil
		if err := resume(); err != nil || s.Err() != nil || s.Answered() {
			t.Errorf("a short failure answered: watch %v, Err() = %v; want nil, nil, and nothing to answer", err, s.Err())
		}

		// Counted from the start of the first failed request: here one that took 20 s.
		answer, slow = apierrors.NewServiceUnavailable("etcd leader changed"), 20*time.Second
		list()
		slow = 0
		time.Sleep(kube.StaleAfter - 20*time.Second - time.Second)
		list()
		if err := s.Err(); err != nil {
			t.Errorf("unanswered for less than StaleAfter: Err() = %v, want nil", err)
		}
		time.Sleep(time.Second)
		err := s.Err()
		if !errors.Is(err, kube.ErrUnanswered) || !strings.Contains(err.Error(), "ServiceAccounts") || !strings.Contains(err.Error(), "etcd leader changed") {
			t.Errorf("unanswered for StaleAfter: Err() = %v, want kube.ErrUnanswered naming ServiceAccounts and the last error", err)
		}

		// Stale: a resumed watch is turned back without asking the apiserver; a streamed list goes through.
		answer = nil
		before := watches
		if err := resume(); !apierrors.IsResourceExpired(err) || watches != before {
			t.Errorf("resuming a watch while stale = %v (%d calls made), want 410 Gone and none made", err, watches-before)
		}
		if err := stream(); err != nil || watches != before+1 {
			t.Errorf("a streamed list while stale = %v (%d calls made), want it made", err, watches-before)
		}
		list()
		if !errors.Is(s.Err(), kube.ErrUnanswered) {
			t.Errorf("answered, the store not yet replaced: Err() = %v, want still kube.ErrUnanswered", s.Err())
		}
		if !s.Answered() || s.Err() != nil {
			t.Errorf("replaced: Answered() false or Err() = %v; want true, nil", s.Err())
		}
	})
}
