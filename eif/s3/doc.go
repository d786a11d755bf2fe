// Package s3 fetches prebuilt Enclave Image Files from S3 (or an
// S3-compatible store) and pushes them there: the
// `nitro.k8s.anjuna.io/imageLocation: "s3://bucket/key"` annotation, and
// `nitropod eif push|pull`.
//
// A Client is made from a Config: the AWS default credential chain (node
// role, environment, web identity), or per-Pod IRSA credentials
// (Config.WebIdentity, from PodWebIdentity of the container's OCI spec; the
// STS exchange itself is not exercised by the tests, which have no STS), an
// optional region (else the bucket's region, or
// us-east-1 with a custom endpoint) and an optional endpoint for
// S3-compatible stores (path-style addressing).
//
// Fetch resolves a location into the node's EIF cache (eifcache): it asks the
// store for the object's ETag and version, keys the cache entry by bucket,
// key, version and ETag (so an unchanged object is a cache hit and a replaced
// one is downloaded again), and downloads with ranged GETs that resume after a
// dropped connection, retried with bounded exponential backoff on throttling,
// 5xx and connection errors, and pinned to the ETag with If-Match. The
// download is checked while it streams (size, EIF magic, CRC-32) and then
// read back (eif.File.Verify: CRC, measurements, signature) before the cache
// publishes it, so a failed or corrupt download leaves nothing in the cache.
// The cache makes concurrent fetches of one object download it once.
//
// Objects larger than Config.MaxObjectSize are refused from their size,
// before anything is downloaded, and a store that sends more than the size it
// announced is cut off. CheckNodeIdentity is the shim's rule for Pods
// without their own identity: the node's credentials only for allowed
// buckets. The Pod's token file is read beneath its volume (WebIdentity).
//
// Failures a user can act on are *Error values with a Kind and a message
// that names the location, the endpoint or the identity used, and the fix.
package s3
