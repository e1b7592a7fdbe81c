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
type internTable[K comparable, T any] struct {
	mu      sync.Mutex
	entries map[K]weak.Pointer[T]
}

// get returns the shared value of key, made by create if no holder is left. Where
// keys are hashes, fits tells whether the value held under key is the one wanted; one
// that is not (a collision) leaves the value made unshared. Nil fits takes any.
func (t *internTable[K, T]) get(key K, fits func(*T) bool, create func() *T) *T {
	t.mu.Lock()
	defer t.mu.Unlock()
	if v := t.entries[key].Value(); v != nil {
		if fits == nil || fits(v) {
			return v
		}
		return create()
	}
	if t.entries == nil {
		t.entries = map[K]weak.Pointer[T]{}
	}
	v := create()
	ptr := weak.Make(v)
	t.entries[key] = ptr
	runtime.AddCleanup(v, func(key K) {
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
var sharedStrings internTable[string, string]

// internString returns the shared copy of *s (nil for nil).
func internString(s *string) *string {
	if s == nil {
		return nil
	}
	return sharedStrings.get(*s, nil, func() *string {
		c := strings.Clone(*s)
		return &c
	})
}
