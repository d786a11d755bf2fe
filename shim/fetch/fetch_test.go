package fetch

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestExposedTCPPorts(t *testing.T) {
	got := ExposedTCPPorts(map[string]struct{}{"80/tcp": {}, "8080": {}, "53/udp": {}, "x/tcp": {}, "0/tcp": {}, "70000/tcp": {}})
	if diff := cmp.Diff([]uint16{80, 8080}, got); diff != "" {
		t.Errorf("ports (-want +got):\n%s", diff)
	}
}

func TestMainUsageErrors(t *testing.T) {
	for _, args := range [][]string{nil, {"bogus"}, {"image-ports", "a"}, {"s3", "s3://b/k"}} {
		var out, errb bytes.Buffer
		if code := Main(args, &out, &errb); code != 1 || !strings.Contains(errb.String(), "nitropod-fetch") {
			t.Errorf("Main(%q) = %d, stderr %q; want 1 and a usage message", args, code, errb.String())
		}
	}
}
