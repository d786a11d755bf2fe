package ramdisk

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/nitropod/nitropod/eif/cpio"
)

// OCI whiteout names (image-spec layer.md "Whiteouts").
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// smallFiles are kept in memory during the scan so that the builder can
// resolve user names (they are small; anything larger is not kept).
var smallFiles = map[string]bool{"etc/passwd": true, "etc/group": true}

const maxSmallFile = 1 << 20

// Opener opens a layer's uncompressed tar stream. It is called once per pass.
type Opener func() (io.ReadCloser, error)

// Layers is the flattened filesystem of an image's layers: the index built
// by ScanLayers (metadata only, no file data) from which Write streams the
// customer ramdisk.
type Layers struct {
	layers  []Opener
	root    *node
	sources map[srcKey]*source
}

type srcKey struct{ layer, index int }

// source is a tar entry that supplies a regular file's data; hard links
// share one.
type source struct {
	key  srcKey
	size int64
}

type node struct {
	name     string
	parent   *node
	children map[string]*node // directories only
	layer    int              // layer that last wrote this path
	mode     uint32           // cpio mode: type and permissions
	uid, gid uint32
	mtime    int64
	linkname string
	rdevMaj  uint32
	rdevMin  uint32
	src      *source // regular files
	small    []byte  // content of smallFiles
}

func (n *node) isDir() bool { return n.mode&cpio.ModeType == cpio.TypeDir }

func (n *node) path() string {
	if n.parent == nil {
		return ""
	}
	if p := n.parent.path(); p != "" {
		return p + "/" + n.name
	}
	return n.name
}

// LayerError is a layer entry refused by ScanLayers.
type LayerError struct {
	Layer int    // index of the layer, from 0 (the base)
	Entry string // the entry's name as the tar stream spells it
	Err   error
}

func (e *LayerError) Error() string {
	return fmt.Sprintf("layer %d: entry %q: %v", e.Layer, e.Entry, e.Err)
}

func (e *LayerError) Unwrap() error { return e.Err }

// ErrUnsafePath is wrapped by LayerErrors about entries that would escape
// the root or be written through a symlink.
var ErrUnsafePath = errors.New("unsafe path")

// ScanLayers reads every layer's tar headers (not the data, apart from
// /etc/passwd and /etc/group) in order, base first, and applies them as
// overlayfs would: later entries replace earlier ones, `.wh.NAME` deletes
// NAME from the layers below, `.wh..wh..opq` hides everything the layers
// below put in its directory. Hard links within the result stay hard links.
//
// Untrusted input is contained: names are taken relative to the root; a name
// that climbs above it with ".." is refused; a path whose parent is a symlink
// or file from the same layer (e.g. `etc -> /etc` then `etc/passwd`) is
// refused, and one from a lower layer is replaced by a directory, as
// overlayfs does; files of 4 GiB or more (which an initramfs cannot hold)
// are refused. Memory is proportional to the number of paths, not to their
// size.
func ScanLayers(layers []Opener) (*Layers, error) {
	l := &Layers{layers: layers, sources: map[srcKey]*source{}}
	l.root = &node{mode: cpio.TypeDir | 0o755, children: map[string]*node{}, layer: -1}
	for i, open := range layers {
		if err := l.scan(i, open); err != nil {
			return nil, err
		}
	}
	for _, r := range RequiredDirs {
		if _, ok := l.root.children[r]; !ok {
			l.root.children[r] = &node{name: r, parent: l.root, mode: requiredDirMode(r), children: map[string]*node{}, layer: -1}
		}
	}
	return l, nil
}

func (l *Layers) scan(layer int, open Opener) error {
	rc, err := open()
	if err != nil {
		return fmt.Errorf("opening layer %d: %w", layer, err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for index := 0; ; index++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading layer %d: %w", layer, err)
		}
		if err := l.apply(layer, index, h, tr); err != nil {
			return &LayerError{Layer: layer, Entry: h.Name, Err: err}
		}
	}
}

// cleanName turns a tar name into a path relative to the root ("" is the
// root itself), refusing names that climb out of it.
func cleanName(name string) (string, error) {
	var parts []string
	for _, c := range strings.Split(name, "/") {
		switch c {
		case "", ".":
		case "..":
			if len(parts) == 0 {
				return "", fmt.Errorf("%w: the name climbs above the root", ErrUnsafePath)
			}
			parts = parts[:len(parts)-1]
		default:
			parts = append(parts, c)
		}
	}
	return strings.Join(parts, "/"), nil
}

func (l *Layers) lookup(p string) *node {
	n := l.root
	if p == "" {
		return n
	}
	for _, c := range strings.Split(p, "/") {
		if n.children == nil {
			return nil
		}
		n = n.children[c]
		if n == nil {
			return nil
		}
	}
	return n
}

// dir returns the directory p for an entry of layer, creating missing
// directories and replacing lower layers' non-directories.
func (l *Layers) dir(p string, layer int) (*node, error) {
	n := l.root
	if p == "" {
		return n, nil
	}
	for _, c := range strings.Split(p, "/") {
		child := n.children[c]
		if child != nil && !child.isDir() {
			if child.layer == layer {
				what := "a file"
				if child.mode&cpio.ModeType == cpio.TypeSymlink {
					what = "a symlink to " + child.linkname
				}
				return nil, fmt.Errorf("%w: %s is %s, not a directory (entries are never written through links)", ErrUnsafePath, child.path(), what)
			}
			child = nil
		}
		if child == nil {
			child = &node{name: c, parent: n, mode: cpio.TypeDir | 0o755, children: map[string]*node{}, layer: layer}
			n.children[c] = child
		}
		// The directory is part of this layer too: an opaque marker later in
		// the layer hides only what lower layers put in it.
		child.layer = max(child.layer, layer)
		n = child
	}
	return n, nil
}

// hideLower removes what layers below layer put under d.
func hideLower(d *node, layer int) {
	for name, c := range d.children {
		if c.layer < layer {
			delete(d.children, name)
		} else if c.isDir() {
			hideLower(c, layer)
		}
	}
}

func (l *Layers) apply(layer, index int, h *tar.Header, tr *tar.Reader) error {
	p, err := cleanName(h.Name)
	if err != nil {
		return err
	}
	dirName, base := path.Split(p)
	dirName = strings.TrimSuffix(dirName, "/")
	if strings.HasPrefix(base, whiteoutPrefix) {
		d := l.lookup(dirName)
		if d == nil || !d.isDir() {
			return nil // nothing below to hide
		}
		if base == whiteoutOpaque {
			hideLower(d, layer)
			return nil
		}
		target := strings.TrimPrefix(base, whiteoutPrefix)
		if c := d.children[target]; c != nil && c.layer < layer {
			delete(d.children, target)
		}
		return nil
	}
	n := &node{layer: layer, mode: uint32(h.Mode & 0o7777), uid: clampID(h.Uid), gid: clampID(h.Gid), mtime: h.ModTime.Unix()}
	switch h.Typeflag {
	case tar.TypeReg, tar.TypeGNUSparse: // archive/tar reports the old TypeRegA as TypeReg
		if h.Size > cpio.MaxSize {
			return fmt.Errorf("file is %d bytes; an initramfs (cpio newc) holds files below 4 GiB", h.Size)
		}
		n.mode |= cpio.TypeReg
		n.src = &source{key: srcKey{layer, index}, size: h.Size}
		l.sources[n.src.key] = n.src
		if smallFiles[p] && h.Size <= maxSmallFile {
			b, err := io.ReadAll(tr)
			if err != nil {
				return fmt.Errorf("reading: %w", err)
			}
			n.small = b
		}
	case tar.TypeDir:
		n.mode |= cpio.TypeDir
	case tar.TypeSymlink:
		n.mode |= cpio.TypeSymlink
		n.linkname = h.Linkname
	case tar.TypeChar:
		n.mode |= cpio.TypeChar
		n.rdevMaj, n.rdevMin = uint32(h.Devmajor), uint32(h.Devminor)
	case tar.TypeBlock:
		n.mode |= cpio.TypeBlock
		n.rdevMaj, n.rdevMin = uint32(h.Devmajor), uint32(h.Devminor)
	case tar.TypeFifo:
		n.mode |= cpio.TypeFifo
	case tar.TypeLink:
		tp, err := cleanName(h.Linkname)
		if err != nil {
			return fmt.Errorf("hard link target %q: %w", h.Linkname, err)
		}
		t := l.lookup(tp)
		if t == nil || t.isDir() || tp == p {
			return fmt.Errorf("hard link target %q is not a file in this or a lower layer", h.Linkname)
		}
		// A hard link shares the target's inode: its metadata and data.
		n.mode, n.uid, n.gid, n.mtime = t.mode, t.uid, t.gid, t.mtime
		n.linkname, n.rdevMaj, n.rdevMin, n.src, n.small = t.linkname, t.rdevMaj, t.rdevMin, t.src, t.small
	default:
		return nil // tar extension records are handled by archive/tar; other types have no file
	}
	if p == "" {
		if n.isDir() { // "./": the root's own metadata
			l.root.mode, l.root.uid, l.root.gid, l.root.mtime = n.mode, n.uid, n.gid, n.mtime
		}
		return nil
	}
	d, err := l.dir(dirName, layer)
	if err != nil {
		return err
	}
	n.name, n.parent = base, d
	if old := d.children[base]; old != nil && old.isDir() && n.isDir() {
		old.layer, old.mode, old.uid, old.gid, old.mtime = n.layer, n.mode, n.uid, n.gid, n.mtime
		return nil
	}
	if n.isDir() {
		n.children = map[string]*node{}
	}
	d.children[base] = n
	return nil
}

func clampID(id int) uint32 {
	if id < 0 || id > 1<<32-1 {
		return 0
	}
	return uint32(id)
}

// File returns the content of /etc/passwd or /etc/group (the only files
// whose content the scan keeps), or nil when the flattened image lacks it.
func (l *Layers) File(name string) []byte {
	p, err := cleanName(name)
	if err != nil {
		return nil
	}
	if n := l.lookup(p); n != nil && n.mode&cpio.ModeType == cpio.TypeReg {
		return n.small
	}
	return nil
}

// Write streams the customer ramdisk: the process files, then every
// directory, symlink, device and fifo of the flattened tree in lexical
// order, then the regular files, read from the layers a second time in
// order, each written when its data comes by. Output depends only on the
// layers and proc.
func (l *Layers) Write(w io.Writer, proc Process) error {
	cw := cpio.NewWriter(w)
	if err := writeProcess(cw, proc); err != nil {
		return fmt.Errorf("writing customer ramdisk: %w", err)
	}
	groups := map[*source][]*node{}
	var walk func(n *node, name string) error
	walk = func(n *node, name string) error {
		if n.mode&cpio.ModeType == cpio.TypeReg {
			groups[n.src] = append(groups[n.src], n)
			return nil
		}
		h := &cpio.Header{Name: name, Mode: n.mode, UID: n.uid, GID: n.gid, Mtime: n.mtime, Linkname: n.linkname, RDevMajor: n.rdevMaj, RDevMinor: n.rdevMin}
		if err := cw.WriteHeader(h); err != nil {
			return err
		}
		for _, c := range sortedKeys(n.children) {
			if err := walk(n.children[c], name+"/"+c); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(l.root, RootfsDir); err != nil {
		return fmt.Errorf("writing customer ramdisk: %w", err)
	}
	pending := make([]srcKey, 0, len(groups))
	for s := range groups {
		pending = append(pending, s.key)
	}
	sort.Slice(pending, func(i, j int) bool {
		a, b := pending[i], pending[j]
		return a.layer < b.layer || a.layer == b.layer && a.index < b.index
	})
	for layer := range l.layers {
		if len(pending) == 0 || pending[0].layer != layer {
			continue
		}
		var err error
		pending, err = l.stream(cw, layer, pending, groups)
		if err != nil {
			return fmt.Errorf("writing customer ramdisk: layer %d: %w", layer, err)
		}
	}
	if err := cw.Close(); err != nil {
		return fmt.Errorf("writing customer ramdisk: %w", err)
	}
	return nil
}

// stream reads one layer and writes the files whose data it holds; pending
// is sorted and starts with this layer's sources. It returns the rest.
func (l *Layers) stream(cw *cpio.Writer, layer int, pending []srcKey, groups map[*source][]*node) ([]srcKey, error) {
	rc, err := l.layers[layer]()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for index := 0; len(pending) > 0 && pending[0].layer == layer; index++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("layer changed since it was scanned: it ends before entry %d", pending[0].index)
		}
		if err != nil {
			return nil, err
		}
		if index != pending[0].index {
			continue
		}
		src := l.sources[pending[0]]
		pending = pending[1:]
		if h.Size != src.size {
			return nil, fmt.Errorf("layer changed since it was scanned: entry %q is %d bytes, was %d", h.Name, h.Size, src.size)
		}
		nodes := groups[src]
		var ino uint32
		nlink := uint32(len(nodes))
		if nlink > 1 {
			ino = cw.NextIno()
		}
		for i, n := range nodes {
			hdr := &cpio.Header{Name: RootfsDir + "/" + n.path(), Mode: n.mode, UID: n.uid, GID: n.gid, Mtime: n.mtime, Ino: ino, Nlink: nlink}
			last := i == len(nodes)-1
			if last { // newc keeps the data with the last link
				hdr.Size = src.size
			}
			if err := cw.WriteHeader(hdr); err != nil {
				return nil, err
			}
			if last {
				if _, err := cw.ReadFrom(tr); err != nil {
					return nil, fmt.Errorf("entry %q: %w", h.Name, err)
				}
			}
		}
	}
	return pending, nil
}
