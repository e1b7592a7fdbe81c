package routing

import (
	"context"
	"log/slog"
	"sync"
)

// repeatFilter is a log handler that drops a record its rounds saw in the previous
// round. A computation that runs on many syncs logs through it and ends each run
// with rounds.next, so a problem is logged once while it lasts, and again if it
// comes back after it was gone.
type repeatFilter struct {
	next   slog.Handler
	rounds *logRounds
}

// logRounds holds the records (level, message, attributes) logged in this round and
// the previous one.
type logRounds struct {
	mu         sync.Mutex
	prev, this map[string]bool
}

// next ends a round.
func (r *logRounds) next() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.prev, r.this = r.this, nil
}

// repeated records key in this round and reports whether the previous one had it.
func (r *logRounds) repeated(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.this == nil {
		r.this = map[string]bool{}
	}
	r.this[key] = true
	return r.prev[key]
}

func (f repeatFilter) Enabled(ctx context.Context, l slog.Level) bool { return f.next.Enabled(ctx, l) }

func (f repeatFilter) Handle(ctx context.Context, rec slog.Record) error {
	key := rec.Level.String() + " " + rec.Message
	rec.Attrs(func(a slog.Attr) bool {
		key += " " + a.String()
		return true
	})
	if f.rounds.repeated(key) {
		return nil
	}
	return f.next.Handle(ctx, rec)
}

func (f repeatFilter) WithAttrs(attrs []slog.Attr) slog.Handler {
	return repeatFilter{next: f.next.WithAttrs(attrs), rounds: f.rounds}
}

func (f repeatFilter) WithGroup(name string) slog.Handler {
	return repeatFilter{next: f.next.WithGroup(name), rounds: f.rounds}
}
