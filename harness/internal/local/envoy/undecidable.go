package envoy

import (
	"errors"
	"fmt"
)

// Undecidable is the evaluator's answer where the configuration has a
// shape it does not evaluate: it names the shape instead of guessing what
// Envoy would do with it.
type Undecidable struct {
	What string
}

func (u *Undecidable) Error() string {
	return "the Envoy evaluator cannot decide: " + u.What
}

func undecidable(format string, args ...any) error {
	return &Undecidable{What: fmt.Sprintf(format, args...)}
}

// IsUndecidable reports whether err is, or wraps, an *Undecidable.
func IsUndecidable(err error) bool {
	var u *Undecidable
	return errors.As(err, &u)
}
