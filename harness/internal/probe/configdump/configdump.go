// Package configdump reads the SDS secrets out of an Envoy admin config
// dump (GET /config_dump?mask=dynamic_active_secrets), which is how the
// harness sees the certificates an Istio sidecar holds, and the
// certificates out of a ztunnel's config dump (its admin GET /config_dump,
// ztunnel.go), which is how it sees those an ambient workload's ztunnel
// holds. It depends on the standard library only.
package configdump

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
)

// The names Istio's agent gives the SDS secrets it serves to Envoy: the
// workload's own certificate chain and key, and the mesh's trusted roots.
const (
	WorkloadSecretName = "default"
	RootSecretName     = "ROOTCA"
)

// Type URLs of the messages read from the config dump.
const (
	SecretsConfigDumpType = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"
	TLSSecretType         = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
)

// Secret is one of Envoy's dynamic active SDS secrets, with its
// certificates parsed. Envoy redacts private keys in the dump, and this
// type has no field for one.
type Secret struct {
	Name string
	// VersionInfo and LastUpdated are as Envoy reports them (LastUpdated is
	// an RFC 3339 timestamp); either may be empty.
	VersionInfo string
	LastUpdated string
	// CertificateChain is tls_certificate.certificate_chain, leaf first.
	CertificateChain []*x509.Certificate
	// TrustedCA is validation_context.trusted_ca.
	TrustedCA []*x509.Certificate
}

// The config dump's JSON, as much of it as this package reads. Envoy
// prints protobuf JSON with the proto field names (snake_case); the
// lowerCamelCase JSON names are accepted too because protobuf JSON allows
// either. Every other field is ignored, so dumps from newer Envoys parse.
type configDump struct {
	Configs []json.RawMessage `json:"configs"`
}

type typedConfig struct {
	Type string `json:"@type"`
}

type secretsConfigDump struct {
	DynamicActiveSecrets      []dynamicSecret `json:"dynamic_active_secrets"`
	DynamicActiveSecretsCamel []dynamicSecret `json:"dynamicActiveSecrets"`
}

type dynamicSecret struct {
	Name             string     `json:"name"`
	VersionInfo      string     `json:"version_info"`
	VersionInfoCamel string     `json:"versionInfo"`
	LastUpdated      string     `json:"last_updated"`
	LastUpdatedCamel string     `json:"lastUpdated"`
	Secret           *tlsSecret `json:"secret"`
}

type tlsSecret struct {
	Type                   string             `json:"@type"`
	Name                   string             `json:"name"`
	TLSCertificate         *tlsCertificate    `json:"tls_certificate"`
	TLSCertificateCamel    *tlsCertificate    `json:"tlsCertificate"`
	ValidationContext      *validationContext `json:"validation_context"`
	ValidationContextCamel *validationContext `json:"validationContext"`
}

type tlsCertificate struct {
	CertificateChain      *dataSource `json:"certificate_chain"`
	CertificateChainCamel *dataSource `json:"certificateChain"`
	// private_key is deliberately not decoded: Envoy prints "[redacted]",
	// and the harness has no use for a key even if it were there.
}

type validationContext struct {
	TrustedCA      *dataSource `json:"trusted_ca"`
	TrustedCACamel *dataSource `json:"trustedCa"`
}

// dataSource is envoy.config.core.v3.DataSource, a oneof.
type dataSource struct {
	InlineBytes       *string `json:"inline_bytes"`
	InlineBytesCamel  *string `json:"inlineBytes"`
	InlineString      *string `json:"inline_string"`
	InlineStringCamel *string `json:"inlineString"`
	Filename          *string `json:"filename"`
	EnvVar            *string `json:"environment_variable"`
	EnvVarCamel       *string `json:"environmentVariable"`
}

func firstNonNil[T any](ps ...*T) *T {
	for _, p := range ps {
		if p != nil {
			return p
		}
	}
	return nil
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// pemBytes returns the PEM the data source holds inline. inline_bytes is
// base64 in protobuf JSON; protobuf parsers accept the URL-safe alphabet
// and missing padding as well, so this does too.
func (d *dataSource) pemBytes() ([]byte, error) {
	if b := firstNonNil(d.InlineBytes, d.InlineBytesCamel); b != nil {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
			if data, err := enc.DecodeString(*b); err == nil {
				return data, nil
			}
		}
		return nil, errors.New("inline_bytes is not base64")
	}
	if s := firstNonNil(d.InlineString, d.InlineStringCamel); s != nil {
		return []byte(*s), nil
	}
	if f := d.Filename; f != nil {
		return nil, fmt.Errorf("the certificates are in file %q on the proxy, not inline", *f)
	}
	if e := firstNonNil(d.EnvVar, d.EnvVarCamel); e != nil {
		return nil, fmt.Errorf("the certificates are in environment variable %q of the proxy, not inline", *e)
	}
	return nil, errors.New("empty data source")
}

func parseDataSource(d *dataSource) ([]*x509.Certificate, error) {
	if d == nil {
		return nil, nil
	}
	data, err := d.pemBytes()
	if err != nil {
		return nil, err
	}
	return parseCertificatesPEM(data)
}

// parseCertificatesPEM parses every CERTIFICATE block in data, in order. A
// block of another type is an error, so that a key where certificates
// belong is noticed (harness/internal/ca has the same function, but importing it
// would pull the Kubernetes client into this parser and its fuzzing).
func parseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q, want CERTIFICATE", len(certs)+1, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return certs, nil
}

// Parse reads the dynamic active secrets out of an Envoy admin
// config dump (GET /config_dump, typically with
// ?mask=dynamic_active_secrets) and returns them by name. Configs of other
// types are skipped. A secret whose certificates cannot be parsed is an
// error naming it; a dump with no SecretsConfigDump at all is an error
// too, because it is not what the caller asked Envoy for.
func Parse(data []byte) (map[string]Secret, error) {
	var dump configDump
	if err := json.Unmarshal(data, &dump); err != nil {
		return nil, fmt.Errorf("cannot read the envoy config dump as JSON: %w (starts %.80q)", err, data)
	}
	secrets := map[string]Secret{}
	found := false
	for i, raw := range dump.Configs {
		var tc typedConfig
		if err := json.Unmarshal(raw, &tc); err != nil {
			return nil, fmt.Errorf("envoy config dump: configs[%d]: %w", i, err)
		}
		if tc.Type != SecretsConfigDumpType {
			continue
		}
		found = true
		var scd secretsConfigDump
		if err := json.Unmarshal(raw, &scd); err != nil {
			return nil, fmt.Errorf("envoy config dump: configs[%d] (SecretsConfigDump): %w", i, err)
		}
		active := scd.DynamicActiveSecrets
		if len(active) == 0 {
			active = scd.DynamicActiveSecretsCamel
		}
		for j, ds := range active {
			s, err := ds.parse()
			if err != nil {
				return nil, fmt.Errorf("envoy config dump: dynamic active secret %d (%q): %w", j, ds.Name, err)
			}
			if _, dup := secrets[s.Name]; dup {
				return nil, fmt.Errorf("envoy config dump: dynamic active secret %q appears twice", s.Name)
			}
			secrets[s.Name] = s
		}
	}
	if !found {
		return nil, fmt.Errorf("envoy config dump has no %s among its %d configs", SecretsConfigDumpType, len(dump.Configs))
	}
	return secrets, nil
}

func (ds dynamicSecret) parse() (Secret, error) {
	s := Secret{
		Name:        ds.Name,
		VersionInfo: firstNonEmpty(ds.VersionInfo, ds.VersionInfoCamel),
		LastUpdated: firstNonEmpty(ds.LastUpdated, ds.LastUpdatedCamel),
	}
	if s.Name == "" && ds.Secret != nil {
		s.Name = ds.Secret.Name
	}
	if s.Name == "" {
		return s, errors.New("secret has no name")
	}
	if ds.Secret == nil {
		return s, nil
	}
	if t := ds.Secret.Type; t != "" && t != TLSSecretType {
		return s, fmt.Errorf("secret is a %s, want %s", t, TLSSecretType)
	}
	var err error
	if tc := firstNonNil(ds.Secret.TLSCertificate, ds.Secret.TLSCertificateCamel); tc != nil {
		if s.CertificateChain, err = parseDataSource(firstNonNil(tc.CertificateChain, tc.CertificateChainCamel)); err != nil {
			return s, fmt.Errorf("tls_certificate.certificate_chain: %w", err)
		}
	}
	if vc := firstNonNil(ds.Secret.ValidationContext, ds.Secret.ValidationContextCamel); vc != nil {
		if s.TrustedCA, err = parseDataSource(firstNonNil(vc.TrustedCA, vc.TrustedCACamel)); err != nil {
			return s, fmt.Errorf("validation_context.trusted_ca: %w", err)
		}
	}
	return s, nil
}

// Render prints secrets as Envoy's admin endpoint does for
// /config_dump?mask=dynamic_active_secrets: one SecretsConfigDump, proto
// field names, PEM as base64 inline_bytes, and a private key shown as
// "[redacted]" beside every certificate chain. It is Parse's inverse, for
// tests and fake sidecars.
func Render(secrets ...Secret) ([]byte, error) {
	type dataSource struct {
		InlineBytes []byte `json:"inline_bytes"` // base64, as protobuf JSON
	}
	type tlsCertificate struct {
		CertificateChain dataSource `json:"certificate_chain"`
		PrivateKey       dataSource `json:"private_key"`
	}
	type validationContext struct {
		TrustedCA dataSource `json:"trusted_ca"`
	}
	type secret struct {
		Type              string             `json:"@type"`
		Name              string             `json:"name"`
		TLSCertificate    *tlsCertificate    `json:"tls_certificate,omitempty"`
		ValidationContext *validationContext `json:"validation_context,omitempty"`
	}
	type dynamicSecret struct {
		Name        string `json:"name"`
		VersionInfo string `json:"version_info,omitempty"`
		LastUpdated string `json:"last_updated,omitempty"`
		Secret      secret `json:"secret"`
	}
	type secretsDump struct {
		Type                 string          `json:"@type"`
		DynamicActiveSecrets []dynamicSecret `json:"dynamic_active_secrets"`
	}
	active := make([]dynamicSecret, 0, len(secrets))
	for _, s := range secrets {
		ds := dynamicSecret{Name: s.Name, VersionInfo: s.VersionInfo, LastUpdated: s.LastUpdated,
			Secret: secret{Type: TLSSecretType, Name: s.Name}}
		if len(s.CertificateChain) > 0 {
			ds.Secret.TLSCertificate = &tlsCertificate{
				CertificateChain: dataSource{encodePEM(s.CertificateChain)},
				PrivateKey:       dataSource{[]byte("[redacted]")},
			}
		}
		if len(s.TrustedCA) > 0 {
			ds.Secret.ValidationContext = &validationContext{TrustedCA: dataSource{encodePEM(s.TrustedCA)}}
		}
		active = append(active, ds)
	}
	return json.MarshalIndent(struct {
		Configs []secretsDump `json:"configs"`
	}{[]secretsDump{{Type: SecretsConfigDumpType, DynamicActiveSecrets: active}}}, "", " ")
}

func encodePEM(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}
