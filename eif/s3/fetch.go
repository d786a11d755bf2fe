package s3

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/eifcache"
)

// cacheKeyVersion changes when the meaning of a cached S3 entry changes.
const cacheKeyVersion = "s3-eif-v1"

// CacheKey is the eifcache key of an object: its bucket, key, version and
// ETag. A replaced object has a new ETag, hence a new key.
func CacheKey(obj Object) string {
	return eifcache.Key(cacheKeyVersion, obj.Location.Bucket, obj.Location.Key, obj.VersionID, obj.ETag)
}

// Expect pins measurements a prebuilt EIF must have (from the Pod's
// nitropod.io/expected-pcr0 and nitropod.io/expected-pcr8 annotations); empty
// fields are not checked.
type Expect struct {
	PCR0 string
	PCR8 string
}

// Result is a fetched EIF, held in the cache until Release.
type Result struct {
	// Entry is the cache entry; its Path is the EIF to boot.
	Entry *eifcache.Entry
	// Object is the S3 object it came from.
	Object Object
	// Downloaded is true when this call downloaded it (a cache miss).
	Downloaded bool
	// Report is the EIF's verification: measurements, signature.
	Report *eif.Report
}

// Release lets the cache evict the entry again.
func (r *Result) Release() { r.Entry.Release() }

// Fetch makes the EIF at loc available in cache and verifies it: CRC,
// signature (always, when the EIF is signed) and exp. Concurrent fetches of
// the same object download it once; an unchanged object is not downloaded
// again. On error nothing new is left in the cache.
func (c *Client) Fetch(ctx context.Context, cache *eifcache.Cache, loc Location, exp Expect) (*Result, error) {
	obj, err := c.Stat(ctx, loc)
	if err != nil {
		return nil, err
	}
	if err := c.checkSize(obj); err != nil {
		return nil, err
	}
	var rep *eif.Report
	downloaded := false
	entry, err := cache.Get(ctx, CacheKey(obj), func(ctx context.Context, w io.Writer) error {
		if err := c.Download(ctx, obj, w); err != nil {
			return err
		}
		f, ok := w.(*os.File)
		if !ok {
			return nil
		}
		r, err := verifyFile(f, obj.Size, loc)
		if err != nil {
			return err
		}
		rep, downloaded = r, true
		return nil
	})
	if err != nil {
		return nil, err
	}
	if rep == nil {
		if rep, err = VerifyFile(entry.Path, loc); err != nil {
			entry.Release()
			return nil, err
		}
	}
	if err := exp.Check(rep.Measurements, loc); err != nil {
		entry.Release()
		return nil, err
	}
	return &Result{Entry: entry, Object: obj, Downloaded: downloaded, Report: rep}, nil
}

// VerifyFile reads an EIF once and checks its structure, CRC and (when
// signed) signature; loc only names it in errors.
func VerifyFile(path string, loc Location) (*eif.Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening eif: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("opening eif: %w", err)
	}
	return verifyFile(f, fi.Size(), loc)
}

func verifyFile(f io.ReaderAt, size int64, loc Location) (*eif.Report, error) {
	ef, err := eif.Open(f, size)
	if err != nil {
		return nil, &Error{Kind: KindCorrupt, Location: loc.String(), Msg: fmt.Sprintf("%s is not a valid EIF", loc), Err: err}
	}
	rep, err := ef.Verify()
	if err != nil {
		if rep != nil && rep.Signed && !rep.SignatureOK {
			return nil, &Error{Kind: KindVerification, Location: loc.String(), Msg: fmt.Sprintf("%s is signed but its signature does not verify: the image was changed after signing; refusing to boot it", loc), Err: err}
		}
		return nil, &Error{Kind: KindCorrupt, Location: loc.String(), Msg: fmt.Sprintf("%s is not a valid EIF", loc), Err: err}
	}
	return rep, nil
}

// Check compares measurements with the expected ones.
func (e Expect) Check(m eif.Measurements, loc Location) error {
	if want := normHex(e.PCR0); want != "" && want != m.PCR0 {
		return &Error{Kind: KindVerification, Location: loc.String(),
			Msg: fmt.Sprintf("%s has PCR0 %s but the Pod expects %s: push the expected image or update the expected-pcr0 annotation", loc, m.PCR0, want)}
	}
	if want := normHex(e.PCR8); want != "" && want != m.PCR8 {
		got := m.PCR8
		if got == "" {
			got = "none (the EIF is not signed)"
		}
		return &Error{Kind: KindVerification, Location: loc.String(),
			Msg: fmt.Sprintf("%s has PCR8 %s but the Pod expects %s: sign the image with the expected certificate or update the expected-pcr8 annotation", loc, got, want)}
	}
	return nil
}

func normHex(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

// Pull downloads loc into the file dst (written to a temporary file in the
// same directory and renamed when complete and verified, also against exp).
func (c *Client) Pull(ctx context.Context, loc Location, dst string, exp Expect) (Object, *eif.Report, error) {
	obj, err := c.Stat(ctx, loc)
	if err != nil {
		return Object{}, nil, err
	}
	if err := c.checkSize(obj); err != nil {
		return Object{}, nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".part-*")
	if err != nil {
		return Object{}, nil, fmt.Errorf("creating %s: %w", dst, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := c.Download(ctx, obj, tmp); err != nil {
		return Object{}, nil, err
	}
	rep, err := verifyFile(tmp, obj.Size, loc)
	if err != nil {
		return Object{}, nil, err
	}
	if err := exp.Check(rep.Measurements, loc); err != nil {
		return Object{}, nil, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return Object{}, nil, fmt.Errorf("writing %s: %w", dst, err)
	}
	if err := tmp.Close(); err != nil {
		return Object{}, nil, fmt.Errorf("writing %s: %w", dst, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return Object{}, nil, fmt.Errorf("writing %s: %w", dst, err)
	}
	ok = true
	return obj, rep, nil
}
