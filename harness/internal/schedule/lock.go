package schedule

import (
	"context"
	"slices"
	"sync"
)

// Lock is a cluster's shared state: isolated scenarios hold it shared,
// many at once; a scenario that changes what every namespace sees holds
// it exclusively. Requests are granted in the order they were made (Request
// returns at once, in the caller's order; Wait blocks): shared ones
// together until an exclusive one is reached, which waits for them and
// goes before every request made after it, so that it is never starved and
// the order is the schedule's, not that of the goroutines that wait. Every
// wait ends with its context.
type Lock struct {
	mu     sync.Mutex
	shared int  // current shared holders
	held   bool // an exclusive holder has it
	queue  []*Request
}

// Request is one place in a Lock's queue.
type Request struct {
	l         *Lock
	exclusive bool
	granted   chan struct{}
}

// Request queues a request for l, exclusive or shared, behind every
// request made before it. Wait for it to be granted.
func (l *Lock) Request(exclusive bool) *Request {
	r := &Request{l: l, exclusive: exclusive, granted: make(chan struct{})}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.queue = append(l.queue, r)
	l.grant()
	return r
}

// grant grants the requests at the head of the queue that may hold the
// lock now: shared ones while no exclusive holder has it, an exclusive one
// when no one holds it. It stops at the first that must wait. l.mu is held.
func (l *Lock) grant() {
	for len(l.queue) > 0 {
		r := l.queue[0]
		if r.exclusive {
			if l.held || l.shared > 0 {
				return
			}
			l.held = true
		} else {
			if l.held {
				return
			}
			l.shared++
		}
		l.queue = l.queue[1:]
		close(r.granted)
	}
}

// Wait waits until r is granted and returns the function that gives the
// lock back. When ctx ends first, r leaves the queue (or, granted at that
// moment, gives the lock back) and Wait returns ctx's error.
func (r *Request) Wait(ctx context.Context) (func(), error) {
	select {
	case <-r.granted:
		return sync.OnceFunc(r.release), nil
	case <-ctx.Done():
	}
	l := r.l
	l.mu.Lock()
	if i := slices.Index(l.queue, r); i >= 0 {
		l.queue = slices.Delete(l.queue, i, i+1)
		l.grant() // an exclusive request leaving the head lets shared ones in
		l.mu.Unlock()
	} else {
		l.mu.Unlock()
		r.release()
	}
	return nil, ctx.Err()
}

func (r *Request) release() {
	l := r.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.exclusive {
		l.held = false
	} else {
		l.shared--
	}
	l.grant()
}
