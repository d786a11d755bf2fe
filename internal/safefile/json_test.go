package safefile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadJSON(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "s.json")
	if err := os.WriteFile(p, []byte(`{"a":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var v struct{ A int }
	if err := ReadJSON(p, 64, &v); err != nil || v.A != 1 {
		t.Fatalf("ReadJSON = %+v, %v", v, err)
	}
	if err := ReadJSON(p, 3, &v); err == nil || !strings.Contains(err.Error(), "larger than 3 bytes") {
		t.Errorf("over the cap: %v", err)
	}
	if err := ReadJSON(filepath.Join(dir, "none"), 64, &v); !os.IsNotExist(err) {
		t.Errorf("missing file: %v", err)
	}
}
