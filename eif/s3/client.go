package s3

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/nitropod/nitropod/internal/safefile"
)

// Defaults for Config fields left zero.
const (
	DefaultMaxAttempts  = 5
	DefaultMaxBackoff   = 4 * time.Second
	DefaultStallTimeout = 60 * time.Second
	DefaultDialTimeout  = 10 * time.Second
	// DefaultRegion is used with a custom endpoint when no region is configured.
	DefaultRegion = "us-east-1"
	// DefaultMaxObjectSize bounds an EIF download when Config.MaxObjectSize
	// is zero. An EIF holds the kernel and the whole root filesystem of an
	// enclave, whose memory is the upper bound of what it can use.
	DefaultMaxObjectSize = 4 << 30
)

// WebIdentity are per-Pod IRSA credentials: the role to assume with the
// Pod's projected service-account token (AWS_ROLE_ARN and
// AWS_WEB_IDENTITY_TOKEN_FILE in the Pod, the token file resolved to its path
// on the node).
//
// The token file is Pod-controlled: it is read beneath TokenRoot (the source
// of the volume it is on) without leaving it, only when it is a regular file
// of at most MaxTokenSize bytes (package internal/safefile).
type WebIdentity struct {
	RoleARN   string
	TokenFile string
	// TokenRoot is the directory TokenFile is read beneath; empty: the
	// token file's own directory.
	TokenRoot   string
	SessionName string
}

// MaxTokenSize bounds a web identity token file (a service-account JWT is
// about 1 KiB).
const MaxTokenSize = 64 << 10

// tokenFile reads the web identity token with the rules of package
// safefile; it implements stscreds.IdentityTokenRetriever.
type tokenFile struct{ root, rel string }

func newTokenFile(wi *WebIdentity) tokenFile {
	root := wi.TokenRoot
	if root == "" {
		root = filepath.Dir(wi.TokenFile)
	}
	rel, err := filepath.Rel(root, wi.TokenFile)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		// TokenFile is not beneath TokenRoot: read it beneath its own
		// directory.
		root, rel = filepath.Split(wi.TokenFile)
	}
	return tokenFile{root: root, rel: rel}
}

func (t tokenFile) GetIdentityToken() ([]byte, error) {
	b, err := safefile.ReadBeneath(t.root, t.rel, MaxTokenSize)
	if err != nil {
		return nil, fmt.Errorf("reading the web identity token (%s): %w", EnvWebIdentityTokenFile, err)
	}
	return b, nil
}

// Config configures a Client. The zero value uses the AWS default credential
// chain and region resolution against AWS S3.
type Config struct {
	// Region of the bucket; empty: from the environment/profile, else the
	// bucket's own region (AWS) or DefaultRegion (custom endpoint).
	Region string
	// Endpoint is the URL of an S3-compatible store (path-style addressing),
	// e.g. http://127.0.0.1:7070; empty: AWS S3.
	Endpoint string
	// Credentials overrides the credential chain (tests, static keys).
	Credentials aws.CredentialsProvider
	// WebIdentity, when set, assumes this role with a web identity token
	// instead of the node's credentials.
	WebIdentity *WebIdentity
	// MaxAttempts bounds the attempts of each request and the resumptions of
	// one download (default DefaultMaxAttempts).
	MaxAttempts int
	// MaxBackoff caps the exponential backoff between attempts (default DefaultMaxBackoff).
	MaxBackoff time.Duration
	// StallTimeout aborts (and retries) a download that received nothing for
	// this long (default DefaultStallTimeout).
	StallTimeout time.Duration
	// HTTPClient overrides the HTTP client (e.g. to count requests).
	HTTPClient *http.Client
	// MaxObjectSize refuses, before downloading anything, an object larger
	// than this many bytes (default DefaultMaxObjectSize); a store that then
	// sends more than the size it announced is cut off.
	MaxObjectSize int64
}

// Client talks to one S3 endpoint with one identity.
type Client struct {
	cfg      Config
	api      *awss3.Client
	region   string
	explicit bool // region from config or environment

	mu      sync.Mutex
	regions map[string]string // bucket → region (AWS only)
}

// New makes a Client. It reads the environment and shared config files (the
// default chain) but makes no request.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	if cfg.MaxObjectSize <= 0 {
		cfg.MaxObjectSize = DefaultMaxObjectSize
	}
	hc := cfg.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.DialContext = (&net.Dialer{Timeout: DefaultDialTimeout, KeepAlive: 30 * time.Second}).DialContext
		tr.ResponseHeaderTimeout = cfg.StallTimeout
		tr.MaxIdleConnsPerHost = 16
		hc = &http.Client{Transport: tr}
	}
	attempts, backoff := cfg.MaxAttempts, cfg.MaxBackoff
	opts := []func(*config.LoadOptions) error{
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = attempts
				o.MaxBackoff = backoff
				o.RateLimiter = ratelimit.None
			})
		}),
		// S3-compatible stores differ in their support of the newer
		// checksum trailers; the EIF's own CRC protects the content.
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(cfg.Credentials))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("loading aws configuration: %w", err)
	}
	c := &Client{cfg: cfg, region: awsCfg.Region, explicit: awsCfg.Region != "", regions: map[string]string{}}
	if c.region == "" {
		c.region = DefaultRegion
	}
	awsCfg.Region = c.region
	// Set after loading: LoadDefaultConfig would try to adjust a custom
	// client's transport (e.g. for AWS_CA_BUNDLE) and fails on a plain one.
	awsCfg.HTTPClient = hc
	if wi := cfg.WebIdentity; wi != nil {
		if wi.RoleARN == "" || wi.TokenFile == "" {
			return nil, errors.New("web identity credentials need both a role ARN and a token file (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE)")
		}
		stsClient := sts.NewFromConfig(awsCfg)
		awsCfg.Credentials = aws.NewCredentialsCache(stscreds.NewWebIdentityRoleProvider(stsClient, wi.RoleARN, newTokenFile(wi),
			func(o *stscreds.WebIdentityRoleOptions) {
				o.RoleSessionName = wi.SessionName
				if o.RoleSessionName == "" {
					o.RoleSessionName = "nitropod-" + strconv.FormatInt(time.Now().UnixNano(), 36)
				}
			}))
	}
	c.api = awss3.NewFromConfig(awsCfg, func(o *awss3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
			o.UsePathStyle = true
		}
	})
	return c, nil
}

// endpointName names the store in messages.
func (c *Client) endpointName() string {
	if c.cfg.Endpoint != "" {
		return c.cfg.Endpoint
	}
	return "AWS S3"
}

// identity names the credentials used, for access-denied messages.
func (c *Client) identity(ctx context.Context) string {
	if wi := c.cfg.WebIdentity; wi != nil {
		return fmt.Sprintf("role %s (web identity token %s)", wi.RoleARN, wi.TokenFile)
	}
	prov := c.api.Options().Credentials
	if prov == nil {
		return "anonymous access"
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	cr, err := prov.Retrieve(ctx)
	if err != nil {
		return fmt.Sprintf("no usable credentials (%v)", err)
	}
	if cr.Source != "" {
		return fmt.Sprintf("access key %s (from %s)", cr.AccessKeyID, cr.Source)
	}
	return "access key " + cr.AccessKeyID
}

// bucketOpts selects the bucket's region on AWS when none was configured.
func (c *Client) bucketOpts(ctx context.Context, bucket string) []func(*awss3.Options) {
	if c.explicit || c.cfg.Endpoint != "" {
		return nil
	}
	c.mu.Lock()
	r, ok := c.regions[bucket]
	c.mu.Unlock()
	if !ok {
		r = c.lookupRegion(ctx, bucket)
		c.mu.Lock()
		c.regions[bucket] = r
		c.mu.Unlock()
	}
	if r == "" {
		return nil
	}
	return []func(*awss3.Options){func(o *awss3.Options) { o.Region = r }}
}

// lookupRegion asks S3 where a bucket lives: HeadBucket answers with the
// x-amz-bucket-region header even when it fails (301, 403).
func (c *Client) lookupRegion(ctx context.Context, bucket string) string {
	var hdr http.Header
	_, err := c.api.HeadBucket(ctx, &awss3.HeadBucketInput{Bucket: aws.String(bucket)}, func(o *awss3.Options) {
		o.Region = DefaultRegion
		o.RetryMaxAttempts = 1
	})
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) && re.Response != nil {
		hdr = re.Response.Header
	}
	if hdr == nil {
		return ""
	}
	return hdr.Get("X-Amz-Bucket-Region")
}

// Object is what Stat learned about an object.
type Object struct {
	Location  Location
	Size      int64
	ETag      string
	VersionID string
}

// Stat reads the object's size, ETag and version. It uses a one-byte ranged
// GET rather than HEAD, because a GET error names its cause (NoSuchBucket vs
// NoSuchKey, AccessDenied) where HEAD only has a status code.
func (c *Client) Stat(ctx context.Context, loc Location) (Object, error) {
	out, err := c.api.GetObject(ctx, &awss3.GetObjectInput{
		Bucket: aws.String(loc.Bucket),
		Key:    aws.String(loc.Key),
		Range:  aws.String("bytes=0-0"),
	}, c.bucketOpts(ctx, loc.Bucket)...)
	if err != nil {
		var apiErr interface{ ErrorCode() string }
		if errors.As(err, &apiErr) && apiErr.ErrorCode() == "InvalidRange" {
			return Object{}, &Error{Kind: KindCorrupt, Location: loc.String(), Msg: fmt.Sprintf("reading %s: the object is empty, not an EIF: push the EIF again", loc)}
		}
		return Object{}, c.classify(ctx, err, "reading", loc)
	}
	out.Body.Close()
	obj := Object{Location: loc, ETag: aws.ToString(out.ETag), VersionID: aws.ToString(out.VersionId)}
	cr := aws.ToString(out.ContentRange) // "bytes 0-0/SIZE"
	_, total, ok := strings.Cut(cr, "/")
	if n, err := strconv.ParseInt(total, 10, 64); ok && err == nil {
		obj.Size = n
	} else {
		return Object{}, &Error{Kind: KindEndpoint, Location: loc.String(), Msg: fmt.Sprintf("reading %s: %s answered a ranged GET without a usable Content-Range (%q): is the endpoint an S3 store?", loc, c.endpointName(), cr)}
	}
	if obj.ETag == "" {
		return Object{}, &Error{Kind: KindEndpoint, Location: loc.String(), Msg: fmt.Sprintf("reading %s: %s returned no ETag: is the endpoint an S3 store?", loc, c.endpointName())}
	}
	return obj, nil
}

// checkSize refuses an object larger than MaxObjectSize, before a byte of
// it is downloaded.
func (c *Client) checkSize(obj Object) error {
	if obj.Size > c.cfg.MaxObjectSize {
		return &Error{Kind: KindTooLarge, Location: obj.Location.String(),
			Msg: fmt.Sprintf("%s is %d bytes, more than the %d-byte limit for an EIF download: push a smaller image, or raise the limit (s3.max_eif_bytes in the shim config, at most cache_max_bytes)",
				obj.Location, obj.Size, c.cfg.MaxObjectSize)}
	}
	return nil
}
