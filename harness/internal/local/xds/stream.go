package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
)

// Protocol is the variant of the aggregated discovery service a stream
// speaks (Envoy's docs, "xDS REST and gRPC protocol": "Variants of the xDS
// Transport Protocol").
type Protocol int

const (
	// StateOfTheWorld is StreamAggregatedResources: every response carries
	// the whole set of a type's resources, as Envoy's sidecar speaks it
	// (Istio's bootstrap: ads_config api_type GRPC).
	StateOfTheWorld Protocol = iota
	// Incremental is DeltaAggregatedResources: responses carry what changed
	// and what was removed, as ztunnel speaks it.
	Incremental
)

func (p Protocol) String() string {
	if p == Incremental {
		return "delta"
	}
	return "sotw"
}

// Subscription is one resource type a handler wants and, for a
// state-of-the-world stream, which of its resources: nil Names is a
// wildcard subscription (every resource of the type, as Envoy asks for
// listeners and clusters).
type Subscription struct {
	TypeURL string
	Names   []string
}

// Resource is one resource of a response: Name and Version only for the
// incremental protocol (a state-of-the-world resource names itself in its
// body).
type Resource struct {
	Name    string
	Version string
	Body    *anypb.Any
}

// Response is one response of the server, as the stream received it.
type Response struct {
	Protocol Protocol
	TypeURL  string
	// Version is the response's version_info (state of the world) or its
	// system_version_info (incremental).
	Version string
	Nonce   string
	// Received is when the response arrived.
	Received time.Time
	// Resources are the whole set of the type (state of the world), or the
	// added and changed ones (incremental).
	Resources []Resource
	// Removed are the names an incremental response removes.
	Removed []string
}

// Handler is the client side of a stream's resources: what it subscribes
// to, and what it makes of each response.
type Handler interface {
	// Subscriptions are the types and names the client wants now, in the
	// order they are first requested. The stream asks for them when it
	// opens and after every response, sending a request for each type
	// that is new or whose names changed.
	Subscriptions() []Subscription
	// Handle applies one response. An error rejects it: the stream NACKs
	// it with the error's text as error_detail, and the handler must have
	// left its state as it was (Envoy keeps the last accepted
	// configuration).
	Handle(Response) error
}

// Stream is one aggregated discovery stream to an xDS server, kept open:
// when it breaks (istiod restarts, as istiod pods do in a rehearsal) it is
// opened again after a back-off, with the handler's subscriptions and, for
// the state of the world, the versions last accepted, as Envoy reconnects.
type Stream struct {
	address  string
	node     *corev3.Node
	protocol Protocol
	handler  Handler
	logger   *slog.Logger
	dialOpts []grpc.DialOption
	backoff  time.Duration

	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	status StreamStatus
}

// StreamStatus is what a stream has done so far.
type StreamStatus struct {
	// Connected is whether a stream is open now.
	Connected bool
	// Opened counts the streams opened (1 + reconnections).
	Opened int
	// Responses counts the responses received, ACKed and NACKed.
	Responses, ACKs, NACKs int
	// LastError is why the last stream ended, if one did.
	LastError string
}

// StreamOption configures a Stream.
type StreamOption func(*Stream)

// WithLogger receives the stream's connects, disconnects and NACKs
// (default: none).
func WithLogger(l *slog.Logger) StreamOption { return func(s *Stream) { s.logger = l } }

// WithReconnectBackoff sets the first pause before a broken stream is
// opened again; it doubles up to 16 times that (default 200ms).
func WithReconnectBackoff(d time.Duration) StreamOption { return func(s *Stream) { s.backoff = d } }

// NewStream returns a stream of protocol to the xDS server at address
// (host:port) as node, for handler. Start opens it.
func NewStream(address string, node *corev3.Node, protocol Protocol, handler Handler, opts ...StreamOption) *Stream {
	s := &Stream{
		address: address, node: node, protocol: protocol, handler: handler,
		logger:   slog.New(slog.DiscardHandler),
		dialOpts: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		backoff:  200 * time.Millisecond,
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Start opens the stream and keeps it open until Stop or ctx ends.
func (s *Stream) Start(ctx context.Context) error {
	if s.done != nil {
		return errors.New("xds: stream already started")
	}
	conn, err := grpc.NewClient(s.address, s.dialOpts...)
	if err != nil {
		return fmt.Errorf("xds: a client for %s: %w", s.address, err)
	}
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		defer conn.Close()
		s.run(ctx, conn)
	}()
	return nil
}

// Stop closes the stream and waits until its goroutine has ended.
func (s *Stream) Stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	<-s.done
}

// Status is what the stream has done so far.
func (s *Stream) Status() StreamStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

func (s *Stream) update(f func(*StreamStatus)) {
	s.mu.Lock()
	f(&s.status)
	s.mu.Unlock()
}

// run opens streams until ctx ends, pausing between attempts.
func (s *Stream) run(ctx context.Context, conn *grpc.ClientConn) {
	client := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	pause := s.backoff
	// versions are the versions last accepted per type (state of the
	// world), sent again on a new stream as Envoy does, so the server
	// knows what the client holds.
	versions := map[string]string{}
	// known are the resources held per type (incremental), announced in
	// initial_resource_versions on a new stream.
	known := map[string]map[string]string{}
	opened := 0
	for {
		start := time.Now()
		var err error
		if s.protocol == Incremental {
			err = s.delta(ctx, client, known)
		} else {
			err = s.sotw(ctx, client, versions)
		}
		s.update(func(st *StreamStatus) {
			st.Connected = false
			if err != nil {
				st.LastError = err.Error()
			}
		})
		if ctx.Err() != nil {
			return
		}
		// A stream that was open is news; the redials while the server is
		// away are not, nor is a server that stopped gracefully (istiod
		// restarted or replaced, as in a root rotation or an upgrade: a
		// GOAWAY with "graceful_stop"), which Envoy also just redials.
		log := s.logger.Debug
		if s.Status().Opened > opened && (err == nil || !strings.Contains(err.Error(), "graceful_stop")) {
			log = s.logger.Info
		}
		opened = s.Status().Opened
		log("xds stream ended; reopening", "address", s.address, "node", s.node.GetId(), "error", err, "after", pause)
		if time.Since(start) > 16*s.backoff {
			pause = s.backoff // it had been up a while: start over
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, 16*s.backoff)
	}
}

// sent is what a stream last requested of one type.
type sent struct {
	names    []string
	wildcard bool
}

func (a sent) same(b Subscription) bool {
	return a.wildcard == (b.Names == nil) && slices.Equal(a.names, b.Names)
}

// sotw runs one state-of-the-world stream until it breaks.
func (s *Stream) sotw(ctx context.Context, client discoveryv3.AggregatedDiscoveryServiceClient, versions map[string]string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	s.update(func(st *StreamStatus) { st.Connected = true; st.Opened++ })
	s.logger.Debug("xds stream open", "address", s.address, "node", s.node.GetId(), "protocol", s.protocol)
	requested := map[string]sent{}
	nonces := map[string]string{}
	first := true
	send := func(req *discoveryv3.DiscoveryRequest) error {
		if first {
			// Envoy sends its node on the first request of a stream only
			// (Istio's bootstrap sets set_node_on_first_message_only).
			req.Node, first = s.node, false
		}
		return stream.Send(req)
	}
	// subscribe sends a request for every type that is new or changed.
	subscribe := func() error {
		for _, sub := range s.handler.Subscriptions() {
			if prev, ok := requested[sub.TypeURL]; ok && prev.same(sub) {
				continue
			}
			requested[sub.TypeURL] = sent{names: slices.Clone(sub.Names), wildcard: sub.Names == nil}
			if err := send(&discoveryv3.DiscoveryRequest{
				TypeUrl: sub.TypeURL, ResourceNames: sub.Names,
				VersionInfo: versions[sub.TypeURL], ResponseNonce: nonces[sub.TypeURL],
			}); err != nil {
				return err
			}
		}
		return nil
	}
	if err := subscribe(); err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		r := Response{Protocol: StateOfTheWorld, TypeURL: resp.GetTypeUrl(), Version: resp.GetVersionInfo(), Nonce: resp.GetNonce(), Received: time.Now()}
		for _, a := range resp.GetResources() {
			r.Resources = append(r.Resources, Resource{Body: a})
		}
		nonces[r.TypeURL] = r.Nonce
		herr := s.handler.Handle(r)
		// The ACK or NACK carries the names wanted now: a response may
		// change them (new clusters need their endpoints), as Envoy's
		// next request of the type does.
		for _, sub := range s.handler.Subscriptions() {
			if sub.TypeURL == r.TypeURL {
				requested[r.TypeURL] = sent{names: slices.Clone(sub.Names), wildcard: sub.Names == nil}
			}
		}
		req := &discoveryv3.DiscoveryRequest{TypeUrl: r.TypeURL, ResponseNonce: r.Nonce, ResourceNames: requested[r.TypeURL].names}
		if herr == nil {
			versions[r.TypeURL] = r.Version
		} else {
			s.logger.Warn("xds NACK", "node", s.node.GetId(), "type", r.TypeURL, "version", r.Version, "error", herr)
			req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: herr.Error()}
		}
		// An ACK repeats the version accepted; a NACK the one still held.
		req.VersionInfo = versions[r.TypeURL]
		s.update(func(st *StreamStatus) {
			st.Responses++
			if herr == nil {
				st.ACKs++
			} else {
				st.NACKs++
			}
		})
		if err := send(req); err != nil {
			return err
		}
		if err := subscribe(); err != nil {
			return err
		}
	}
}

// delta runs one incremental stream until it breaks.
func (s *Stream) delta(ctx context.Context, client discoveryv3.AggregatedDiscoveryServiceClient, known map[string]map[string]string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	s.update(func(st *StreamStatus) { st.Connected = true; st.Opened++ })
	s.logger.Debug("xds stream open", "address", s.address, "node", s.node.GetId(), "protocol", s.protocol)
	requested := map[string]sent{}
	first := true
	send := func(req *discoveryv3.DeltaDiscoveryRequest) error {
		if first {
			req.Node, first = s.node, false
		}
		return stream.Send(req)
	}
	subscribe := func() error {
		for _, sub := range s.handler.Subscriptions() {
			prev, ok := requested[sub.TypeURL]
			if ok && prev.same(sub) {
				continue
			}
			req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: sub.TypeURL}
			names := sub.Names
			if names == nil {
				names = []string{"*"} // the wildcard of the incremental protocol
			}
			var prevNames []string
			if ok {
				prevNames = prev.names
				if prev.wildcard {
					prevNames = []string{"*"}
				}
			}
			for _, n := range names {
				if !slices.Contains(prevNames, n) {
					req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, n)
				}
			}
			for _, n := range prevNames {
				if !slices.Contains(names, n) {
					req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, n)
				}
			}
			if !ok && len(known[sub.TypeURL]) > 0 {
				req.InitialResourceVersions = known[sub.TypeURL]
			}
			requested[sub.TypeURL] = sent{names: slices.Clone(sub.Names), wildcard: sub.Names == nil}
			if err := send(req); err != nil {
				return err
			}
		}
		return nil
	}
	if err := subscribe(); err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		r := Response{Protocol: Incremental, TypeURL: resp.GetTypeUrl(), Version: resp.GetSystemVersionInfo(), Nonce: resp.GetNonce(),
			Received: time.Now(), Removed: resp.GetRemovedResources()}
		for _, res := range resp.GetResources() {
			r.Resources = append(r.Resources, Resource{Name: res.GetName(), Version: res.GetVersion(), Body: res.GetResource()})
		}
		herr := s.handler.Handle(r)
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeURL, ResponseNonce: r.Nonce}
		if herr == nil {
			if known[r.TypeURL] == nil {
				known[r.TypeURL] = map[string]string{}
			}
			for _, res := range r.Resources {
				known[r.TypeURL][res.Name] = res.Version
			}
			for _, n := range r.Removed {
				delete(known[r.TypeURL], n)
			}
		} else {
			s.logger.Warn("xds NACK", "node", s.node.GetId(), "type", r.TypeURL, "version", r.Version, "error", herr)
			req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: herr.Error()}
		}
		s.update(func(st *StreamStatus) {
			st.Responses++
			if herr == nil {
				st.ACKs++
			} else {
				st.NACKs++
			}
		})
		if err := send(req); err != nil {
			return err
		}
		if err := subscribe(); err != nil {
			return err
		}
	}
}
