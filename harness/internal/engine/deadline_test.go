package engine

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// A probe refused by a client's rate limiter because its wait would pass the
// step's deadline was cut short by the timeout, like one whose context
// ended; any other error near the deadline is the probe's own.
func TestCutByDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	limiter := rate.NewLimiter(rate.Every(time.Hour), 1)
	limiter.Allow() // the next token is an hour away
	waitErr := limiter.Wait(ctx)
	if waitErr == nil {
		t.Fatal("the limiter waited past the deadline")
	}
	wrapped := fmt.Errorf("listing PeerAuthentications: client rate limiter Wait returned an error: %w", waitErr)
	if !cutByDeadline(ctx, wrapped) {
		t.Errorf("%v is not taken for a cut by the deadline", wrapped)
	}
	if cutByDeadline(ctx, errors.New("connection reset by peer")) {
		t.Error("an error of the probe's own is taken for a cut by the deadline")
	}
	<-ctx.Done()
	if !cutByDeadline(ctx, errors.New("connection reset by peer")) {
		t.Error("an error after the context ended is not a cut by the deadline")
	}
}
