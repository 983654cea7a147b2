package controlplane

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/meshproof/meshproof/harness/internal/local/binaries"
	"github.com/meshproof/meshproof/harness/internal/local/proc"
)

// controlPlane is etcd and kube-apiserver started as children that end with
// this program (package proc), listening on free 127.0.0.1 ports only.
type controlPlane struct {
	dir       string
	etcd      *proc.Process
	apiServer *proc.Process
	etcdURL   *url.URL
	config    *rest.Config
	// files the other parts of a local cluster need.
	kubeconfig    string
	servingCAFile string
	saKeyFile     string
}

// The file names inside the control plane's directory.
const (
	servingCertFile = "apiserver.crt"
	servingKeyFile  = "apiserver.key"
	servingCAFile   = "serving-ca.crt"
	clientCAFile    = "client-ca.crt"
	saKeyFile       = "sa.key"
	saPubFile       = "sa.pub"
	kubeconfigFile  = "kubeconfig"
)

// KubeconfigContext is the only context (and cluster and user) of Env.Kubeconfig.
const KubeconfigContext = "meshproof-testenv"

// ProcessIDs are etcd's and kube-apiserver's process ids.
func (e *Env) ProcessIDs() (etcd, apiServer int) {
	return e.plane.etcd.Pid(), e.plane.apiServer.Pid()
}

// adminUser is the client certificate's subject: system:masters bypasses RBAC.
const (
	adminUser  = "meshproof-admin"
	adminGroup = "system:masters"
)

// startControlPlane starts etcd, then kube-apiserver from the binaries in
// assets, and waits until the API server is ready. On failure nothing is left
// running.
func startControlPlane(ctx context.Context, assets string, o *options) (_ *controlPlane, err error) {
	dir, err := proc.TempDir("controlplane-")
	if err != nil {
		return nil, err
	}
	cp := &controlPlane{dir: dir}
	defer func() {
		if err != nil {
			err = errors.Join(err, stopError(cp.stop()))
		}
	}()
	creds, err := writeCredentials(dir)
	if err != nil {
		return nil, fmt.Errorf("writing the control plane's certificates: %w", err)
	}
	if err := cp.startEtcd(ctx, filepath.Join(assets, binaries.Etcd)); err != nil {
		return nil, err
	}
	if err := cp.startAPIServer(ctx, filepath.Join(assets, binaries.KubeAPIServer), creds, o); err != nil {
		return nil, err
	}
	return cp, nil
}

func (cp *controlPlane) startEtcd(ctx context.Context, path string) error {
	ports, err := FreePorts(2)
	if err != nil {
		return err
	}
	client := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	cp.etcdURL, _ = url.Parse(client)
	args := []string{
		"--name=meshproof",
		"--data-dir=" + filepath.Join(cp.dir, "etcd"),
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=meshproof=" + peer,
		// The data is thrown away at the end; fsync would only slow the tests down.
		"--unsafe-no-fsync=true",
	}
	cp.etcd, err = proc.Start("etcd", path, args, proc.WithStopTimeout(stopTimeout))
	if err != nil {
		return err
	}
	return waitServing(ctx, cp.etcd, http.DefaultClient, client+"/health")
}

type credentials struct {
	servingCA, clientCert, clientKey []byte
}

func (cp *controlPlane) startAPIServer(ctx context.Context, path string, creds *credentials, o *options) error {
	ports, err := FreePorts(1)
	if err != nil {
		return err
	}
	host := "https://127.0.0.1:" + strconv.Itoa(ports[0])
	file := func(name string) string { return filepath.Join(cp.dir, name) }
	admission := "--disable-admission-plugins=ServiceAccount"
	if o.serviceAccountAdmission {
		admission = "--enable-admission-plugins=ServiceAccount"
	}
	args := []string{
		"--etcd-servers=" + cp.etcdURL.String(),
		"--bind-address=127.0.0.1",
		// The API server would advertise the machine's address in the kubernetes
		// Service's endpoints; nothing here may be reached beyond 127.0.0.1, and
		// the endpoint reconciler refuses a loopback address, so it is off.
		"--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(ports[0]),
		"--cert-dir=" + cp.dir,
		"--tls-cert-file=" + file(servingCertFile),
		"--tls-private-key-file=" + file(servingKeyFile),
		"--client-ca-file=" + file(clientCAFile),
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
		"--service-account-issuer=" + host + "/",
		"--service-account-key-file=" + file(saPubFile),
		"--service-account-signing-key-file=" + file(saKeyFile),
		admission,
	}
	cp.apiServer, err = proc.Start("kube-apiserver", path, args, proc.WithStopTimeout(stopTimeout))
	if err != nil {
		return err
	}
	cp.config = &rest.Config{
		Host: host,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   creds.servingCA,
			CertData: creds.clientCert,
			KeyData:  creds.clientKey,
		},
		// The default 5 QPS throttles tests that create many objects.
		QPS:   100,
		Burst: 200,
	}
	transport, err := rest.TransportFor(cp.config)
	if err != nil {
		return err
	}
	if err := waitServing(ctx, cp.apiServer, &http.Client{Transport: transport}, host+"/readyz"); err != nil {
		return err
	}
	cp.kubeconfig, cp.servingCAFile, cp.saKeyFile = file(kubeconfigFile), file(servingCAFile), file(saKeyFile)
	return writeKubeconfig(cp.kubeconfig, cp.config)
}

// waitServing waits until url answers 200, failing early with the process's
// last output when it exits first.
func waitServing(ctx context.Context, p *proc.Process, client *http.Client, url string) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, startTimeout, true, func(ctx context.Context) (bool, error) {
		if err := p.ExitError(); err != nil {
			return false, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := client.Do(req)
		if err != nil {
			last = err
			return false, nil
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			last = fmt.Errorf("%s answered %s", url, resp.Status)
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("%s did not serve %s within %s: %w (last: %v)\n%s's last output:\n%s", p.Name(), url, startTimeout, err, last, p.Name(), p.Tail())
	}
	return nil
}

// stop stops kube-apiserver before etcd: an API server whose etcd is gone was
// seen ignoring SIGTERM for over 20 s. Each is escalated to SIGKILL after
// stopTimeout. The directory goes last.
func (cp *controlPlane) stop() error {
	var errs []error
	for _, p := range []*proc.Process{cp.apiServer, cp.etcd} {
		if p != nil {
			errs = append(errs, p.Stop())
		}
	}
	errs = append(errs, os.RemoveAll(cp.dir))
	return errors.Join(errs...)
}

// FreePorts finds n distinct free ports on 127.0.0.1 for the local stack's
// servers, holding them all open until every one is found so that none
// repeats. They are picked at random below Linux's default ephemeral range
// (32768-60999), where the kernel never puts the local end of an outgoing
// connection: a port from the ephemeral range, closed here and bound by the
// server a moment later, could meanwhile be taken by any of the machine's
// outgoing connections (CI: istiod's "bind: address already in use" while
// other tests ran). Each port is claimed first (claimPort), so that no
// other local stack, in this process or another meshproof process, is
// handed it too. Ports taken or claimed are skipped; when none is found
// in portTries, the kernel picks one.
func FreePorts(n int) ([]int, error) {
	var ports []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for range n {
		var l net.Listener
		for range portTries {
			port := lowPortMin + mathrand.IntN(lowPortMax-lowPortMin)
			if !claimPort(port) {
				continue
			}
			if c, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
				l = c
				break
			}
		}
		if l == nil {
			c, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, fmt.Errorf("finding a free port on 127.0.0.1: %w", err)
			}
			l = c
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// The range FreePorts picks from, and how many ports it tries there.
const (
	lowPortMin = 20000
	lowPortMax = 32768
	portTries  = 64
)

// writeCredentials writes a serving certificate for 127.0.0.1 and localhost, a
// client CA with an admin client certificate, and the service-account key pair.
func writeCredentials(dir string) (*credentials, error) {
	now := time.Now()
	servingCA, servingCAKey, err := newCA("meshproof-testenv-serving-ca", now)
	if err != nil {
		return nil, err
	}
	clientCA, clientCAKey, err := newCA("meshproof-testenv-client-ca", now)
	if err != nil {
		return nil, err
	}
	serving, servingKey, err := newLeaf(servingCA, servingCAKey, now, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, err
	}
	admin, adminKey, err := newLeaf(clientCA, clientCAKey, now, &x509.Certificate{
		Subject:     pkix.Name{CommonName: adminUser, Organization: []string{adminGroup}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	servingKeyPEM, err := keyPEM(servingKey)
	if err != nil {
		return nil, err
	}
	adminKeyPEM, err := keyPEM(adminKey)
	if err != nil {
		return nil, err
	}
	saKeyPEM, err := keyPEM(saKey)
	if err != nil {
		return nil, err
	}
	creds := &credentials{servingCA: certPEM(servingCA), clientCert: certPEM(admin), clientKey: adminKeyPEM}
	for name, data := range map[string][]byte{
		servingCertFile: certPEM(serving),
		servingKeyFile:  servingKeyPEM,
		servingCAFile:   creds.servingCA,
		clientCAFile:    certPEM(clientCA),
		saKeyFile:       saKeyPEM,
		saPubFile:       pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	return creds, nil
}

func newCA(name string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	return newCert(nil, nil, now, &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	})
}

func newLeaf(ca *x509.Certificate, caKey crypto.Signer, now time.Time, template *x509.Certificate) (*x509.Certificate, crypto.Signer, error) {
	template.KeyUsage = x509.KeyUsageDigitalSignature
	return newCert(ca, caKey, now, template)
}

// newCert signs template with caKey, or self-signs it when ca is nil. The
// certificates live as long as a test run could.
func newCert(ca *x509.Certificate, caKey crypto.Signer, now time.Time, template *x509.Certificate) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	template.SerialNumber = serial
	template.NotBefore = now.Add(-time.Hour)
	template.NotAfter = now.Add(7 * 24 * time.Hour)
	parent, signer := ca, caKey
	if ca == nil {
		parent, signer = template, key
	}
	der, err := x509.CreateCertificate(rand.Reader, template, parent, key.Public(), signer)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func keyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// writeKubeconfig writes cfg as a kubeconfig file for the processes of a
// local cluster (and for a person debugging a test).
func writeKubeconfig(path string, cfg *rest.Config) error {
	const name = KubeconfigContext
	kubeconfig := clientcmdapi.NewConfig()
	kubeconfig.Clusters[name] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kubeconfig.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kubeconfig.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	kubeconfig.CurrentContext = name
	return clientcmd.WriteToFile(*kubeconfig, path)
}
