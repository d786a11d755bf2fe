package eif

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Description is what `nitro-cli describe-eif` prints for an EIF, in its
// field order (aws-nitro-enclaves-cli EifDescribeInfo).
type Description struct {
	EifVersion   uint16       `json:"EifVersion"`
	Measurements Measurements `json:"Measurements"`
	IsSigned     bool         `json:"IsSigned"`
	// SigningCertificate describes the signer of a signed image.
	SigningCertificate *CertificateInfo `json:"SigningCertificate,omitempty"`
	CheckCRC           bool             `json:"CheckCRC"`
	// SignatureCheck (nitro-cli's name) and CheckSignature (the same value
	// under the name nitropod's issue uses) are present for signed images.
	SignatureCheck *bool  `json:"SignatureCheck,omitempty"`
	CheckSignature *bool  `json:"CheckSignature,omitempty"`
	ImageName      string `json:"ImageName,omitempty"`
	ImageVersion   string `json:"ImageVersion,omitempty"`
	// Metadata is the build metadata with DockerInfo, and the custom
	// metadata's keys merged in, as nitro-cli shows it.
	Metadata json.RawMessage `json:"Metadata,omitempty"`
}

// Describe turns a File and its Verify report into a Description.
func Describe(f *File, rep *Report) (*Description, error) {
	d := &Description{
		EifVersion:   f.Header.Version,
		Measurements: rep.Measurements,
		IsSigned:     rep.Signed,
		CheckCRC:     rep.CRCOK,
	}
	if rep.Signed {
		ok := rep.SignatureOK
		d.SignatureCheck, d.CheckSignature = &ok, &ok
		if rep.Signature != nil && rep.Signature.Certificate != nil {
			d.SigningCertificate = certificateInfo(rep.Signature.Certificate)
		}
	}
	if md := rep.Metadata; md != nil {
		d.ImageName, d.ImageVersion = md.ImageName, md.ImageVersion
		var b bytes.Buffer
		b.WriteByte('{')
		add := func(k string, v any) error {
			if b.Len() > 1 {
				b.WriteByte(',')
			}
			kb, _ := json.Marshal(k)
			vb, err := marshalNoEscape(v)
			if err != nil {
				return err
			}
			b.Write(kb)
			b.WriteByte(':')
			b.Write(vb)
			return nil
		}
		bm := md.Build
		for _, kv := range []struct {
			k string
			v any
		}{{"BuildTime", bm.BuildTime}, {"BuildTool", bm.BuildTool}, {"BuildToolVersion", bm.BuildToolVersion}, {"OperatingSystem", bm.OperatingSystem}, {"KernelVersion", bm.KernelVersion}, {"DockerInfo", rawOrNull(md.DockerInfo)}} {
			if err := add(kv.k, kv.v); err != nil {
				return nil, fmt.Errorf("describing eif metadata: %w", err)
			}
		}
		var custom map[string]json.RawMessage
		if len(md.CustomMetadata) > 0 && json.Unmarshal(md.CustomMetadata, &custom) == nil {
			for _, k := range sortedKeys(custom) {
				if err := add(k, custom[k]); err != nil {
					return nil, fmt.Errorf("describing eif metadata: %w", err)
				}
			}
		}
		b.WriteByte('}')
		d.Metadata = b.Bytes()
	}
	return d, nil
}

func rawOrNull(r json.RawMessage) json.RawMessage {
	if len(r) == 0 {
		return json.RawMessage("null")
	}
	return r
}

func sortedKeys(m map[string]json.RawMessage) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// MarshalIndent encodes v as nitro-cli prints JSON: indented by two spaces,
// without HTML escaping, with a final newline.
func MarshalIndent(v any) ([]byte, error) {
	var b bytes.Buffer
	e := json.NewEncoder(&b)
	e.SetEscapeHTML(false)
	e.SetIndent("", "  ")
	if err := e.Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// CertificateInfo describes a signing certificate as nitro-cli does
// (aws-nitro-enclaves-image-format SignCertificateInfo, OpenSSL's names and
// time format).
type CertificateInfo struct {
	IssuerName map[string]string `json:"IssuerName"`
	Algorithm  string            `json:"Algorithm"`
	NotBefore  string            `json:"NotBefore"`
	NotAfter   string            `json:"NotAfter"`
	// Signature is the certificate's signature as "XX:XX:…".
	Signature string `json:"Signature"`
}

// OpenSSL's long names of the usual distinguished-name attributes.
var attributeNames = map[string]string{
	"2.5.4.3": "commonName", "2.5.4.4": "surname", "2.5.4.5": "serialNumber", "2.5.4.6": "countryName",
	"2.5.4.7": "localityName", "2.5.4.8": "stateOrProvinceName", "2.5.4.9": "streetAddress",
	"2.5.4.10": "organizationName", "2.5.4.11": "organizationalUnitName", "2.5.4.42": "givenName",
	"1.2.840.113549.1.9.1": "emailAddress", "0.9.2342.19200300.100.1.25": "domainComponent",
}

func certificateInfo(c *x509.Certificate) *CertificateInfo {
	info := &CertificateInfo{IssuerName: map[string]string{}}
	for _, atv := range c.Issuer.Names {
		name, ok := attributeNames[atv.Type.String()]
		if !ok {
			name = atv.Type.String()
		}
		info.IssuerName[name] = fmt.Sprint(atv.Value)
	}
	switch c.SignatureAlgorithm {
	case x509.ECDSAWithSHA256:
		info.Algorithm = "ecdsa-with-SHA256"
	case x509.ECDSAWithSHA384:
		info.Algorithm = "ecdsa-with-SHA384"
	case x509.ECDSAWithSHA512:
		info.Algorithm = "ecdsa-with-SHA512"
	default:
		info.Algorithm = c.SignatureAlgorithm.String()
	}
	const openSSLTime = "Jan _2 15:04:05 2006 GMT"
	info.NotBefore = c.NotBefore.UTC().Format(openSSLTime)
	info.NotAfter = c.NotAfter.UTC().Format(openSSLTime)
	hexes := make([]string, len(c.Signature))
	for i, b := range c.Signature {
		hexes[i] = fmt.Sprintf("%02X", b)
	}
	info.Signature = strings.Join(hexes, ":")
	return info
}
