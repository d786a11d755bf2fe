package s3

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// Kind classifies an S3 failure by what the user has to do about it.
type Kind string

// Kinds of failure.
const (
	KindInvalidLocation Kind = "InvalidLocation"
	KindNotFound        Kind = "NotFound"     // NoSuchBucket, NoSuchKey
	KindAccessDenied    Kind = "AccessDenied" // also bad credentials
	KindEndpoint        Kind = "Endpoint"     // cannot reach the store, or it is not S3
	KindTimeout         Kind = "Timeout"
	KindCorrupt         Kind = "Corrupt"      // size, CRC or structure of the download
	KindChanged         Kind = "Changed"      // the object was replaced during the download
	KindVerification    Kind = "Verification" // expected PCRs, signature
	KindTooLarge        Kind = "TooLarge"     // larger than Config.MaxObjectSize
	KindNotAllowed      Kind = "NotAllowed"   // node credentials for a bucket not allowed (NodeIdentityAllowed)
	KindOther           Kind = "Other"
)

// Error is a failed S3 operation. Msg is written for the Pod's events and the
// CLI: it names the location and what to fix.
type Error struct {
	Kind     Kind
	Location string
	Msg      string
	// Detail, when set, replaces Err's text in Error (the store's error
	// code and message rather than the SDK's whole chain).
	Detail string
	Err    error
}

func (e *Error) Error() string {
	switch {
	case e.Detail != "":
		return e.Msg + " (" + e.Detail + ")"
	case e.Err != nil:
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the Kind of an *Error in err's chain, or "".
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return ""
}

// classify turns an SDK error into an *Error. op is what was being done
// ("reading", "uploading").
func (c *Client) classify(ctx context.Context, err error, op string, loc Location) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	e := &Error{Location: loc.String(), Err: err}
	var apiErr smithy.APIError
	var netErr net.Error
	var opErr *net.OpError
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &apiErr):
		code := apiErr.ErrorCode()
		e.Detail = code
		if m := apiErr.ErrorMessage(); m != "" {
			e.Detail += ": " + m
		}
		switch code {
		case "NoSuchBucket":
			e.Kind, e.Msg = KindNotFound, fmt.Sprintf("%s %s: bucket %q does not exist at %s: check the bucket name in the image location", op, loc, loc.Bucket, c.endpointName())
		case "NoSuchKey", "NotFound":
			e.Kind, e.Msg = KindNotFound, fmt.Sprintf("%s %s: no object %q in bucket %q at %s: check the key in the image location, or push the EIF first", op, loc, loc.Key, loc.Bucket, c.endpointName())
		case "AccessDenied", "Forbidden", "AllAccessDisabled":
			e.Kind, e.Msg = KindAccessDenied, fmt.Sprintf("%s %s: access denied for %s: grant it s3:GetObject (and s3:PutObject to push) on this object", op, loc, c.identity(ctx))
		case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId",
			"XAdminUserNotFound": // versitygw: unknown access key
			e.Kind, e.Msg = KindAccessDenied, fmt.Sprintf("%s %s: the store rejected the credentials of %s: check the access key and secret, or the Pod's service account role", op, loc, c.identity(ctx))
		case "PreconditionFailed":
			e.Kind, e.Msg = KindChanged, fmt.Sprintf("%s %s: the object was replaced during the download: start the container again", op, loc)
		case "SlowDown", "ServiceUnavailable", "RequestLimitExceeded", "Throttling", "ThrottlingException":
			attempts := ""
			var me *retry.MaxAttemptsError
			if errors.As(err, &me) {
				attempts = fmt.Sprintf(" %d times", me.Attempt)
			}
			e.Kind, e.Msg = KindOther, fmt.Sprintf("%s %s: %s throttled the request%s (%s): the container is retried by kubelet; if it persists, spread out the Pods that share this EIF or raise the bucket's request rate", op, loc, c.endpointName(), attempts, code)
		case "PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException":
			e.Kind, e.Msg = KindEndpoint, fmt.Sprintf("%s %s: bucket %q is in another region than %q: set the region in the configuration", op, loc, loc.Bucket, c.region)
		default:
			var re *smithyhttp.ResponseError
			if errors.As(err, &re) && re.HTTPStatusCode() == 403 {
				e.Kind, e.Msg = KindAccessDenied, fmt.Sprintf("%s %s: access denied (%s) for %s: check the credentials and the bucket policy", op, loc, code, c.identity(ctx))
			} else {
				e.Kind, e.Msg = KindOther, fmt.Sprintf("%s %s at %s failed (%s)", op, loc, c.endpointName(), code)
			}
		}
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout()):
		e.Kind, e.Msg = KindTimeout, fmt.Sprintf("%s %s: timed out talking to %s: check that the endpoint is reachable from the node, or raise the timeout", op, loc, c.endpointName())
	case errors.Is(err, context.Canceled):
		e.Kind, e.Msg = KindOther, fmt.Sprintf("%s %s: cancelled", op, loc)
	case errors.As(err, &dnsErr) || errors.As(err, &opErr) || isConnErr(err):
		e.Kind, e.Msg = KindEndpoint, fmt.Sprintf("%s %s: cannot reach the S3 endpoint %s: check the endpoint setting and that the store is running", op, loc, c.endpointName())
	default:
		e.Kind, e.Msg = KindOther, fmt.Sprintf("%s %s at %s failed", op, loc, c.endpointName())
	}
	if e.Detail == "" {
		e.Detail = transportDetail(err)
	}
	return e
}

// transportDetail is the network error under the SDK's wrapping, with the
// number of attempts made: "dial tcp 127.0.0.1:9: connect: connection
// refused, 3 attempts".
func transportDetail(err error) string {
	var ue *url.Error
	if !errors.As(err, &ue) || ue.Err == nil {
		return ""
	}
	d := ue.Err.Error()
	var me *retry.MaxAttemptsError
	if errors.As(err, &me) {
		d += fmt.Sprintf(", %d attempts", me.Attempt)
	}
	return d
}

func isConnErr(err error) bool {
	s := err.Error()
	return strings.Contains(s, "connection refused") || strings.Contains(s, "connection reset") ||
		strings.Contains(s, "unexpected EOF") || strings.Contains(s, "broken pipe") || strings.Contains(s, "no such host")
}
