package build

import (
	"debug/elf"
	"fmt"
	"os"
	"strings"
)

// CheckInit refuses an init binary that cannot run as the enclave's PID 1:
// the bootstrap ramdisk holds the init and kernel modules only, no dynamic
// loader or shared libraries, so an init that is not an ELF executable or is
// dynamically linked (a PT_INTERP program header or DT_NEEDED entries) would
// build into an EIF whose kernel panics at boot with "Failed to execute
// /init". The error says how to build it static.
func CheckInit(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("init binary: %w", err)
	}
	defer f.Close()
	ef, err := elf.NewFile(f)
	if err != nil {
		return fmt.Errorf("init %s is not an ELF executable (%w): the enclave's init must be a statically linked binary such as nitropod-init", path, err)
	}
	defer ef.Close()
	var why []string
	for _, p := range ef.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		interp := "a dynamic loader"
		if p.Filesz > 0 && p.Filesz < 4096 {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err == nil {
				interp = strings.TrimRight(string(b), "\x00")
			}
		}
		why = append(why, "interpreter "+interp)
	}
	if libs, err := ef.ImportedLibraries(); err == nil && len(libs) > 0 {
		why = append(why, "needs "+strings.Join(libs, ", "))
	}
	if len(why) > 0 {
		return fmt.Errorf("init %s is dynamically linked (%s), and the enclave has no shared libraries to load: build it static (for Go: CGO_ENABLED=0 go build; for C: -static)", path, strings.Join(why, "; "))
	}
	if ef.Type != elf.ET_EXEC && ef.Type != elf.ET_DYN {
		return fmt.Errorf("init %s is an ELF %v, not an executable: the enclave's init must be a statically linked binary such as nitropod-init", path, ef.Type)
	}
	return nil
}
