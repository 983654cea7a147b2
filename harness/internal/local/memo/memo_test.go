package memo

import "testing"

// A Map keeps at most two generations, and a value asked for survives the
// generation it was put in.
func TestGenerations(t *testing.T) {
	const size = 16
	m := New[int, int](size)
	m.Put(-1, 42)
	for i := range 5 * size {
		m.Put(i, i)
		if v, ok := m.Get(-1); !ok || v != 42 {
			t.Fatalf("after %d puts the value asked for each time is gone (%d, %t)", i+1, v, ok)
		}
	}
	if n := m.Len(); n > 2*size {
		t.Errorf("the map keeps %d values, want at most %d", n, 2*size)
	}
	if _, ok := m.Get(0); ok {
		t.Error("a value nobody asked for outlived two generations")
	}
}
