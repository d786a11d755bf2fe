package s3

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nitropod/nitropod/eif/s3/s3test"
	"github.com/nitropod/nitropod/eifcache"
)

// childEnv makes the test binary act as one shim fetching an EIF (see
// TestMain): NITROPOD_S3_CHILD=endpoint|cachedir|bucket/key|pcr0.
const childEnv = "NITROPOD_S3_CHILD"

type childResult struct {
	Downloaded bool   `json:"downloaded"`
	Hit        bool   `json:"hit"`
	Err        string `json:"err,omitempty"`
}

func TestMain(m *testing.M) {
	if v := os.Getenv(childEnv); v != "" {
		os.Exit(fetchChild(v))
	}
	os.Exit(m.Run())
}

// fetchChild is one "shim process": its own client and cache handle.
func fetchChild(spec string) int {
	parts := strings.SplitN(spec, "|", 4)
	if len(parts) != 4 {
		fmt.Fprintln(os.Stderr, "bad", childEnv)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res := childResult{}
	err := func() error {
		c, err := New(ctx, Config{Endpoint: parts[0], Credentials: s3test.Credentials()})
		if err != nil {
			return err
		}
		cache, err := eifcache.Open(parts[1], 0)
		if err != nil {
			return err
		}
		b, k, _ := strings.Cut(parts[2], "/")
		r, err := c.Fetch(ctx, cache, Location{Bucket: b, Key: k}, Expect{PCR0: parts[3]})
		if err != nil {
			return err
		}
		defer r.Release()
		res.Downloaded, res.Hit = r.Downloaded, r.Entry.Hit
		return nil
	}()
	if err != nil {
		res.Err = err.Error()
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

// TestFetchTenProcessesOneDownload starts ten processes, as ten shims of ten
// Pods on one node would be, fetching the same object into one cache
// directory at once: exactly one downloads it, the others get the file.
func TestFetchTenProcessesOneDownload(t *testing.T) {
	f := newFixture(t, Config{})
	loc, m, _ := f.push(t, "shared.eif", 24<<20, 11, nil)
	cdir := filepath.Join(f.dir, "cache")
	spec := strings.Join([]string{f.srv.Endpoint, cdir, loc.Bucket + "/" + loc.Key, m.PCR0}, "|")
	var wg sync.WaitGroup
	results := make([]childResult, 10)
	outs := make([]string, 10)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), childEnv+"="+spec)
			out, err := cmd.Output()
			outs[i] = string(out)
			if err != nil {
				results[i].Err = fmt.Sprintf("child: %v", err)
				return
			}
			if err := json.Unmarshal(out, &results[i]); err != nil {
				results[i].Err = fmt.Sprintf("child output %q: %v", out, err)
			}
		}()
	}
	wg.Wait()
	downloaded := 0
	for i, r := range results {
		if r.Err != "" {
			t.Errorf("process %d: %s", i, r.Err)
		}
		if r.Downloaded {
			downloaded++
		}
	}
	if downloaded != 1 {
		t.Errorf("%d of 10 processes downloaded the object, want 1: %v", downloaded, outs)
	}
	files := cacheFiles(t, cdir)
	if len(files) != 1 {
		t.Errorf("cache holds %v, want one entry", files)
	}
}
