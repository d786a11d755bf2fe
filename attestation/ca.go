package attestation

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Files of an EmulationCA directory.
const (
	EmulationRootFile    = "emulation-root.pem"
	EmulationRootKeyFile = "emulation-root-key.pem"
)

// EmulationSubjectMarker is in the subject of every emulation certificate,
// so that no one mistakes one for AWS's.
const EmulationSubjectMarker = "NOT AWS Nitro"

// leafLifetime is how long an emulated signing certificate lives (AWS's are
// short-lived too); signers renew theirs before it ends.
const leafLifetime = 3 * time.Hour

// EmulationCA is a node's emulation root: a self-signed P-384 CA whose key
// lives in its directory (mode 0600) on the node, never in an enclave.
type EmulationCA struct {
	Cert *x509.Certificate
	PEM  []byte
	key  *ecdsa.PrivateKey
}

// LoadOrCreateCA loads the CA in dir, creating dir (0700) and the CA when
// there is none. Concurrent callers on one node end up with the same CA.
func LoadOrCreateCA(dir string) (*EmulationCA, error) {
	if dir == "" {
		return nil, errors.New("emulation CA directory is empty")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating emulation CA directory: %w", err)
	}
	keyPath := filepath.Join(dir, EmulationRootKeyFile)
	certPath := filepath.Join(dir, EmulationRootFile)
	if _, err := os.Stat(keyPath); errors.Is(err, os.ErrNotExist) {
		if err := createCA(dir, keyPath, certPath); err != nil {
			return nil, err
		}
	}
	return loadCA(keyPath, certPath)
}

func createCA(dir, keyPath, certPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating emulation root key: %w", err)
	}
	host, _ := os.Hostname()
	if len(host) > 32 {
		host = host[:32]
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject: pkix.Name{
			CommonName:         "nitropod emulation attestation root, " + EmulationSubjectMarker,
			Organization:       []string{"nitropod emulated NSM (" + EmulationSubjectMarker + ")"},
			OrganizationalUnit: []string{"node " + host},
		},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("creating emulation root certificate: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding emulation root key: %w", err)
	}
	// Write both to temporary files, then link the key into place: the
	// first creator wins and later ones load its CA.
	tk, err := os.CreateTemp(dir, ".key-")
	if err != nil {
		return fmt.Errorf("writing emulation root key: %w", err)
	}
	defer os.Remove(tk.Name())
	tc, err := os.CreateTemp(dir, ".cert-")
	if err != nil {
		tk.Close()
		return fmt.Errorf("writing emulation root certificate: %w", err)
	}
	defer os.Remove(tc.Name())
	_ = tk.Chmod(0o600)
	_ = tc.Chmod(0o644)
	_, err1 := tk.Write(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	_, err2 := tc.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	err3, err4 := tk.Close(), tc.Close()
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return fmt.Errorf("writing emulation CA: %w", err)
	}
	// The key is linked into place first: the first creator wins, and
	// loadCA waits for the winner's certificate.
	if err := os.Link(tk.Name(), keyPath); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil
		}
		return fmt.Errorf("installing emulation root key: %w", err)
	}
	if err := os.Rename(tc.Name(), certPath); err != nil {
		os.Remove(keyPath)
		return fmt.Errorf("installing emulation root certificate: %w", err)
	}
	return nil
}

func loadCA(keyPath, certPath string) (*EmulationCA, error) {
	var key *ecdsa.PrivateKey
	var err error
	for range 50 { // a concurrent creator may be between its two renames
		key, err = readKey(keyPath)
		if err != nil {
			return nil, err
		}
		if _, err = os.Stat(certPath); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("reading emulation root certificate: %w", err)
	}
	cert, err := ParseRootPEM(cb)
	if err != nil {
		return nil, fmt.Errorf("emulation root %s: %w", certPath, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("emulation root %s does not match its key %s (remove both to make a new CA)", certPath, keyPath)
	}
	return &EmulationCA{Cert: cert, PEM: cb, key: key}, nil
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("reading emulation root key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("emulation root key %s has mode %v: it must be readable by its owner only (chmod 600)", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading emulation root key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("emulation root key %s is not PEM", path)
	}
	k, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("emulation root key %s: %w", path, err)
	}
	return k, nil
}

func randSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n.Add(n, big.NewInt(1))
}

// Signer signs one enclave's documents with a short-lived certificate the
// emulation root issued; it renews the certificate before it expires.
type Signer struct {
	ca       *EmulationCA
	moduleID string
	now      func() time.Time

	mu   sync.Mutex
	key  *ecdsa.PrivateKey
	leaf *x509.Certificate
}

// NewSigner returns a signer for the enclave moduleID.
func (ca *EmulationCA) NewSigner(moduleID string) (*Signer, error) {
	s := &Signer{ca: ca, moduleID: moduleID, now: time.Now}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.renew(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Signer) renew() error {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating attestation signing key: %w", err)
	}
	now := s.now()
	tmpl := &x509.Certificate{
		SerialNumber: randSerial(),
		Subject: pkix.Name{
			CommonName:   s.moduleID + " (emulated, " + EmulationSubjectMarker + ")",
			Organization: []string{"nitropod emulated NSM (" + EmulationSubjectMarker + ")"},
		},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(leafLifetime),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.ca.Cert, &key.PublicKey, s.ca.key)
	if err != nil {
		return fmt.Errorf("issuing attestation signing certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("issuing attestation signing certificate: %w", err)
	}
	s.key, s.leaf = key, leaf
	return nil
}

// Sign fills d's module_id, digest, timestamp, certificate and cabundle and
// returns the signed document.
func (s *Signer) Sign(d *Document) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if now.Add(30 * time.Minute).After(s.leaf.NotAfter) {
		if err := s.renew(); err != nil {
			return nil, err
		}
	}
	d.ModuleID = s.moduleID
	d.Digest = DigestSHA384
	d.Timestamp = uint64(now.UnixMilli())
	d.Certificate = s.leaf.Raw
	d.CABundle = [][]byte{s.ca.Cert.Raw}
	return Sign(d, s.key)
}
