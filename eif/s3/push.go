package s3

import (
	"context"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nitropod/nitropod/eif"
)

// Push uploads the EIF file src to loc after checking that it is a valid EIF
// (structure, CRC, signature when signed), and returns the stored object.
func (c *Client) Push(ctx context.Context, src string, loc Location) (Object, *eif.Report, error) {
	rep, err := VerifyFile(src, Location{Bucket: "local", Key: src})
	if err != nil {
		return Object{}, nil, fmt.Errorf("refusing to push %s: %w", src, err)
	}
	f, err := os.Open(src)
	if err != nil {
		return Object{}, nil, fmt.Errorf("opening %s: %w", src, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Object{}, nil, fmt.Errorf("opening %s: %w", src, err)
	}
	out, err := c.api.PutObject(ctx, &awss3.PutObjectInput{
		Bucket:        aws.String(loc.Bucket),
		Key:           aws.String(loc.Key),
		Body:          f,
		ContentLength: aws.Int64(fi.Size()),
		ContentType:   aws.String("application/octet-stream"),
		Metadata:      map[string]string{"nitropod-pcr0": rep.Measurements.PCR0},
	}, c.bucketOpts(ctx, loc.Bucket)...)
	if err != nil {
		return Object{}, nil, c.classify(ctx, err, "uploading to", loc)
	}
	return Object{Location: loc, Size: fi.Size(), ETag: aws.ToString(out.ETag), VersionID: aws.ToString(out.VersionId)}, rep, nil
}

// putObject stores r as is (tests use it to plant invalid objects).
func (c *Client) putObject(ctx context.Context, loc Location, r *os.File) error {
	fi, err := r.Stat()
	if err != nil {
		return err
	}
	_, err = c.api.PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String(loc.Bucket), Key: aws.String(loc.Key), Body: r, ContentLength: aws.Int64(fi.Size())})
	return c.classify(ctx, err, "uploading to", loc)
}
