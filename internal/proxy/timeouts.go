package proxy

import (
	"github.com/kube-routerd/kube-routerd/internal/config"
	"github.com/kube-routerd/kube-routerd/internal/dataplane/ipvs"
)

// configuredTimeouts are the IPVS timeouts the config asks for (zero: the kernel's).
func configuredTimeouts(cfg config.ServiceProxy) ipvs.Timeouts {
	return ipvs.Timeouts{TCP: cfg.IPVSTCPTimeout.Duration, TCPFin: cfg.IPVSTCPFinTimeout.Duration, UDP: cfg.IPVSUDPTimeout.Duration}
}

// timeoutsDiffer reports whether the kernel's timeouts cur miss one that want sets.
func timeoutsDiffer(cur, want ipvs.Timeouts) bool {
	return (want.TCP != 0 && want.TCP != cur.TCP) ||
		(want.TCPFin != 0 && want.TCPFin != cur.TCPFin) ||
		(want.UDP != 0 && want.UDP != cur.UDP)
}

// syncTimeouts reads the kernel's IPVS timeouts and sets the configured ones if they
// differ: they are the namespace's, and someone (ipvsadm --set) may change them.
// r.kernelTimeouts keeps what the kernel has afterwards, for the status.
func (r *reconciler) syncTimeouts() error {
	cur, err := r.dp.IPVS.Timeouts()
	if err != nil {
		return err
	}
	if timeoutsDiffer(cur, r.timeouts) {
		if err := r.dp.IPVS.SetTimeouts(r.timeouts); err != nil {
			return err
		}
		r.writes++
		r.log.Info("set IPVS timeouts", "was", cur.String(), "configured", r.timeouts.String())
		if cur, err = r.dp.IPVS.Timeouts(); err != nil {
			return err
		}
	}
	r.kernelTimeouts = cur
	return nil
}
