package s3

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/nitropod/nitropod/eif"
)

// Download streams obj into w with ranged GETs pinned to its ETag (and
// version). A connection that drops or stalls is resumed where it stopped, at
// most MaxAttempts times with exponential backoff. The stream is checked as
// it passes (length, EIF magic, CRC-32); any failure returns an error and the
// caller must discard what was written.
func (c *Client) Download(ctx context.Context, obj Object, w io.Writer) error {
	loc := obj.Location
	if err := c.checkSize(obj); err != nil {
		return err
	}
	chk := &crcWriter{}
	ww := &recordingWriter{w: &capWriter{w: io.MultiWriter(w, chk), left: obj.Size, loc: loc}}
	var off int64
	var lastErr error
	for attempt := 0; off < obj.Size; attempt++ {
		if attempt > 0 {
			if attempt >= c.cfg.MaxAttempts {
				stopped := fmt.Sprintf("the download stopped at byte %d of %d after %d attempts", off, obj.Size, attempt)
				var le *Error
				if errors.As(lastErr, &le) {
					return &Error{Kind: le.Kind, Location: loc.String(), Msg: le.Msg + "; " + stopped, Detail: le.Detail, Err: lastErr}
				}
				return &Error{Kind: KindOther, Location: loc.String(), Msg: fmt.Sprintf("downloading %s: %s", loc, stopped), Err: lastErr}
			}
			if err := sleepCtx(ctx, backoff(attempt, c.cfg.MaxBackoff)); err != nil {
				return c.classify(ctx, err, "downloading", loc)
			}
		}
		n, err := c.getRange(ctx, obj, off, ww)
		off += n
		if err == nil {
			continue
		}
		if ww.err != nil {
			return fmt.Errorf("downloading %s: writing: %w", loc, ww.err)
		}
		if k := KindOf(err); k != "" && k != KindEndpoint && k != KindTimeout && k != KindOther {
			return err // not found, denied, changed: retrying will not help
		}
		if ctx.Err() != nil {
			return c.classify(ctx, ctx.Err(), "downloading", loc)
		}
		lastErr = err
	}
	if off != obj.Size {
		return &Error{Kind: KindCorrupt, Location: loc.String(), Msg: fmt.Sprintf("downloading %s: got %d bytes, the object has %d", loc, off, obj.Size)}
	}
	if err := chk.check(); err != nil {
		return &Error{Kind: KindCorrupt, Location: loc.String(), Msg: fmt.Sprintf("downloading %s: the download is not a valid EIF: check that the object is an EIF, or push it again", loc), Err: err}
	}
	return nil
}

// getRange copies bytes from off to the end into w and returns how many were
// copied. The request is cancelled when no byte arrives for StallTimeout.
func (c *Client) getRange(ctx context.Context, obj Object, off int64, w io.Writer) (int64, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	in := &awss3.GetObjectInput{
		Bucket:  aws.String(obj.Location.Bucket),
		Key:     aws.String(obj.Location.Key),
		IfMatch: aws.String(obj.ETag),
		Range:   aws.String(fmt.Sprintf("bytes=%d-", off)),
	}
	if obj.VersionID != "" && obj.VersionID != "null" {
		in.VersionId = aws.String(obj.VersionID)
	}
	out, err := c.api.GetObject(ctx, in, c.bucketOpts(ctx, obj.Location.Bucket)...)
	if err != nil {
		return 0, c.classify(ctx, err, "downloading", obj.Location)
	}
	defer out.Body.Close()
	stall := time.AfterFunc(c.cfg.StallTimeout, func() { cancel(errStalled) })
	defer stall.Stop()
	buf := make([]byte, 1<<20)
	var n int64
	for {
		m, rerr := out.Body.Read(buf)
		if m > 0 {
			stall.Reset(c.cfg.StallTimeout)
			if _, werr := w.Write(buf[:m]); werr != nil {
				return n, werr
			}
			n += int64(m)
		}
		if errors.Is(rerr, io.EOF) {
			return n, nil
		}
		if rerr != nil {
			if errors.Is(context.Cause(ctx), errStalled) {
				rerr = fmt.Errorf("%w: %w", errStalled, context.DeadlineExceeded)
			}
			return n, c.classify(ctx, rerr, "downloading", obj.Location)
		}
	}
}

var errStalled = errors.New("no data received within the stall timeout")

func backoff(attempt int, max time.Duration) time.Duration {
	d := 200 * time.Millisecond << min(attempt-1, 10)
	d = min(d, max)
	return d/2 + rand.N(d/2+1) // jitter
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// recordingWriter remembers a write error, to tell the destination's
// failures from the network's.
type recordingWriter struct {
	w   io.Writer
	err error
}

func (r *recordingWriter) Write(p []byte) (int, error) {
	n, err := r.w.Write(p)
	if err != nil && r.err == nil {
		r.err = err
	}
	return n, err
}

// capWriter refuses bytes beyond the object's announced size: a store that
// sends more than it announced is not written past it.
type capWriter struct {
	w    io.Writer
	left int64
	loc  Location
}

func (c *capWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > c.left {
		return 0, &Error{Kind: KindCorrupt, Location: c.loc.String(), Msg: fmt.Sprintf("downloading %s: the store sent more bytes than the object's size", c.loc)}
	}
	n, err := c.w.Write(p)
	c.left -= int64(n)
	return n, err
}

// crcWriter computes an EIF's CRC-32 as it streams by: IEEE over the whole
// file except header bytes 544..547, where the expected value is stored
// (docs/EIF-FORMAT.md).
type crcWriter struct {
	n      int64
	hdr    [eif.HeaderSize]byte
	crc    uint32
	stored uint32
}

const crcOffset = eif.HeaderSize - 4

func (c *crcWriter) Write(p []byte) (int, error) {
	total := len(p)
	if c.n < eif.HeaderSize {
		k := copy(c.hdr[c.n:], p)
		c.n += int64(k)
		p = p[k:]
		if c.n == eif.HeaderSize {
			c.crc = crc32.ChecksumIEEE(c.hdr[:crcOffset])
			c.stored = binary.BigEndian.Uint32(c.hdr[crcOffset:])
		}
	}
	if len(p) > 0 {
		c.crc = crc32.Update(c.crc, crc32.IEEETable, p)
		c.n += int64(len(p))
	}
	return total, nil
}

func (c *crcWriter) check() error {
	if c.n < eif.HeaderSize {
		return fmt.Errorf("%d bytes is shorter than an EIF header (%d)", c.n, eif.HeaderSize)
	}
	if string(c.hdr[:4]) != ".eif" {
		return fmt.Errorf("bad magic %q, want \".eif\"", c.hdr[:4])
	}
	if c.crc != c.stored {
		return fmt.Errorf("%w: header says %#08x, content has %#08x", eif.ErrCRC, c.stored, c.crc)
	}
	return nil
}
