// Package memo holds values the local stack's simulated data plane
// computes once and looks up by key (decoded xDS resources, verified
// certificate chains), bounded by generations: when the newer generation
// is full it becomes the older one and the one before is dropped, so keys
// nobody asks for any more go, and a key asked for is kept.
package memo

import "sync"

// Map is a bounded memo, safe for concurrent use.
type Map[K comparable, V any] struct {
	size     int
	mu       sync.Mutex
	cur, old map[K]V
}

// New is a Map whose generations hold up to size values each.
func New[K comparable, V any](size int) *Map[K, V] {
	return &Map[K, V]{size: size, cur: map[K]V{}}
}

// Get is the value kept for k, moved into the newer generation.
func (m *Map[K, V]) Get(k K) (V, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.cur[k]
	if !ok {
		if v, ok = m.old[k]; ok {
			m.put(k, v)
		}
	}
	return v, ok
}

// Put keeps v for k.
func (m *Map[K, V]) Put(k K, v V) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.put(k, v)
}

func (m *Map[K, V]) put(k K, v V) {
	if len(m.cur) >= m.size {
		m.old, m.cur = m.cur, map[K]V{}
	}
	m.cur[k] = v
}

// Len is how many values the Map keeps.
func (m *Map[K, V]) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.cur) + len(m.old)
}
