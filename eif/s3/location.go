package s3

import (
	"fmt"
	"strings"
)

// Location is an object in a bucket, written s3://bucket/key.
type Location struct {
	Bucket string
	Key    string
}

func (l Location) String() string { return "s3://" + l.Bucket + "/" + l.Key }

// ParseLocation parses "s3://bucket/key".
func ParseLocation(s string) (Location, error) {
	rest, ok := strings.CutPrefix(s, "s3://")
	if !ok {
		return Location{}, &Error{Kind: KindInvalidLocation, Location: s,
			Msg: fmt.Sprintf("image location %q is not an S3 URL: write it as s3://BUCKET/KEY", s)}
	}
	bucket, key, _ := strings.Cut(rest, "/")
	if bucket == "" || key == "" || strings.HasSuffix(key, "/") {
		return Location{}, &Error{Kind: KindInvalidLocation, Location: s,
			Msg: fmt.Sprintf("image location %q needs a bucket and an object key: write it as s3://BUCKET/KEY", s)}
	}
	if len(bucket) < 3 || len(bucket) > 63 || strings.ContainsAny(bucket, " /\\?#") {
		return Location{}, &Error{Kind: KindInvalidLocation, Location: s,
			Msg: fmt.Sprintf("image location %q: %q is not a valid bucket name", s, bucket)}
	}
	return Location{Bucket: bucket, Key: key}, nil
}
