package configdump

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
)

// ZtunnelCerts is one identity's certificates as ztunnel's config dump
// lists them (src/admin.rs CertsDump).
type ZtunnelCerts struct {
	Identity string
	State    string
	// Chain is the leaf and its intermediates; Roots the trust anchors.
	Chain, Roots []*x509.Certificate
	// Serials are the dumped serial numbers of Chain, in decimal.
	Serials []string
}

// ParseZtunnel reads the certificates of a ztunnel config dump: each
// certificate's PEM is base64-encoded, its serial number decimal; the
// parsed certificate must carry the serial dumped with it.
func ParseZtunnel(dump []byte) (map[string]ZtunnelCerts, error) {
	type cert struct {
		Pem          string `json:"pem"`
		SerialNumber string `json:"serialNumber"`
	}
	var d struct {
		Certificates *[]struct {
			Identity  string `json:"identity"`
			State     string `json:"state"`
			CertChain []cert `json:"certChain"`
			RootCerts []cert `json:"rootCerts"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal(dump, &d); err != nil {
		return nil, fmt.Errorf("not a ztunnel config dump: %w", err)
	}
	if d.Certificates == nil {
		return nil, fmt.Errorf("not a ztunnel config dump: no certificates")
	}
	parse := func(c cert) (*x509.Certificate, error) {
		p, err := base64.StdEncoding.DecodeString(c.Pem)
		if err != nil {
			return nil, fmt.Errorf("pem: %w", err)
		}
		block, _ := pem.Decode(p)
		if block == nil || block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("pem: no certificate")
		}
		x, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		if want, ok := new(big.Int).SetString(c.SerialNumber, 10); !ok || want.Cmp(x.SerialNumber) != 0 {
			return nil, fmt.Errorf("serial number %q is not the certificate's %s", c.SerialNumber, x.SerialNumber)
		}
		return x, nil
	}
	out := map[string]ZtunnelCerts{}
	for _, c := range *d.Certificates {
		zc := ZtunnelCerts{Identity: c.Identity, State: c.State}
		for i, e := range c.CertChain {
			x, err := parse(e)
			if err != nil {
				return nil, fmt.Errorf("%s certificate %d: %w", c.Identity, i, err)
			}
			zc.Chain = append(zc.Chain, x)
			zc.Serials = append(zc.Serials, e.SerialNumber)
		}
		for i, e := range c.RootCerts {
			x, err := parse(e)
			if err != nil {
				return nil, fmt.Errorf("%s root %d: %w", c.Identity, i, err)
			}
			zc.Roots = append(zc.Roots, x)
		}
		out[c.Identity] = zc
	}
	return out, nil
}
