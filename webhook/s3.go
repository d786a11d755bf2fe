package webhook

import (
	"fmt"
	"net/netip"
	"strings"
)

// ParseS3Location splits an imageLocation value "s3://bucket/key" and checks
// the bucket name against S3's naming rules and that the key is not empty.
// The error is a sentence for the user.
func ParseS3Location(loc string) (bucket, key string, err error) {
	rest, ok := strings.CutPrefix(loc, "s3://")
	if !ok {
		return "", "", fmt.Errorf("%q must be s3://bucket/key", loc)
	}
	bucket, key, _ = strings.Cut(rest, "/")
	if msg := checkBucketName(bucket); msg != "" {
		return "", "", fmt.Errorf("%q: bucket %q %s", loc, bucket, msg)
	}
	if key == "" {
		return "", "", fmt.Errorf("%q has no object key; use s3://%s/path/to/image.eif", loc, bucket)
	}
	return bucket, key, nil
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
