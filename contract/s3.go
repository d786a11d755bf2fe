package contract

import (
	"fmt"
	"net/netip"
	"strings"
)

// MaxS3KeyBytes is S3's limit on an object key.
const MaxS3KeyBytes = 1024

// S3Location is an object in a bucket, written s3://bucket/key: the value
// of the nitro.k8s.anjuna.io/imageLocation annotation.
type S3Location struct {
	Bucket string
	Key    string
}

func (l S3Location) String() string { return "s3://" + l.Bucket + "/" + l.Key }

// ParseS3Location parses "s3://bucket/key", checking the bucket against S3's
// naming rules and that the key names an object (not empty, not a
// "directory" ending in /, at most MaxS3KeyBytes, no control characters).
// The error is a sentence for the Pod's author.
func ParseS3Location(s string) (S3Location, error) {
	rest, ok := strings.CutPrefix(s, "s3://")
	if !ok {
		return S3Location{}, fmt.Errorf("image location %s is not an S3 URL: write it as s3://BUCKET/KEY", Clip(s))
	}
	bucket, key, _ := strings.Cut(rest, "/")
	if msg := checkBucketName(bucket); msg != "" {
		return S3Location{}, fmt.Errorf("image location %s: bucket %s %s", Clip(s), Clip(bucket), msg)
	}
	switch {
	case key == "" || strings.HasSuffix(key, "/"):
		return S3Location{}, fmt.Errorf("image location %s has no object key: write it as s3://%s/path/to/image.eif", Clip(s), bucket)
	case len(key) > MaxS3KeyBytes:
		return S3Location{}, fmt.Errorf("image location %s: the object key is %d bytes, more than S3's %d", Clip(s), len(key), MaxS3KeyBytes)
	case strings.ContainsFunc(key, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return S3Location{}, fmt.Errorf("image location %s: the object key contains a control character", Clip(s))
	}
	return S3Location{Bucket: bucket, Key: key}, nil
}

// checkBucketName returns what is wrong with an S3 bucket name, or "".
func checkBucketName(b string) string {
	const rule = "is not a valid S3 bucket name (3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit)"
	if len(b) < 3 || len(b) > 63 {
		return rule
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '.' || c == '-':
			if i == 0 || i == len(b)-1 {
				return rule
			}
		default:
			return rule
		}
	}
	if strings.Contains(b, "..") {
		return "is not a valid S3 bucket name (two adjacent dots)"
	}
	if _, err := netip.ParseAddr(b); err == nil {
		return "is not a valid S3 bucket name (formatted as an IP address)"
	}
	return ""
}
