package schedule

import (
	"context"
	"sync"
)

// Lock is a cluster's shared state: isolated scenarios hold it shared,
// many at once; a scenario that changes what every namespace sees holds
// it exclusively. A waiting exclusive holder goes before shared holders
// that come after it, so that it is never starved; every wait ends with
// its context.
type Lock struct {
	mu      sync.Mutex
	shared  int  // current shared holders
	held    bool // an exclusive holder has it
	waiting int  // exclusive holders waiting
	changed chan struct{}
}

func (l *Lock) wake() {
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
}

func (l *Lock) waitChange() <-chan struct{} {
	if l.changed == nil {
		l.changed = make(chan struct{})
	}
	return l.changed
}

// Shared takes the lock shared; the returned function gives it back.
func (l *Lock) Shared(ctx context.Context) (func(), error) {
	l.mu.Lock()
	for l.held || l.waiting > 0 {
		ch := l.waitChange()
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		l.mu.Lock()
	}
	l.shared++
	l.mu.Unlock()
	return sync.OnceFunc(func() {
		l.mu.Lock()
		l.shared--
		l.wake()
		l.mu.Unlock()
	}), nil
}

// Exclusive takes the lock alone; the returned function gives it back.
func (l *Lock) Exclusive(ctx context.Context) (func(), error) {
	l.mu.Lock()
	l.waiting++
	for l.held || l.shared > 0 {
		ch := l.waitChange()
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			l.mu.Lock()
			l.waiting--
			l.wake()
			l.mu.Unlock()
			return nil, ctx.Err()
		}
		l.mu.Lock()
	}
	l.waiting--
	l.held = true
	l.mu.Unlock()
	return sync.OnceFunc(func() {
		l.mu.Lock()
		l.held = false
		l.wake()
		l.mu.Unlock()
	}), nil
}
