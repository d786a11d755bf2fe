package safefile

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
)

// ReadJSON decodes the JSON file at path into v, reading at most max
// bytes: for nitropod's own small state files (bundle state, caches), so a
// corrupt or replaced file cannot make a root process read without bound.
// A larger file is an error naming it.
func ReadJSON(path string, max int64, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return err
	}
	if int64(len(b)) > max {
		return fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return json.Unmarshal(b, v)
}
