package netns

import (
	"io"
	"net"
	"net/url"
	"path/filepath"
	"testing"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ForwardAPIServer makes the API server of rc reachable on the loopback of the
// namespace, for a kube-routerd process running inside it, and writes a kubeconfig
// for it into dir. The listener is created inside the namespace; connections to the
// API server are dialled from the test process. It stops when the test ends.
func (ns *NS) ForwardAPIServer(t testing.TB, rc *rest.Config, dir string) (kubeconfig string) {
	t.Helper()
	api, err := url.Parse(rc.Host)
	if err != nil {
		t.Fatalf("API server address %q: %v", rc.Host, err)
	}
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatalf("listen inside %s: %v", ns.Label, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", api.Host)
				if err != nil {
					return
				}
				defer up.Close()
				go func() { _, _ = io.Copy(up, c) }()
				_, _ = io.Copy(c, up)
			}()
		}
	}()
	kc := clientcmdapi.NewConfig()
	// Behind a forward the address differs from the one the serving certificate was
	// made for, so keep the server name rc verifies against.
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: "https://" + ln.Addr().String(), CertificateAuthorityData: rc.CAData, TLSServerName: rc.TLSClientConfig.ServerName}
	kc.AuthInfos["node"] = &clientcmdapi.AuthInfo{ClientCertificateData: rc.CertData, ClientKeyData: rc.KeyData, Token: rc.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "node"}
	kc.CurrentContext = "test"
	path := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}
