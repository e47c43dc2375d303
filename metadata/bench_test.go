package metadata

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// discardWriter is a reusable ResponseWriter, so the benchmark measures the handler and not a recorder.
type discardWriter struct {
	h      http.Header
	status int
	n      int
}

func (w *discardWriter) Header() http.Header  { return w.h }
func (w *discardWriter) WriteHeader(code int) { w.status = code }
func (w *discardWriter) Write(b []byte) (int, error) {
	w.n += len(b)
	return len(b), nil
}

func benchmarkServe(b *testing.B, h http.Handler, r *http.Request) {
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, r)
	}
	if w.status != http.StatusOK {
		b.Fatalf("%s %q = %d, want 200", r.Method, r.URL, w.status)
	}
}

// BenchmarkCachedCredentials is the hot path: the credential document for a pod whose credentials the provider
// has cached (the fake provider answers from a map).
func BenchmarkCachedCredentials(b *testing.B) {
	for _, v2 := range []bool{false, true} {
		name := "v1"
		if v2 {
			name = "v2"
		}
		b.Run(name, func(b *testing.B) {
			e := newTestEnv(b, nil)
			r := httptest.NewRequest(http.MethodGet, "/latest/meta-data/iam/security-credentials/"+podRole, nil)
			r.RemoteAddr = podAddr + ":41234"
			if v2 {
				r.Header.Set(headerToken, e.token(b, podAddr, 21600))
			}
			benchmarkServe(b, e.h, r)
		})
	}
}

func BenchmarkCachedContainerCredentials(b *testing.B) {
	h, _ := newTestContainer(b, nil)
	r := httptest.NewRequest(http.MethodGet, DefaultContainerPath, nil)
	r.RemoteAddr = podAddr + ":41234"
	r.Header.Set("Authorization", "pod-token")
	benchmarkServe(b, h, r)
}

func BenchmarkNormalise(b *testing.B) {
	for _, p := range []struct{ name, path string }{
		{"clean", "/latest/meta-data/iam/security-credentials/pod-role"},
		{"trailing-slash", "/latest/meta-data/iam/security-credentials/"},
		{"encoded", "/latest/meta-data/%2e%2e/meta-data//iam/./security-credentials/pod-role"},
	} {
		b.Run(p.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := normalise(p.path); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
