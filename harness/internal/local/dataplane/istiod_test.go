package dataplane_test

// IstiodCA against a stand-in for istiod's CA: an in-process gRPC server
// implementing IstioCertificateService that authenticates the bearer token
// with a TokenReview on the real test API server (audience istio-ca, as
// istiod does) and signs with a harness/internal/ca bundle. This is a test of the
// client alone; a real istiod is not part of it.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/meshproof/meshproof/harness/internal/ca"
	"github.com/meshproof/meshproof/harness/internal/local/dataplane"
)

type standInIstiod struct {
	pb.UnimplementedIstioCertificateServiceServer
	bundle *ca.Bundle
	// moreRoots are sent after the bundle's root in the last element, as
	// istiod sends its whole root-cert.pem during a multi-root rotation.
	moreRoots []*x509.Certificate

	mu       sync.Mutex
	clusters []string // ClusterID headers seen
	pods     []string // pods the tokens were bound to
}

func (s *standInIstiod) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	auth := md.Get("authorization")
	if len(auth) != 1 || !strings.HasPrefix(auth[0], "Bearer ") {
		return nil, status.Error(codes.Unauthenticated, "no bearer token")
	}
	review := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{
		Token: strings.TrimPrefix(auth[0], "Bearer "), Audiences: []string{"istio-ca"}}}
	if err := env.Client.Create(ctx, review); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if !review.Status.Authenticated {
		return nil, status.Error(codes.Unauthenticated, "token refused: "+review.Status.Error)
	}
	parts := strings.Split(review.Status.User.Username, ":") // system:serviceaccount:<ns>:<sa>
	if len(parts) != 4 || parts[1] != "serviceaccount" {
		return nil, status.Error(codes.Unauthenticated, "not a ServiceAccount: "+review.Status.User.Username)
	}
	block, _ := pem.Decode([]byte(req.GetCsr()))
	if block == nil {
		return nil, status.Error(codes.InvalidArgument, "no CSR")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	s.mu.Lock()
	s.clusters = append(s.clusters, md.Get("ClusterID")...)
	s.pods = append(s.pods, review.Status.User.Extra["authentication.kubernetes.io/pod-name"]...)
	s.mu.Unlock()
	// The identity is the token's, never the CSR's.
	id, _ := url.Parse(fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", parts[2], parts[3]))
	notBefore := time.Now().Add(-2 * time.Minute)
	leaf, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), NotBefore: notBefore,
		NotAfter: notBefore.Add(2*time.Minute + time.Duration(req.GetValidityDuration())*time.Second),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs: []*url.URL{id},
	}, s.bundle.Intermediate, csr.PublicKey, s.bundle.IntermediateKey.Signer())
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	var chain []string
	for _, der := range [][]byte{leaf, s.bundle.Intermediate.Raw} {
		chain = append(chain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	}
	// The roots come as one element, the last, never flattened.
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.bundle.Root.Raw})
	for _, r := range s.moreRoots {
		rootPEM = append(rootPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	return &pb.IstioCertificateResponse{CertChain: append(chain, string(rootPEM))}, nil
}

// serveStandIn starts the stand-in on 127.0.0.1 with a serving certificate
// for 127.0.0.1 from bundle, and returns its address.
func serveStandIn(t *testing.T, s *standInIstiod) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}, s.bundle.Intermediate, key.Public(), s.bundle.IntermediateKey.Signer())
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der, s.bundle.Intermediate.Raw}, PrivateKey: key}}})))
	pb.RegisterIstioCertificateServiceServer(srv, s)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func TestIstiodCAIssuesForThePodsServiceAccount(t *testing.T) {
	ns := namespaceFor(t)
	fx := standardFixtures(8)
	deploy(t, ns, fx...)
	bundle, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	istiod := &standInIstiod{bundle: bundle}
	addr := serveStandIn(t, istiod)
	roots := x509.NewCertPool()
	roots.AddCert(bundle.Root)
	c, err := dataplane.NewIstiodCA(env.Client, addr, roots)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })

	ctx := context.Background()
	var pod corev1.Pod
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "service-b-0"}, &pod); err != nil {
		t.Fatal(err)
	}
	certs, err := c.Issue(ctx, &pod, 90*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ca.VerifyWorkloadChain(certs.Chain, certs.Roots...)
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://cluster.local/ns/" + ns + "/sa/service-b"; id != want {
		t.Errorf("identity %s, want %s", id, want)
	}
	if !certs.Roots[0].Equal(bundle.Root) {
		t.Error("the trust anchor is not the CA's root")
	}
	if got := certs.Leaf().NotAfter.Sub(certs.Issued); got < 80*time.Second || got > 100*time.Second {
		t.Errorf("valid %s after issuance, want the 90s asked", got)
	}
	istiod.mu.Lock()
	if fmt.Sprint(istiod.clusters) != "[Kubernetes]" || fmt.Sprint(istiod.pods) != "[service-b-0]" {
		t.Errorf("istiod saw ClusterID %v and tokens bound to %v, want [Kubernetes] and [service-b-0]", istiod.clusters, istiod.pods)
	}
	istiod.mu.Unlock()

	// The engine over the transport a run would use, certificates from the
	// same CA.
	s := suite(t, ns, `  - expect:
    - {from: service-a, to: service-b, port: 8080, result: mtls}
`)
	dp, err := dataplane.IstiodTransport(addr, roots, nil)(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	errs, rec := runWith(t, s, dp)
	if errs[0] != nil {
		t.Fatal(errs[0])
	}
	if o := rec.last(t, "service-a", "service-b", 8080); o.ClientID != "spiffe://cluster.local/ns/"+ns+"/sa/service-a" {
		t.Errorf("client identity %q", o.ClientID)
	}

	// istiod's serving certificate from another CA is refused.
	other, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	wrong := x509.NewCertPool()
	wrong.AddCert(other.Root)
	bad, err := dataplane.NewIstiodCA(env.Client, addr, wrong)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bad.Close() })
	if _, err := bad.Issue(ctx, &pod, time.Minute); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a client not trusting istiod's certificate got %v, want a TLS failure", err)
	}
}

// During a multi-root rotation istiod's last element holds every root of
// its root-cert.pem; the sidecar trusts them all, as istio-agent does, so
// a peer whose certificate chains to either root is trusted.
func TestIstiodCATrustsEveryRootOfTheLastElement(t *testing.T) {
	ns := namespaceFor(t)
	deploy(t, ns, standardFixtures(8)...)
	old, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	next, err := ca.Generate()
	if err != nil {
		t.Fatal(err)
	}
	addr := serveStandIn(t, &standInIstiod{bundle: old, moreRoots: []*x509.Certificate{next.Root}})
	roots := x509.NewCertPool()
	roots.AddCert(old.Root)
	c, err := dataplane.NewIstiodCA(env.Client, addr, roots)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	var pod corev1.Pod
	if err := env.Client.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "service-a-0"}, &pod); err != nil {
		t.Fatal(err)
	}
	certs, err := c.Issue(t.Context(), &pod, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(certs.Roots) != 2 || !certs.Roots[0].Equal(old.Root) || !certs.Roots[1].Equal(next.Root) {
		t.Fatalf("ROOTCA holds %d certificates, want the old and the new root", len(certs.Roots))
	}
	if _, err := ca.VerifyWorkloadChain(certs.Chain, certs.Roots...); err != nil {
		t.Errorf("the sidecar's own chain: %v", err)
	}
}
