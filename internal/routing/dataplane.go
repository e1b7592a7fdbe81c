package routing

import (
	"context"

	"github.com/kube-routerd/kube-routerd/internal/bfd"

	"github.com/kube-routerd/kube-routerd/internal/dataplane/route"
)

// Dataplane is what routing programs: the kernel's routes and tunnels, and the BGP
// speaker it starts once it knows the node's addresses.
type Dataplane struct {
	Routes       route.Interface
	startSpeaker startSpeakerFunc
	// startBFD is nil where BFD cannot run (unit tests without a fake).
	startBFD startBFDFunc
}

// KernelDataplane is the node's kernel routes and an in-process GoBGP speaker.
func KernelDataplane() Dataplane {
	return Dataplane{Routes: route.Netlink{}, startSpeaker: func(ctx context.Context, cfg speakerConfig) (speaker, error) {
		s, err := startGoBGP(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return s, nil
	}, startBFD: func(c *Controller, onChange func(bfd.Event)) bfdSessions {
		return bfd.NewManager(c.log, onChange)
	}}
}
