package run

import (
	"context"
	"log/slog"
	"sync"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
)

// Kubernetes' client libraries log through two process-wide loggers: klog
// (client-go, e.g. the API server's deprecation warnings "v1 Endpoints is
// deprecated ...") and controller-runtime's. Left alone, klog prints its
// lines on stderr between a run's progress lines, and controller-runtime
// prints a warning with a stack trace when nothing was set. Both are routed,
// once per process and before any client exists, into the debug log of
// every run that is open (the run folder's LogFile): kept for whoever
// debugs a run, never on the terminal.
var kubeLogs struct {
	once  sync.Once
	mu    sync.Mutex
	sinks map[*Run]slog.Handler
}

// RouteKubernetesLogs routes klog and controller-runtime's logger into the
// debug logs of open runs. New calls it; a program that makes Kubernetes
// clients before its first run calls it first (both loggers should be set
// before any goroutine logs, as klog asks).
func RouteKubernetesLogs() {
	kubeLogs.once.Do(func() {
		h := kubeLogHandler{}
		klog.SetSlogLogger(slog.New(h))
		ctrllog.SetLogger(logr.FromSlogHandler(h))
	})
}

// addKubeLogSink sends Kubernetes' log records to h while r is open.
func addKubeLogSink(r *Run, h slog.Handler) {
	kubeLogs.mu.Lock()
	defer kubeLogs.mu.Unlock()
	if kubeLogs.sinks == nil {
		kubeLogs.sinks = map[*Run]slog.Handler{}
	}
	kubeLogs.sinks[r] = h
}

func removeKubeLogSink(r *Run) {
	kubeLogs.mu.Lock()
	defer kubeLogs.mu.Unlock()
	delete(kubeLogs.sinks, r)
}

// kubeLogHandler hands every record, at debug level and marked as the
// client libraries', to the open runs' debug logs.
type kubeLogHandler struct {
	attrs []slog.Attr
	group string
}

// kubeLogLevel is the lowest level of Kubernetes' records a run keeps:
// klog's V(2) (logr's V(n) is slog level -n), what client-go says of its
// own progress besides warnings and errors. From V(6) on client-go logs
// every request's URL, headers and, at V(8), its request and response
// bodies: the Secrets a run reads and writes (its CA's key, Helm's
// releases) would land in the run folder, and formatting them cost a
// rehearsal a sixth of its CPU.
const kubeLogLevel = slog.Level(-2)

func (kubeLogHandler) Enabled(_ context.Context, l slog.Level) bool {
	if l < kubeLogLevel {
		return false
	}
	kubeLogs.mu.Lock()
	defer kubeLogs.mu.Unlock()
	return len(kubeLogs.sinks) > 0
}

func (h kubeLogHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, slog.LevelDebug, r.Message, r.PC)
	out.AddAttrs(slog.String("source", "kubernetes-client"), slog.String("level", r.Level.String()))
	out.AddAttrs(h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		if h.group != "" {
			a.Key = h.group + "." + a.Key
		}
		out.AddAttrs(a)
		return true
	})
	kubeLogs.mu.Lock()
	sinks := make([]slog.Handler, 0, len(kubeLogs.sinks))
	for _, s := range kubeLogs.sinks {
		sinks = append(sinks, s)
	}
	kubeLogs.mu.Unlock()
	for _, s := range sinks {
		if s.Enabled(ctx, slog.LevelDebug) {
			_ = s.Handle(ctx, out.Clone())
		}
	}
	return nil
}

func (h kubeLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return kubeLogHandler{attrs: append(append([]slog.Attr(nil), h.attrs...), attrs...), group: h.group}
}

func (h kubeLogHandler) WithGroup(name string) slog.Handler {
	if h.group != "" {
		name = h.group + "." + name
	}
	return kubeLogHandler{attrs: h.attrs, group: name}
}

// teeHandler hands each record to every handler that wants it: the
// caller's logger (progress lines) and the run folder's debug log.
type teeHandler []slog.Handler

func (t teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	for _, h := range t {
		if h.Enabled(ctx, l) {
			return true
		}
	}
	return false
}

func (t teeHandler) Handle(ctx context.Context, r slog.Record) error {
	var first error
	for _, h := range t {
		if h.Enabled(ctx, r.Level) {
			if err := h.Handle(ctx, r.Clone()); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

func (t teeHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	out := make(teeHandler, len(t))
	for i, h := range t {
		out[i] = h.WithAttrs(attrs)
	}
	return out
}

func (t teeHandler) WithGroup(name string) slog.Handler {
	out := make(teeHandler, len(t))
	for i, h := range t {
		out[i] = h.WithGroup(name)
	}
	return out
}
