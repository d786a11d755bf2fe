package s3

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nitropod/nitropod/eif/s3/s3test"
)

// BenchmarkDownload measures Download (ranged GET, streaming CRC check) of
// one EIF into a file. hack/bench-s3.sh runs it against a versitygw it
// started, so that curl can fetch the same object from the same server:
// NITROPOD_S3_BENCH_ENDPOINT is the server, NITROPOD_S3_BENCH_MIB the EIF
// size (default 512). The object is s3://bench/eif.eif; it is created when
// missing. Without the endpoint the benchmark starts its own server.
func BenchmarkDownload(b *testing.B) {
	endpoint := os.Getenv("NITROPOD_S3_BENCH_ENDPOINT")
	if endpoint == "" {
		srv := s3test.Start(b)
		endpoint = srv.Endpoint
	}
	mib := 512
	if v, err := strconv.Atoi(os.Getenv("NITROPOD_S3_BENCH_MIB")); err == nil && v > 0 {
		mib = v
	}
	ctx := context.Background()
	c, err := New(ctx, Config{Endpoint: endpoint, Credentials: s3test.Credentials()})
	if err != nil {
		b.Fatal(err)
	}
	loc := Location{Bucket: "bench", Key: "eif.eif"}
	obj, err := c.Stat(ctx, loc)
	if KindOf(err) == KindNotFound {
		_, cerr := c.api.CreateBucket(ctx, &awss3.CreateBucketInput{Bucket: aws.String(loc.Bucket)})
		if cerr != nil && !isBucketExists(cerr) {
			b.Fatal(cerr)
		}
		p := filepath.Join(b.TempDir(), "bench.eif")
		s3test.WriteEIF(b, p, int64(mib)<<20, 42, nil)
		if _, _, err := c.Push(ctx, p, loc); err != nil {
			b.Fatal(err)
		}
		os.Remove(p)
		obj, err = c.Stat(ctx, loc)
	}
	if err != nil {
		b.Fatal(err)
	}
	dst := filepath.Join(b.TempDir(), "dl.eif")
	b.SetBytes(obj.Size)
	b.ResetTimer()
	for b.Loop() {
		f, err := os.Create(dst)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Download(ctx, obj, f); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
}

func isBucketExists(err error) bool {
	var code interface{ ErrorCode() string }
	return errors.As(err, &code) && (code.ErrorCode() == "BucketAlreadyOwnedByYou" || code.ErrorCode() == "BucketAlreadyExists")
}
