package diagnose

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// collectEvents writes the events of ns, oldest first, one per line, to
// <ns>-events.txt.
func (c *Collector) collectEvents(ctx context.Context, dir, ns string, s *summary) {
	rel := ns + "-events.txt"
	what := "events of namespace " + ns
	ictx, cancel := c.itemContext(ctx)
	defer cancel()
	var events []corev1.Event
	opts := metav1.ListOptions{Limit: listPageSize}
	for {
		page, err := c.clientset.CoreV1().Events(ns).List(ictx, opts)
		if err != nil {
			s.fail(rel, what, err)
			return
		}
		events = append(events, page.Items...)
		if page.Continue == "" {
			break
		}
		opts.Continue = page.Continue
	}
	if err := writeFile(dir, rel, []byte(FormatEvents(events))); err != nil {
		s.fail(rel, what, err)
		return
	}
	s.collected(rel, fmt.Sprintf("%d %s", len(events), what))
}

// EventTime is when an event last happened. Events written through
// events.k8s.io/v1 set only EventTime (and a series); core/v1 writers set
// LastTimestamp; the creation time is the fallback for events with
// neither.
func EventTime(e *corev1.Event) time.Time {
	switch {
	case e.Series != nil && !e.Series.LastObservedTime.IsZero():
		return e.Series.LastObservedTime.Time
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	case !e.FirstTimestamp.IsZero():
		return e.FirstTimestamp.Time
	}
	return e.CreationTimestamp.Time
}

// FormatEvents renders events oldest first, one line each, like
// `kubectl events`: time, type, reason, object, count, source, message.
func FormatEvents(events []corev1.Event) string {
	sorted := make([]*corev1.Event, len(events))
	for i := range events {
		sorted[i] = &events[i]
	}
	sort.SliceStable(sorted, func(i, j int) bool {
		ti, tj := EventTime(sorted[i]), EventTime(sorted[j])
		if !ti.Equal(tj) {
			return ti.Before(tj)
		}
		return sorted[i].Name < sorted[j].Name
	})
	var b strings.Builder
	for _, e := range sorted {
		obj := e.InvolvedObject.Kind + "/" + e.InvolvedObject.Name
		if e.InvolvedObject.FieldPath != "" {
			obj += " (" + e.InvolvedObject.FieldPath + ")"
		}
		source := e.ReportingController
		if source == "" {
			source = e.Source.Component
		}
		if source == "" {
			source = "-"
		}
		count := e.Count
		if e.Series != nil && e.Series.Count > count {
			count = e.Series.Count
		}
		if count < 1 {
			count = 1
		}
		msg := strings.ReplaceAll(strings.TrimSpace(e.Message), "\n", " ")
		fmt.Fprintf(&b, "%s  %s  %s  %s  x%d  %s  %s\n",
			EventTime(e).UTC().Format(eventTimeFormat), orDash(e.Type), orDash(e.Reason), obj, count, source, msg)
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// eventTimeFormat keeps the microseconds events.k8s.io/v1 events carry, at
// a fixed width so the lines align.
const eventTimeFormat = "2006-01-02T15:04:05.000000Z07:00"
