package xds

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// The same content decodes once: a second Any with equal bytes gets the
// very message the first one gave, equal to what UnmarshalTo gives.
func TestUnpackSharesOneMessagePerContent(t *testing.T) {
	hcm := &hcmv3.HttpConnectionManager{StatPrefix: "memo-test-" + t.Name()}
	first, err := Unpack[*hcmv3.HttpConnectionManager](mustAny(t, hcm))
	if err != nil {
		t.Fatal(err)
	}
	second, err := Unpack[*hcmv3.HttpConnectionManager](mustAny(t, hcm))
	if err != nil {
		t.Fatal(err)
	}
	if first != second {
		t.Error("equal content decoded twice")
	}
	if !proto.Equal(first, hcm) {
		t.Errorf("Unpack gave %v, want %v", first, hcm)
	}
	other, err := Unpack[*hcmv3.HttpConnectionManager](mustAny(t, &hcmv3.HttpConnectionManager{StatPrefix: "other"}))
	if err != nil || other == first || other.GetStatPrefix() != "other" {
		t.Errorf("different content: %v, %v", other, err)
	}
	if _, err := Unpack[*clusterv3.Cluster](mustAny(t, hcm)); err == nil || !strings.Contains(err.Error(), "mismatched message type") {
		t.Errorf("a cluster from a connection manager's Any: %v", err)
	}
	bad := &anypb.Any{TypeUrl: hcmType, Value: []byte{0xff}}
	for range 2 {
		if _, err := Unpack[*hcmv3.HttpConnectionManager](bad); err == nil {
			t.Error("undecodable bytes decoded")
		}
	}
}

// decode validates as Decode does, from the memo too: a listener that
// breaks a constraint is refused every time, a valid one is shared.
func TestDecodeFromTheMemoStillValidates(t *testing.T) {
	invalid := mustAny(t, &listenerv3.Listener{Name: "l", FilterChains: []*listenerv3.FilterChain{{
		Filters: []*listenerv3.Filter{{Name: ""}}, // name: min_len 1
	}}})
	for range 2 {
		if _, _, err := decode[*listenerv3.Listener](invalid); err == nil || !strings.Contains(err.Error(), "validation") {
			t.Errorf("an invalid listener: %v", err)
		}
	}
	valid := mustAny(t, &listenerv3.Listener{Name: "memo-valid"})
	a, _, err := decode[*listenerv3.Listener](valid)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := decode[*listenerv3.Listener](valid)
	if err != nil || a != b || a.GetName() != "memo-valid" {
		t.Errorf("a valid listener decoded as %v and %v (%v)", a, b, err)
	}
}
