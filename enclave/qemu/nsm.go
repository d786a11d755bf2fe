package qemu

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/nitropod/nitropod/attestation"
	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/enclave"
	"github.com/nitropod/nitropod/enclave/nsm"
)

// DefaultAttestationDir is where the node's emulation CA lives when
// Config.AttestationDir is "": the user's state directory (never WorkDir,
// which holds only per-enclave files).
func DefaultAttestationDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "nitropod", "attestation")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "nitropod", "attestation")
	}
	return filepath.Join(os.TempDir(), "nitropod-attestation-"+strconv.Itoa(os.Getuid()))
}

// newNSM is the emulated NSM of one enclave: its boot PCRs are this
// launcher's measurement of the EIF it boots (zero in debug mode, as on
// Nitro), its documents are signed with the node's emulation CA.
func (b *Backend) newNSM(req enclave.Request, m eif.Measurements) (*nsm.Device, error) {
	ca, err := attestation.LoadOrCreateCA(b.cfg.AttestationDir)
	if err != nil {
		return nil, fmt.Errorf("emulated NSM: loading the node's emulation CA from %s: %w", b.cfg.AttestationDir, err)
	}
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		return nil, fmt.Errorf("emulated NSM: %w", err)
	}
	moduleID := "i-nitropod-emulated-enc" + hex.EncodeToString(id)
	signer, err := ca.NewSigner(moduleID)
	if err != nil {
		return nil, fmt.Errorf("emulated NSM: %w", err)
	}
	var pcrs map[int][]byte
	if !req.Debug {
		pcrs, err = nsm.BootPCRs(map[int]string{0: m.PCR0, 1: m.PCR1, 2: m.PCR2, 8: m.PCR8})
		if err != nil {
			return nil, fmt.Errorf("emulated NSM: %w", err)
		}
	}
	return nsm.NewDevice(nsm.Config{ModuleID: moduleID, PCRs: pcrs, Signer: signer})
}

// NSMHandler answers the enclave's NSM requests (enclave.NSMServer).
func (e *qemuEnclave) NSMHandler() func(req []byte) []byte {
	if e.nsm == nil {
		return nil
	}
	return e.nsm.Handle
}
