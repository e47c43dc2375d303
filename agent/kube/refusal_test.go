package kube_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

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

// TestRefusalFollowsTheLastAnswer: a 403 or 401 to the list is a refusal until the apiserver answers again; an error
// that is no refusal (the apiserver failing or out of reach) neither makes one nor ends one.
func TestRefusalFollowsTheLastAnswer(t *testing.T) {
	api := &scripted{code: http.StatusOK}
	srv := httptest.NewServer(api)
	defer srv.Close()
	c, err := kube.New(&rest.Config{Host: srv.URL, QPS: 50, Burst: 100})
	if err != nil {
		t.Fatal(err)
	}
	lw, r := kube.TrackRefusals("ServiceAccounts", c.ServiceAccounts())
	list := func() error {
		_, err := lw.List(metav1.ListOptions{})
		return err
	}
	steps := []struct {
		code    int
		refused bool
	}{
		{http.StatusOK, false},
		{http.StatusInternalServerError, false},
		{http.StatusForbidden, true},
		{http.StatusInternalServerError, true}, // still refused: nothing says the refusal ended
		{http.StatusOK, false},
		{http.StatusUnauthorized, true},
		{http.StatusOK, false},
	}
	for i, s := range steps {
		api.set(s.code)
		_ = list()
		got := r.Err()
		if s.refused != (got != nil) || got != nil && (!errors.Is(got, kube.ErrRefused) || !strings.Contains(got.Error(), "ServiceAccounts")) {
			t.Errorf("step %d (%d): Err() = %v, want refused %v (kube.ErrRefused naming ServiceAccounts)", i, s.code, got, s.refused)
		}
	}

	// Out of reach: no answer at all is no refusal.
	srv.Close()
	if err := list(); err == nil {
		t.Fatal("list from a closed server succeeded")
	}
	if err := r.Err(); err != nil {
		t.Errorf("after a failure to connect: Err() = %v, want nil", err)
	}
}
