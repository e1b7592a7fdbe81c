package k8s

import (
	"runtime"
	"strings"
	"sync"
	"weak"
)

// internTable hands out one shared value per key while some cached object holds
// it: an entry goes when the last holder does, so the table follows the cluster
// rather than everything it ever held.
type internTable[T any] struct {
	mu      sync.Mutex
	entries map[string]weak.Pointer[T]
}

// get returns the shared value of key, made by create if no holder is left.
func (t *internTable[T]) get(key string, create func() *T) *T {
	t.mu.Lock()
	defer t.mu.Unlock()
	if v := t.entries[key].Value(); v != nil {
		return v
	}
	if t.entries == nil {
		t.entries = map[string]weak.Pointer[T]{}
	}
	v := create()
	ptr := weak.Make(v)
	t.entries[key] = ptr
	runtime.AddCleanup(v, func(key string) {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.entries[key] == ptr {
			delete(t.entries, key)
		}
	}, key)
	return v
}

// sharedStrings interns the node names of EndpointSlice endpoints: a cluster has a
// few thousand of them and a hundred thousand endpoints naming them.
var sharedStrings internTable[string]

// internString returns the shared copy of *s (nil for nil).
func internString(s *string) *string {
	if s == nil {
		return nil
	}
	return sharedStrings.get(*s, func() *string {
		c := strings.Clone(*s)
		return &c
	})
}
