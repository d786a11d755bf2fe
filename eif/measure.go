package eif

import (
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"hash"
	"sync"
	"sync/atomic"
)

// HashAlgorithm is what nitro-cli prints as the measurements' hash algorithm.
const HashAlgorithm = "Sha384 { ... }"

// Measurements are the PCRs of an EIF in nitro-cli's JSON form: lowercase hex
// SHA-384 values (docs/EIF-FORMAT.md "Measurements").
type Measurements struct {
	HashAlgorithm string `json:"HashAlgorithm"`
	PCR0          string `json:"PCR0"`
	PCR1          string `json:"PCR1"`
	PCR2          string `json:"PCR2"`
	// PCR8 is set when the EIF is signed: the measurement of the signing
	// certificate.
	PCR8 string `json:"PCR8,omitempty"`
}

// PCR returns SHA384(48 zero bytes ‖ digest): a PCR extended once, from
// zero, with a SHA-384 digest.
func PCR(digest []byte) []byte {
	h := sha512.New384()
	h.Write(make([]byte, sha512.Size384))
	h.Write(digest)
	return h.Sum(nil)
}

// PCRHex is PCR of SHA384(content), in lowercase hex.
func PCRHex(content []byte) string {
	d := sha512.Sum384(content)
	return hex.EncodeToString(PCR(d[:]))
}

// CertificatePCR returns PCR8 for a signing certificate given as PEM (as
// `nitro-cli pcr --signing-certificate` takes it) or DER.
func CertificatePCR(cert []byte) (string, error) {
	c, err := parseCertificate(cert)
	if err != nil {
		return "", err
	}
	return PCRHex(c.Raw), nil
}

func parseCertificate(b []byte) (*x509.Certificate, error) {
	der := b
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("parsing signing certificate: PEM block is %q, want CERTIFICATE", blk.Type)
		}
		der = blk.Bytes
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing signing certificate: %w", err)
	}
	return c, nil
}

// measurer computes PCR0, PCR1 and PCR2 from section data fed in file order.
// Each digest runs in its own goroutine (SHA-384 dominates the cost of
// writing an EIF, and PCR0 and PCR2 both cover the customer ramdisk), fed
// with copies of the data in a small fixed pool of chunks, so memory stays
// bounded whatever the section size.
type measurer struct {
	pcr0, pcr1, pcr2 *hashWorker
	ramdisks         int
	cur              []*hashWorker // digests the current section's data goes to
	tokens           chan struct{} // one per chunk in use: bounds memory
	finished         bool
}

const (
	chunkSize  = 1 << 20
	chunkCount = 6
)

type chunk struct {
	b    []byte
	refs atomic.Int32
}

// chunks are shared by all measurers (a Verify per call would otherwise
// allocate its chunks anew); each measurer holds at most chunkCount.
var chunks = sync.Pool{New: func() any { return &chunk{b: make([]byte, 0, chunkSize)} }}

type hashWorker struct {
	h    hash.Hash
	in   chan *chunk
	done chan struct{}
	m    *measurer
}

func (w *hashWorker) run() {
	defer close(w.done)
	for c := range w.in {
		w.h.Write(c.b)
		if c.refs.Add(-1) == 0 {
			w.m.release(c)
		}
	}
}

func newMeasurer() *measurer {
	m := &measurer{tokens: make(chan struct{}, chunkCount)}
	start := func() *hashWorker {
		w := &hashWorker{h: sha512.New384(), in: make(chan *chunk, chunkCount), done: make(chan struct{}), m: m}
		go w.run()
		return w
	}
	m.pcr0, m.pcr1, m.pcr2 = start(), start(), start()
	return m
}

// begin selects the digests that the next section's data goes into.
func (m *measurer) begin(t SectionType) {
	switch t {
	case SectionKernel, SectionCmdline:
		m.cur = []*hashWorker{m.pcr0, m.pcr1}
	case SectionRamdisk:
		if m.ramdisks == 0 {
			m.cur = []*hashWorker{m.pcr0, m.pcr1}
		} else {
			m.cur = []*hashWorker{m.pcr0, m.pcr2}
		}
		m.ramdisks++
	default:
		m.cur = nil
	}
}

// get returns an empty chunk from the pool (blocking while the digests
// catch up: this bounds memory).
func (m *measurer) get() *chunk {
	m.tokens <- struct{}{}
	c := chunks.Get().(*chunk)
	c.b = c.b[:0]
	return c
}

// release returns a chunk nobody uses any more.
func (m *measurer) release(c *chunk) {
	chunks.Put(c)
	<-m.tokens
}

// submit hands c to the current section's digests; it returns to the pool
// when they are done with it.
func (m *measurer) submit(c *chunk) {
	if len(m.cur) == 0 || len(c.b) == 0 {
		m.release(c)
		return
	}
	c.refs.Store(int32(len(m.cur)))
	for _, w := range m.cur {
		w.in <- c
	}
}

// finish waits for the digests and stops the goroutines. It is idempotent.
func (m *measurer) finish() {
	if m.finished {
		return
	}
	m.finished = true
	for _, w := range []*hashWorker{m.pcr0, m.pcr1, m.pcr2} {
		close(w.in)
		<-w.done
	}
}

// pcr0Raw returns PCR0; call finish first.
func (m *measurer) pcr0Raw() []byte { return PCR(m.pcr0.h.Sum(nil)) }

// result returns the measurements; call finish first.
func (m *measurer) result() Measurements {
	return Measurements{
		HashAlgorithm: HashAlgorithm,
		PCR0:          hex.EncodeToString(m.pcr0Raw()),
		PCR1:          hex.EncodeToString(PCR(m.pcr1.h.Sum(nil))),
		PCR2:          hex.EncodeToString(PCR(m.pcr2.h.Sum(nil))),
	}
}
