package xds

import (
	"crypto/sha256"
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshproof/meshproof/harness/internal/local/memo"
)

// Decoded messages are shared by content. istiod sends every sidecar of a
// namespace the same clusters, routes and most listeners, and each
// request the simulated Envoy decides unpacks the same typed
// configurations again. Decoding took a fifth of the rehearsal's own CPU
// in harness/rehearsal's TestDefaultScenariosPass, and its garbage much of
// the collector's share; with the memo (and envoy's memo of verified
// chains) that test's in-process CPU went from 31.4 to 19.4 CPU-seconds
// (pprof, one run each, same machine). A message from the memo is shared
// by every snapshot and evaluation that holds it: nobody may modify it, as
// nobody modifies a snapshot.
var shared = memo.New[memoKey, *decoded](memoGeneration)

// memoGeneration bounds the memo's generations (memo.Map): a run's
// workloads are sent a few hundred distinct resources.
const memoGeneration = 4096

// memoKey is a decoding's kind (Unpack's or Decode's, which also
// validates) with the SHA-256 of the Any's type URL and value.
type memoKey struct {
	validated bool
	sum       [sha256.Size]byte
}

// decoded is what a decoding gave: the message, the nested types it did
// not know (Decode) and its error.
type decoded struct {
	msg     proto.Message
	unknown []string
	err     error
}

func keyOf(a *anypb.Any, validated bool) memoKey {
	h := sha256.New()
	h.Write([]byte(a.GetTypeUrl()))
	h.Write([]byte{0})
	h.Write(a.GetValue())
	k := memoKey{validated: validated}
	h.Sum(k.sum[:0])
	return k
}

// load is the memo's decoding of k, made by decode when it has none. Two
// callers that miss at once both decode; the second result is kept.
func load(k memoKey, decode func() *decoded) *decoded {
	if d, ok := shared.Get(k); ok {
		return d
	}
	d := decode()
	shared.Put(k, d)
	return d
}

// Unpack is the message a holds, of type T, as Any.UnmarshalTo decodes it,
// decoded once per content and shared: the caller must not modify it.
func Unpack[T proto.Message](a *anypb.Any) (T, error) {
	var zero T
	mt := zero.ProtoReflect().Type()
	if !a.MessageIs(zero) {
		return zero, fmt.Errorf("mismatched message type: got %q, want %q", a.GetTypeUrl(), mt.Descriptor().FullName())
	}
	d := load(keyOf(a, false), func() *decoded {
		msg := mt.New().Interface()
		return &decoded{msg: msg, err: proto.Unmarshal(a.GetValue(), msg)}
	})
	if d.err != nil {
		return zero, d.err
	}
	return d.msg.(T), nil
}

// decode is Decode's result for a, of type T, from the memo: the message
// (shared; the caller must not modify it), the nested types it does not
// know, and why Envoy would reject it. On an error the message may be
// partial or nil; its getters still answer.
func decode[T proto.Message](a *anypb.Any) (T, []string, error) {
	var zero T
	d := load(keyOf(a, true), func() *decoded {
		msg := zero.ProtoReflect().Type().New().Interface()
		unknown, err := Decode(a, msg)
		return &decoded{msg: msg, unknown: unknown, err: err}
	})
	return d.msg.(T), d.unknown, d.err
}
