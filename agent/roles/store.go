package roles

import (
	"encoding/binary"
	"iter"
	"maps"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/iamlet/iamlet/agent/kube"
)

// annotations are an object's annotations under eks.amazonaws.com/ and iamlet.dev/, the only ones the mapper reads,
// sorted by key and encoded in one string, each key and value after its length: one allocation per object, where a
// map costs hundreds of bytes even with one entry. (Interning them cost more: each team's role ARN is its own.)
type annotations string

// isKnown reports whether the mapper reads annotation key.
func isKnown(key string) bool {
	return strings.HasPrefix(key, "eks.amazonaws.com/") || strings.HasPrefix(key, "iamlet.dev/")
}

// known encodes the annotations of m the mapper reads.
func known(m map[string]string) annotations {
	var keys []string
	for k := range m {
		if isKnown(k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var b []byte
	for _, k := range keys {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(m[k])))
		b = append(b, m[k]...)
	}
	return annotations(b)
}

// each yields a's keys and values in order.
func (a annotations) each() iter.Seq2[string, string] {
	return func(yield func(string, string) bool) {
		for s := string(a); s != ""; {
			var k, v string
			k, s = next(s)
			v, s = next(s)
			if !yield(k, v) {
				return
			}
		}
	}
}

func (a annotations) get(key string) (string, bool) {
	for k, v := range a.each() {
		if k == key {
			return v, true
		}
	}
	return "", false
}

// value is get without the presence flag.
func (a annotations) value(key string) string {
	v, _ := a.get(key)
	return v
}

// next splits a length-prefixed field off s, as known wrote it.
func next(s string) (field, rest string) {
	var n uint64
	for i := 0; i < len(s) && i < binary.MaxVarintLen64; i++ {
		n |= uint64(s[i]&0x7f) << (7 * i)
		if s[i] < 0x80 {
			s = s[i+1:]
			if n > uint64(len(s)) {
				break
			}
			return s[:n], s[n:]
		}
	}
	return "", "" // not what known wrote: cannot happen
}

// objectKey names a ServiceAccount (namespace and name) or a Namespace (name only).
type objectKey struct{ namespace, name string }

// store is what a reflector fills in place of an informer's cache: per object, its key and the annotations the mapper
// reads, nothing else. Holding full objects (even slimmed to their metadata) cost 1.5-2 KiB per ServiceAccount, so the
// agent's memory followed the cluster's size; most of a cluster's ServiceAccounts (every namespace's default) carry no
// such annotation, and a store of ServiceAccounts keeps none of those at all.
type store struct {
	// keepBare keeps objects without any such annotation too: an unknown namespace allows nothing, a known one
	// without an allow-list allows what the mapper's policy says, so every Namespace's name is kept.
	keepBare bool

	mu       sync.RWMutex
	items    map[objectKey]annotations
	handlers []func()

	synced   chan struct{} // closed by the first Replace: the initial list is held
	syncOnce sync.Once

	// staleness is whether the apiserver refused, or has long not answered, the reflector's list or watch; nil for
	// a store no reflector fills.
	staleness *kube.Staleness
}

func newStore(keepBare bool) *store {
	return &store{keepBare: keepBare, items: make(map[objectKey]annotations), synced: make(chan struct{})}
}

func (s *store) get(k objectKey) (annotations, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a, ok := s.items[k]
	return a, ok
}

// addHandler registers h, called after every change to what the store keeps, outside its lock.
func (s *store) addHandler(h func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers = append(s.handlers, h)
}

// entry is what the store keeps of obj, and whether it keeps anything.
func (s *store) entry(obj any) (objectKey, annotations, bool) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return objectKey{}, "", false
	}
	a := known(m.GetAnnotations())
	return objectKey{m.GetNamespace(), m.GetName()}, a, s.keepBare || a != ""
}

// Add, Update, Delete, Replace and Resync make store a cache.ReflectorStore.

func (s *store) Add(obj any) error    { s.put(obj); return nil }
func (s *store) Update(obj any) error { s.put(obj); return nil }

func (s *store) put(obj any) {
	k, a, keep := s.entry(obj)
	s.mu.Lock()
	old, had := s.items[k]
	switch {
	case keep:
		s.items[k] = a
	case had:
		delete(s.items, k) // its last known annotation was removed
	}
	changed := had != keep || keep && old != a
	s.mu.Unlock()
	if changed {
		s.notify()
	}
}

func (s *store) Delete(obj any) error {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	k, _, _ := s.entry(obj)
	s.mu.Lock()
	_, had := s.items[k]
	delete(s.items, k)
	s.mu.Unlock()
	if had {
		s.notify()
	}
	return nil
}

func (s *store) Replace(list []any, _ string) error {
	items := make(map[objectKey]annotations)
	for _, obj := range list {
		if k, a, keep := s.entry(obj); keep {
			items[k] = a
		}
	}
	s.mu.Lock()
	changed := !maps.Equal(s.items, items)
	s.items = items
	s.mu.Unlock()
	// Only now is what the store holds the apiserver's answer again: staleness ends here, not when the list began.
	answered := s.staleness != nil && s.staleness.Answered()
	s.syncOnce.Do(func() { close(s.synced) })
	if changed || answered { // after staleness too: the agent left its cache alone meanwhile (reconcileCache)
		s.notify()
	}
	return nil
}

// stale is why what the store holds may be stale, if it may.
func (s *store) stale() error {
	if s.staleness == nil {
		return nil
	}
	return s.staleness.Err()
}

func (s *store) Resync() error { return nil }

// Transformer slims each object of a streamed initial list as it arrives, before the reflector hands the whole list
// to Replace: the transient copy of a large cluster's list stays small too.
func (s *store) Transformer() cache.TransformFunc {
	return func(obj any) (any, error) {
		m, err := meta.Accessor(obj)
		if err != nil {
			return obj, nil
		}
		slim := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Name: m.GetName(), Namespace: m.GetNamespace()}}
		for k, v := range m.GetAnnotations() {
			if isKnown(k) {
				if slim.Annotations == nil {
					slim.Annotations = make(map[string]string)
				}
				slim.Annotations[k] = v
			}
		}
		return slim, nil
	}
}

func (s *store) notify() {
	s.mu.RLock()
	hs := s.handlers
	s.mu.RUnlock()
	for _, h := range hs {
		h()
	}
}

// reflectors list and watch ServiceAccounts and Namespaces cluster-wide into sas and namespaces, each store told of
// whether what it holds may be stale.
func reflectors(api API, sas, namespaces *store) []*cache.Reflector {
	var saLW, nsLW cache.ListerWatcher
	saLW, sas.staleness = kube.TrackStaleness("ServiceAccounts", api.ServiceAccounts())
	nsLW, namespaces.staleness = kube.TrackStaleness("Namespaces", api.Namespaces())
	return []*cache.Reflector{
		cache.NewReflectorWithOptions(saLW, &corev1.ServiceAccount{}, sas, cache.ReflectorOptions{Name: "iamlet serviceaccounts"}),
		cache.NewReflectorWithOptions(nsLW, &corev1.Namespace{}, namespaces, cache.ReflectorOptions{Name: "iamlet namespaces"}),
	}
}
