package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	kindlog "sigs.k8s.io/kind/pkg/log"
)

// kindLogger passes kind's own progress and warnings to the run's slog
// logger: V(0) is kind's user-facing level and becomes Info, higher
// verbosity becomes Debug.
type kindLogger struct{ logger *slog.Logger }

var _ kindlog.Logger = kindLogger{}

func (l kindLogger) Warn(message string) { l.logger.Warn(clean(message), "source", "kind") }
func (l kindLogger) Warnf(format string, args ...any) {
	l.Warn(fmt.Sprintf(format, args...))
}
func (l kindLogger) Error(message string) { l.logger.Error(clean(message), "source", "kind") }
func (l kindLogger) Errorf(format string, args ...any) {
	l.Error(fmt.Sprintf(format, args...))
}

func (l kindLogger) V(level kindlog.Level) kindlog.InfoLogger {
	if level <= 0 {
		return kindInfoLogger{logger: l.logger, level: slog.LevelInfo}
	}
	return kindInfoLogger{logger: l.logger, level: slog.LevelDebug}
}

type kindInfoLogger struct {
	logger *slog.Logger
	level  slog.Level
}

func (l kindInfoLogger) Info(message string) {
	l.logger.Log(context.Background(), l.level, clean(message), "source", "kind")
}
func (l kindInfoLogger) Infof(format string, args ...any) {
	l.Info(fmt.Sprintf(format, args...))
}
func (l kindInfoLogger) Enabled() bool {
	return l.logger.Enabled(context.Background(), l.level)
}

// clean drops the padding and trailing newlines kind writes for a console,
// which are noise in a structured log.
func clean(message string) string {
	return strings.TrimSpace(message)
}
