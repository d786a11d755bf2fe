package agent

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/nitropod/nitropod/contract"
)

// KindDeliver is the stream on which the host delivers a container's
// configuration that is not measured (README "Measured and delivered"): the
// hostname, env from Secrets, ConfigMaps, the downward API and kubelet, and
// the files of its volumes. The host opens it after hello and before start,
// sends one delivery, and waits for init's answer; init checks the delivery
// against the policy its EIF records and answers ok, or error with the
// reason (and then refuses to start the app). Later the host sends updates
// of a volume's files on the same stream (a Secret rotated, a ConfigMap
// edited), each answered the same way.
//
// Frames are the package's JSON frames (WriteFrame): a "delivery" or
// "update" frame, then "file" frames carrying at most DeliverChunk bytes
// of one file each (a larger file continues in frames with Append set),
// then "end". Init bounds what it accepts by contract.HardMaxDeliveredBytes
// and contract.MaxDeliveredFiles whatever the host says.
const KindDeliver = "deliver"

// DeliverChunk is the most file data one frame carries (base64 in JSON
// keeps a frame under MaxFrame).
const DeliverChunk = 512 << 10

// Mount kinds of a DeliveredMount.
const (
	// MountFile is one file written at Path (the sandbox's /etc/hosts,
	// a subPath of a single file); Files holds one entry named "".
	MountFile = "file"
	// MountDir is a volume: an in-memory tmpfs at Path holding Files. With
	// Atomic, files live in a timestamped directory that the ..data symlink
	// names and every top-level name links through it, as kubelet lays out
	// Secret and ConfigMap volumes, so that an update is one rename.
	MountDir = "dir"
	// MountTmpfs is an empty tmpfs at Path (emptyDir), SizeLimit bytes at most.
	MountTmpfs = "tmpfs"
)

// Delivery is what the host delivers before start.
type Delivery struct {
	// Hostname is set inside the enclave ("" keeps the EIF's).
	Hostname string `json:"hostname,omitempty"`
	// Env entries (K=V) are added to the app's environment.
	Env []string `json:"env,omitempty"`
	// Mounts are files and volumes to create.
	Mounts []DeliveredMount `json:"mounts,omitempty"`
}

// DeliveredMount is one file or volume.
type DeliveredMount struct {
	Path      string `json:"path"`
	Kind      string `json:"kind"`
	ReadOnly  bool   `json:"readOnly,omitempty"`
	Atomic    bool   `json:"atomic,omitempty"`
	SizeLimit int64  `json:"sizeLimit,omitempty"`
	// Files are not sent in the delivery frame but as file frames.
	Files []DeliveredFile `json:"-"`
}

// DeliveredFile is one regular file of a mount; Name is relative to the
// mount ("a/b" creates the directory a).
type DeliveredFile struct {
	Name string `json:"name"`
	Mode uint32 `json:"mode"`
	UID  uint32 `json:"uid,omitempty"`
	GID  uint32 `json:"gid,omitempty"`
	Data []byte `json:"data,omitempty"`
}

type deliverFrame struct {
	Type     string         `json:"type"` // delivery, update, file, end, ok, error
	Delivery *Delivery      `json:"delivery,omitempty"`
	Mount    int            `json:"mount,omitempty"`
	File     *DeliveredFile `json:"file,omitempty"`
	Append   bool           `json:"append,omitempty"`
	Error    string         `json:"error,omitempty"`
}

// Size is the number of bytes d carries (what the node's cap counts).
func (d Delivery) Size() int64 {
	n := int64(len(d.Hostname))
	for _, e := range d.Env {
		n += int64(len(e))
	}
	for _, m := range d.Mounts {
		n += FilesSize(m.Files)
	}
	return n
}

// FilesSize is the number of data bytes of files.
func FilesSize(files []DeliveredFile) int64 {
	var n int64
	for _, f := range files {
		n += int64(len(f.Data))
	}
	return n
}

// Deliverer is the host end of a deliver stream.
type Deliverer struct {
	mu sync.Mutex
	s  *yamux.Stream
}

// Deliver opens the deliver stream, sends d and returns once init accepted
// it, or with init's reason (an *DeliveryError) or ctx's.
func (c *Client) Deliver(ctx context.Context, d Delivery) (*Deliverer, error) {
	s, err := c.open(Header{Kind: KindDeliver})
	if err != nil {
		return nil, fmt.Errorf("opening deliver stream: %w", err)
	}
	dl := &Deliverer{s: s}
	head := d
	head.Mounts = make([]DeliveredMount, len(d.Mounts))
	copy(head.Mounts, d.Mounts)
	var files []func() error
	for i, m := range d.Mounts {
		head.Mounts[i].Files = nil
		for _, f := range m.Files {
			files = append(files, func() error { return writeFile(s, i, f) })
		}
	}
	err = dl.exchange(ctx, func() error {
		if err := WriteFrame(s, deliverFrame{Type: "delivery", Delivery: &head}); err != nil {
			return err
		}
		for _, f := range files {
			if err := f(); err != nil {
				return err
			}
		}
		return WriteFrame(s, deliverFrame{Type: "end"})
	})
	if err != nil {
		s.Close()
		return nil, err
	}
	return dl, nil
}

// Update replaces the files of mount (an index into the delivery's Mounts)
// and returns once init swapped them in.
func (dl *Deliverer) Update(ctx context.Context, mount int, files []DeliveredFile) error {
	return dl.exchange(ctx, func() error {
		if err := WriteFrame(dl.s, deliverFrame{Type: "update", Mount: mount}); err != nil {
			return err
		}
		for _, f := range files {
			if err := writeFile(dl.s, mount, f); err != nil {
				return err
			}
		}
		return WriteFrame(dl.s, deliverFrame{Type: "end"})
	})
}

// Close ends the stream.
func (dl *Deliverer) Close() error { return dl.s.Close() }

// DeliveryError is init's refusal of a delivery.
type DeliveryError struct{ Msg string }

func (e *DeliveryError) Error() string {
	return "enclave init refused the delivered configuration: " + e.Msg
}

func (dl *Deliverer) exchange(ctx context.Context, send func() error) error {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { _ = dl.s.SetDeadline(time.Now()) })
	defer stop()
	defer func() { _ = dl.s.SetDeadline(time.Time{}) }()
	errc := make(chan error, 1)
	go func() { errc <- send() }()
	var ans deliverFrame
	rerr := ReadFrame(dl.s, &ans)
	if werr := <-errc; werr != nil && rerr != nil {
		return fmt.Errorf("delivering configuration: %w", errors.Join(werr, ctx.Err()))
	}
	if rerr != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for init to accept the configuration: %w", ctx.Err())
		}
		return fmt.Errorf("waiting for init to accept the configuration: %w (an EIF built by an older nitropod cannot take delivered configuration; rebuild it)", rerr)
	}
	switch ans.Type {
	case "ok":
		return nil
	case "error":
		return &DeliveryError{Msg: ans.Error}
	}
	return fmt.Errorf("unexpected %q answer to a delivery", ans.Type)
}

func writeFile(s *yamux.Stream, mount int, f DeliveredFile) error {
	data := f.Data
	first := true
	for first || len(data) > 0 {
		n := min(len(data), DeliverChunk)
		chunk := f
		chunk.Data = data[:n]
		if err := WriteFrame(s, deliverFrame{Type: "file", Mount: mount, File: &chunk, Append: !first}); err != nil {
			return err
		}
		data = data[n:]
		first = false
	}
	return nil
}

// DeliveryHandler applies deliveries inside the enclave (init).
type DeliveryHandler interface {
	// Deliver checks and applies the delivery; an error is the refusal
	// the host reports.
	Deliver(d Delivery) error
	// Update replaces the files of mount.
	Update(mount int, files []DeliveredFile) error
}

// HandleDeliveries sets the handler of the deliver stream; a stream that
// arrives earlier waits for it.
func (g *Guest) HandleDeliveries(h DeliveryHandler) {
	g.deliverMu.Lock()
	defer g.deliverMu.Unlock()
	if g.deliverH == nil {
		g.deliverH = h
		close(g.deliverCh)
	}
}

func (g *Guest) deliverStream(s *yamux.Stream) {
	defer s.Close()
	if !g.deliverOnce.CompareAndSwap(false, true) {
		return // one deliver stream per enclave
	}
	select {
	case <-g.deliverCh:
	case <-g.closed:
		return
	}
	g.deliverMu.Lock()
	h := g.deliverH
	g.deliverMu.Unlock()
	var total int64
	delivered := false
	var mounts []DeliveredMount
	for {
		var f deliverFrame
		if err := ReadFrame(s, &f); err != nil {
			return
		}
		var err error
		switch {
		case f.Type == "delivery" && !delivered && f.Delivery != nil:
			delivered = true
			var d Delivery
			d, err = readDelivery(s, *f.Delivery, &total)
			if err == nil {
				err = h.Deliver(d)
			}
			if err == nil {
				mounts = d.Mounts
			} else {
				mounts = nil
			}
		case f.Type == "update" && mounts != nil && f.Mount >= 0 && f.Mount < len(mounts):
			var files []DeliveredFile
			var upd int64 // an update replaces the mount's files: its own budget
			files, err = readFiles(s, f.Mount, &upd)
			if err == nil {
				err = h.Update(f.Mount, files)
			}
		default:
			err = fmt.Errorf("unexpected %q frame on the deliver stream", f.Type)
			_ = WriteFrame(s, deliverFrame{Type: "error", Error: err.Error()})
			return
		}
		ans := deliverFrame{Type: "ok"}
		if err != nil {
			ans = deliverFrame{Type: "error", Error: err.Error()}
		}
		if WriteFrame(s, ans) != nil {
			return
		}
	}
}

// readDelivery reads the file frames of a delivery whose head is d.
func readDelivery(s *yamux.Stream, d Delivery, total *int64) (Delivery, error) {
	if len(d.Mounts) > contract.MaxDeliveryNames || len(d.Env) > contract.MaxDeliveryNames*16 {
		return d, fmt.Errorf("%d mounts and %d env entries, more than allowed", len(d.Mounts), len(d.Env))
	}
	*total = d.Size()
	files := 0
	for {
		var f deliverFrame
		if err := ReadFrame(s, &f); err != nil {
			return d, err
		}
		switch f.Type {
		case "end":
			return d, nil
		case "file":
			if f.File == nil || f.Mount < 0 || f.Mount >= len(d.Mounts) {
				return d, errors.New("file frame without a file or for an unknown mount")
			}
			m := &d.Mounts[f.Mount]
			if err := addChunk(&m.Files, f, total, &files); err != nil {
				return d, err
			}
		default:
			return d, fmt.Errorf("unexpected %q frame in a delivery", f.Type)
		}
	}
}

func readFiles(s *yamux.Stream, mount int, total *int64) ([]DeliveredFile, error) {
	var out []DeliveredFile
	files := 0
	for {
		var f deliverFrame
		if err := ReadFrame(s, &f); err != nil {
			return nil, err
		}
		switch f.Type {
		case "end":
			return out, nil
		case "file":
			if f.File == nil || f.Mount != mount {
				return nil, errors.New("file frame for another mount in an update")
			}
			if err := addChunk(&out, f, total, &files); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("unexpected %q frame in an update", f.Type)
		}
	}
}

func addChunk(files *[]DeliveredFile, f deliverFrame, total *int64, count *int) error {
	*total += int64(len(f.File.Data))
	if *total > contract.HardMaxDeliveredBytes {
		return fmt.Errorf("more than %d bytes delivered", contract.HardMaxDeliveredBytes)
	}
	if f.Append {
		if len(*files) == 0 || (*files)[len(*files)-1].Name != f.File.Name {
			return fmt.Errorf("continuation of file %s without its start", contract.Clip(f.File.Name))
		}
		last := &(*files)[len(*files)-1]
		last.Data = append(last.Data, f.File.Data...)
		return nil
	}
	if *count++; *count > contract.MaxDeliveredFiles {
		return fmt.Errorf("more than %d files delivered", contract.MaxDeliveredFiles)
	}
	if err := CheckFileName(f.File.Name); err != nil {
		return err
	}
	*files = append(*files, *f.File)
	return nil
}

// CheckFileName accepts "" (a MountFile's only file) or a relative, clean
// path whose elements do not start with "..".
func CheckFileName(name string) error {
	if name == "" {
		return nil
	}
	if len(name) > contract.MaxMountPathBytes || path.Clean(name) != name || path.IsAbs(name) || strings.ContainsRune(name, 0) {
		return fmt.Errorf("delivered file name %s is not a clean relative path", contract.Clip(name))
	}
	for _, e := range strings.Split(name, "/") {
		if strings.HasPrefix(e, "..") {
			return fmt.Errorf("delivered file name %s has an element starting with \"..\"", contract.Clip(name))
		}
	}
	return nil
}
