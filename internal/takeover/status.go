package takeover

import "fmt"

// Details is what `kube-routerd status` shows of the takeover from kube-router.
type Details struct {
	// Found says the node held objects of kube-router's at start.
	Found   bool     `json:"found"`
	Adopted []string `json:"adopted,omitempty"`
	Removed []string `json:"removed,omitempty"`
	// Waiting lists objects of kube-router's still kept, each with the reason.
	Waiting []string `json:"waiting,omitempty"`
	Errors  []string `json:"errors,omitempty"`
}

// Details implements daemon.StatusReporter.
func (c *Controller) Details() any {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.details
}

func (c *Controller) record(removed []Object, waiting []string, errs []error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, o := range removed {
		c.details.Removed = append(c.details.Removed, o.String())
	}
	c.details.Waiting = waiting
	c.details.Errors = nil
	for _, err := range errs {
		c.details.Errors = append(c.details.Errors, err.Error())
	}
}

func (c *Controller) summary() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.details.Found {
		return "no kube-router objects found"
	}
	return fmt.Sprintf("from kube-router: %d adopted, %d removed, %d waiting",
		len(c.details.Adopted), len(c.details.Removed), len(c.details.Waiting))
}

func (c *Controller) setFound(found bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.details.Found = c.details.Found || found
}
