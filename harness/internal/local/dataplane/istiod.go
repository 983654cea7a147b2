package dataplane

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/probe"
)

// IstiodCA is a CertSource that asks istiod's CA for every certificate, as
// istio-agent does (security/pkg/nodeagent/caclient/providers/citadel):
// IstioCertificateService/CreateCertificate over TLS verified against the
// mesh's root, authorised by a ServiceAccount token for the pod with
// audience istio-ca, the cluster's ID in the ClusterID header, the TTL as
// validity. istiod decides the identity from the token; the CSR's SAN is
// only a request.
type IstiodCA struct {
	kube        client.Client
	conn        *grpc.ClientConn
	svc         pb.IstioCertificateServiceClient
	clusterID   string
	trustDomain string
}

var _ CertSource = (*IstiodCA)(nil)

// IstiodOption configures an IstiodCA.
type IstiodOption func(*IstiodCA)

// tokenAudience is the audience istiod's CA accepts tokens for.
const tokenAudience = "istio-ca"

// tokenLifetime is asked of every TokenRequest: the API server's minimum.
const tokenLifetime = 10 * time.Minute

// NewIstiodCA connects to istiod's secure gRPC address (host:port of
// --secureGRPCAddr), trusting only roots for its serving certificate, and
// uses kube for the TokenRequests. Close releases the connection.
func NewIstiodCA(kube client.Client, addr string, roots *x509.CertPool, opts ...IstiodOption) (*IstiodCA, error) {
	c := &IstiodCA{kube: kube, clusterID: "Kubernetes", trustDomain: "cluster.local"}
	for _, o := range opts {
		o(c)
	}
	host := addr
	if i := strings.LastIndex(addr, ":"); i > 0 {
		host = strings.Trim(addr[:i], "[]")
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("istiod CA at %s: %w", addr, err)
	}
	c.conn, c.svc = conn, pb.NewIstioCertificateServiceClient(conn)
	return c, nil
}

// Close closes the connection to istiod.
func (c *IstiodCA) Close() error { return c.conn.Close() }

// Issue asks istiod for a certificate for pod's ServiceAccount, valid ttl.
// The chain istiod returns is the workload chain ("default"); its last
// element, the mesh's roots, is the trust anchor ("ROOTCA"), as istio-agent
// keeps them.
func (c *IstiodCA) Issue(ctx context.Context, pod *corev1.Pod, ttl time.Duration) (*Certs, error) {
	token, err := c.token(ctx, pod)
	if err != nil {
		return nil, err
	}
	csr, err := c.csr(pod)
	if err != nil {
		return nil, err
	}
	req := &pb.IstioCertificateRequest{
		Csr:              string(csr),
		ValidityDuration: int64(ttl / time.Second),
		Metadata:         &structpb.Struct{Fields: map[string]*structpb.Value{"CertSigner": structpb.NewStringValue("")}},
	}
	md := metadata.Pairs("ClusterID", c.clusterID, "authorization", "Bearer "+token)
	issued := time.Now()
	resp, err := c.svc.CreateCertificate(metadata.NewOutgoingContext(ctx, md), req)
	if err != nil {
		return nil, fmt.Errorf("istiod CreateCertificate for %s/%s: %w", pod.Namespace, serviceAccount(pod), err)
	}
	return chainOf(resp.GetCertChain(), issued, pod.Namespace+"/"+serviceAccount(pod))
}

// ImpersonatedIdentity is the CSR metadata key ztunnel sets to ask for a
// certificate of a workload it serves (istio.io/istio pkg/security
// ImpersonatedIdentity; ztunnel src/identity/caclient.rs).
const ImpersonatedIdentity = "ImpersonatedIdentity"

// IssueFor asks istiod for a certificate for workload's identity as
// ztunnel does: authorised by a token of the ztunnel pod's ServiceAccount
// bound to that pod, impersonating the workload's SPIFFE ID in the
// request's metadata. istiod's node authorizer allows it only to a
// ServiceAccount in CA_TRUSTED_NODE_ACCOUNTS (the istiod chart names
// ztunnel's) and only for an identity with a pod on the caller's node
// (security/pkg/server/ca/node_auth.go).
func (c *IstiodCA) IssueFor(ctx context.Context, ztunnelPod, workload *corev1.Pod, ttl time.Duration) (*Certs, error) {
	token, err := c.token(ctx, ztunnelPod)
	if err != nil {
		return nil, err
	}
	csr, err := c.csr(workload)
	if err != nil {
		return nil, err
	}
	id := fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", c.trustDomain, workload.Namespace, serviceAccount(workload))
	req := &pb.IstioCertificateRequest{
		Csr:              string(csr),
		ValidityDuration: int64(ttl / time.Second),
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			ImpersonatedIdentity: structpb.NewStringValue(id),
		}},
	}
	md := metadata.Pairs("ClusterID", c.clusterID, "authorization", "Bearer "+token)
	issued := time.Now()
	resp, err := c.svc.CreateCertificate(metadata.NewOutgoingContext(ctx, md), req)
	if err != nil {
		return nil, fmt.Errorf("istiod CreateCertificate for %s by ztunnel %s/%s: %w", id, ztunnelPod.Namespace, ztunnelPod.Name, err)
	}
	return chainOf(resp.GetCertChain(), issued, id)
}

// chainOf reads istiod's answer: the workload chain and, as its last
// element, the mesh's roots. istiod flattens the signed chain to one
// certificate per element but sends its whole root-cert.pem as the last
// element (several roots during a multi-root rotation); istio-agent's
// ROOTCA is that element (security/pkg/server/ca/server.go
// CreateCertificate, security/pkg/nodeagent/cache/secretcache.go
// generateNewSecret).
func chainOf(elems []string, issued time.Time, who string) (*Certs, error) {
	if len(elems) < 2 {
		return nil, fmt.Errorf("istiod CreateCertificate for %s: a chain of %d certificates, want the leaf and its root at least", who, len(elems))
	}
	var chain, roots []*x509.Certificate
	for i, p := range elems {
		certs, err := ca.ParseCertificatesPEM([]byte(p))
		if err != nil {
			return nil, fmt.Errorf("istiod's certificate %d: %w", i, err)
		}
		chain = append(chain, certs...)
		if i == len(elems)-1 {
			roots = certs
		}
	}
	return &Certs{Chain: chain, Roots: roots, Issued: issued}, nil
}

// token is a TokenRequest for the pod's ServiceAccount, bound to the pod,
// with istiod's audience: what the kubelet projects into istio-proxy.
func (c *IstiodCA) token(ctx context.Context, pod *corev1.Pod) (string, error) {
	sa := &corev1.ServiceAccount{}
	sa.Namespace, sa.Name = pod.Namespace, serviceAccount(pod)
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{tokenAudience},
		ExpirationSeconds: ptr(int64(tokenLifetime / time.Second)),
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if err := c.kube.SubResource("token").Create(ctx, sa, tr); err != nil {
		return "", fmt.Errorf("a token for ServiceAccount %s/%s: %w", sa.Namespace, sa.Name, err)
	}
	return tr.Status.Token, nil
}

// csr is the request istio-agent sends: a fresh P-256 key, the SPIFFE ID
// it expects as URI SAN. The key is dropped: nothing here speaks TLS.
func (c *IstiodCA) csr(pod *corev1.Pod) ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	id, err := url.Parse(fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", c.trustDomain, pod.Namespace, serviceAccount(pod)))
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, key)
	if err != nil {
		return nil, fmt.Errorf("a CSR for %s: %w", id, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// IstiodTransport is Transport with every sidecar's certificates from
// istiod's CA at addr (its --secureGRPCAddr), whose serving certificate
// must chain to roots. The gRPC connection is opened lazily and lives as
// long as the process: a run uses one Execer for its whole length.
func IstiodTransport(addr string, roots *x509.CertPool, caOpts []IstiodOption, opts ...Option) func(*rest.Config) (probe.Execer, error) {
	return func(cfg *rest.Config) (probe.Execer, error) {
		kube, err := newClient(cfg)
		if err != nil {
			return nil, err
		}
		certs, err := NewIstiodCA(kube, addr, roots, caOpts...)
		if err != nil {
			return nil, err
		}
		return New(kube, certs, opts...), nil
	}
}
