// Package images builds the container images the e2e cluster serves from its
// loopback registry: nginx:latest made from Debian's nginx packages (a real
// nginx that serves its welcome page), busybox from Debian's busybox-static,
// and a tiny static Go pause image for pod sandboxes. Nothing is pulled from
// a container registry.
package images

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// NginxPackages are the Debian packages unpacked into the nginx image: nginx,
// its configuration package and the shared libraries a scratch rootfs lacks.
var NginxPackages = []string{"nginx", "nginx-common", "libc6", "libcrypt1", "libpcre2-8-0", "libssl3", "zlib1g"}

// epoch is the fixed timestamp of every file and image, so rebuilding an
// image from the same inputs gives the same digest (and the EIF cache hits).
var epoch = time.Unix(0, 0).UTC()

// nginxConf runs nginx in the foreground (daemon off comes from the command
// line, like the official image), logs to stdout/stderr and serves Debian's
// welcome page on port 80.
const nginxConf = `user root;
worker_processes 1;
pid /run/nginx.pid;
error_log /dev/stderr notice;
events { worker_connections 256; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /dev/stdout;
    sendfile on;
    server {
        listen 80 default_server;
        root /var/www/html;
        index index.html index.nginx-debian.html;
        location / { try_files $uri $uri/ =404; }
    }
}
`

// DownloadDebs fetches pkgs with `apt-get download` into dir, skipping those
// already there, and returns the .deb paths in the order of pkgs.
func DownloadDebs(dir string, pkgs []string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating deb cache: %w", err)
	}
	var paths, missing []string
	for _, p := range pkgs {
		m, _ := filepath.Glob(filepath.Join(dir, p+"_*.deb"))
		if len(m) == 0 {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		cmd := exec.Command("apt-get", append([]string{"download", "-q"}, missing...)...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("apt-get download %s (is the apt archive reachable? run apt-get update): %w\n%s", strings.Join(missing, " "), err, out)
		}
	}
	for _, p := range pkgs {
		m, _ := filepath.Glob(filepath.Join(dir, p+"_*.deb"))
		if len(m) == 0 {
			return nil, fmt.Errorf("apt-get download left no %s_*.deb in %s", p, dir)
		}
		sort.Strings(m)
		paths = append(paths, m[len(m)-1])
	}
	return paths, nil
}

// NginxRootfs unpacks the nginx packages (cached in debDir) into rootfs and
// adds what the packages' maintainer scripts would: users, log and state
// directories, the welcome page and a foreground, log-to-stdio config.
func NginxRootfs(debDir, rootfs string) error {
	debs, err := DownloadDebs(debDir, NginxPackages)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", rootfs, err)
	}
	for _, d := range debs {
		if out, err := exec.Command("dpkg-deb", "-x", d, rootfs).CombinedOutput(); err != nil {
			return fmt.Errorf("unpacking %s: %w\n%s", d, err, out)
		}
	}
	files := map[string]string{
		"etc/nginx/nginx.conf":     nginxConf,
		"etc/passwd":               "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
		"etc/group":                "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n",
		"etc/nsswitch.conf":        "passwd: files\ngroup: files\nhosts: files dns\n",
		"var/www/html/.keep":       "",
		"var/log/nginx/.keep":      "",
		"var/lib/nginx/body/.keep": "",
		"run/.keep":                "",
		"tmp/.keep":                "",
	}
	for p, content := range files {
		full := filepath.Join(rootfs, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", filepath.Dir(full), err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
	}
	// nginx-common's postinst copies the welcome page into the web root.
	welcome, err := os.ReadFile(filepath.Join(rootfs, "usr/share/nginx/html/index.html"))
	if err != nil {
		return fmt.Errorf("reading nginx welcome page from nginx-common: %w", err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "var/www/html/index.nginx-debian.html"), welcome, 0o644); err != nil {
		return fmt.Errorf("writing welcome page: %w", err)
	}
	return nil
}

// Nginx is nginx:latest from Debian's packages: CMD nginx -g "daemon off;",
// port 80, stop signal SIGQUIT, like the official image.
func Nginx(debDir, workDir string) (v1.Image, error) {
	rootfs := filepath.Join(workDir, "nginx-rootfs")
	if err := os.RemoveAll(rootfs); err != nil {
		return nil, fmt.Errorf("cleaning %s: %w", rootfs, err)
	}
	if err := NginxRootfs(debDir, rootfs); err != nil {
		return nil, err
	}
	return FromDir(rootfs, v1.Config{
		Cmd:          []string{"nginx", "-g", "daemon off;"},
		Env:          []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		ExposedPorts: map[string]struct{}{"80/tcp": {}},
		StopSignal:   "SIGQUIT",
	})
}

// Busybox is busybox:latest: Debian's static busybox with its applet links,
// CMD sh.
func Busybox(busyboxPath, workDir string) (v1.Image, error) {
	rootfs := filepath.Join(workDir, "busybox-rootfs")
	if err := os.RemoveAll(rootfs); err != nil {
		return nil, fmt.Errorf("cleaning %s: %w", rootfs, err)
	}
	if err := BusyboxRootfs(busyboxPath, rootfs); err != nil {
		return nil, err
	}
	return FromDir(rootfs, v1.Config{
		Cmd: []string{"sh"},
		Env: []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
	})
}

// BusyboxRootfs writes a busybox rootfs: /bin/busybox, a link per applet,
// /etc/passwd and the usual empty directories.
func BusyboxRootfs(busyboxPath, rootfs string) error {
	bin := filepath.Join(rootfs, "bin")
	for _, d := range []string{"bin", "etc", "tmp", "proc", "sys", "dev", "root", "var/www"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	data, err := os.ReadFile(busyboxPath)
	if err != nil {
		return fmt.Errorf("reading busybox (apt-get install busybox-static): %w", err)
	}
	if err := os.WriteFile(filepath.Join(bin, "busybox"), data, 0o755); err != nil {
		return fmt.Errorf("writing busybox: %w", err)
	}
	out, err := exec.Command(busyboxPath, "--list").Output()
	if err != nil {
		return fmt.Errorf("listing busybox applets: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(bin, applet)); err != nil && !os.IsExist(err) {
			return fmt.Errorf("linking applet %s: %w", applet, err)
		}
	}
	etc := map[string]string{
		"passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"group":  "root:x:0:\nnogroup:x:65534:\n",
	}
	for n, c := range etc {
		if err := os.WriteFile(filepath.Join(rootfs, "etc", n), []byte(c), 0o644); err != nil {
			return fmt.Errorf("writing /etc/%s: %w", n, err)
		}
	}
	return nil
}

// Pause builds the pause program (this package's pause/ command) statically
// and wraps it as an image with ENTRYPOINT /pause.
func Pause(workDir string) (v1.Image, error) {
	rootfs := filepath.Join(workDir, "pause-rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", rootfs, err)
	}
	_, self, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", filepath.Join(rootfs, "pause"), "./pause")
	cmd.Dir = filepath.Dir(self)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building pause: %w\n%s", err, out)
	}
	return FromDir(rootfs, v1.Config{Entrypoint: []string{"/pause"}})
}

// FromDir makes a single-layer linux/amd64 image of dir with config cfg.
func FromDir(dir string, cfg v1.Config) (v1.Image, error) {
	var buf bytes.Buffer
	if err := TarDir(&buf, dir); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("making layer of %s: %w", dir, err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("adding layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Architecture = "amd64"
	cf.OS = "linux"
	cf.Created = v1.Time{Time: epoch}
	cf.Config = cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("setting config: %w", err)
	}
	return img, nil
}

// TarDir writes dir as a tar stream (sorted, fixed timestamps, uid/gid 0).
func TarDir(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if d.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = epoch, time.Time{}, time.Time{}
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("archiving %s: %w", dir, err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("archiving %s: %w", dir, err)
	}
	return nil
}

// Push writes img to the plain-HTTP registry at host (e.g. 127.0.0.1:5000)
// as repo:tag and returns its digest.
func Push(img v1.Image, host, repoTag string) (v1.Hash, error) {
	ref, err := name.ParseReference(host+"/"+repoTag, name.Insecure)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("parsing image reference %q: %w", repoTag, err)
	}
	if err := remote.Write(ref, img); err != nil {
		return v1.Hash{}, fmt.Errorf("pushing %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("digest of %s: %w", ref, err)
	}
	return d, nil
}

// PushAll builds nginx:latest, busybox:latest and the pause image (pauseRef
// without its registry host, e.g. "pause:3.10") and pushes them to the
// registry at host under the repositories containerd's docker.io and
// registry.k8s.io mirrors look up. debDir caches Debian packages; workDir
// holds the unpacked root filesystems.
func PushAll(host, pauseRef, debDir, workDir string) error {
	nginx, err := Nginx(debDir, workDir)
	if err != nil {
		return err
	}
	busybox, err := Busybox("/bin/busybox", workDir)
	if err != nil {
		return err
	}
	pause, err := Pause(workDir)
	if err != nil {
		return err
	}
	for _, p := range []struct {
		repo string
		img  v1.Image
	}{
		{"library/nginx:latest", nginx},
		{"library/busybox:latest", busybox},
		{pauseRef, pause},
	} {
		if _, err := Push(p.img, host, p.repo); err != nil {
			return err
		}
	}
	return nil
}

// NitropodBinaries are the executables the chart's image carries in
// /opt/nitropod/bin.
var NitropodBinaries = []string{"nitropod-webhook", "nitropod-device-plugin", "containerd-shim-nitro-v1", "nitropod-launcher", "nitropod-fetch", "nitropod-init", "nitropod"}

// Nitropod is the chart's image for tests: a busybox rootfs (the node
// installer's /bin/sh, cp, nsenter) plus nitropod's binaries from binDir in
// /opt/nitropod/bin.
func Nitropod(binDir, busyboxPath, workDir string) (v1.Image, error) {
	rootfs := filepath.Join(workDir, "nitropod-rootfs")
	if err := os.RemoveAll(rootfs); err != nil {
		return nil, fmt.Errorf("cleaning %s: %w", rootfs, err)
	}
	if err := BusyboxRootfs(busyboxPath, rootfs); err != nil {
		return nil, err
	}
	dst := filepath.Join(rootfs, "opt", "nitropod", "bin")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dst, err)
	}
	for _, b := range NitropodBinaries {
		data, err := os.ReadFile(filepath.Join(binDir, b))
		if err != nil {
			return nil, fmt.Errorf("reading %s (make build): %w", b, err)
		}
		if err := os.WriteFile(filepath.Join(dst, b), data, 0o755); err != nil {
			return nil, fmt.Errorf("writing %s: %w", b, err)
		}
	}
	return FromDir(rootfs, v1.Config{
		Env: []string{"PATH=/opt/nitropod/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Cmd: []string{"/opt/nitropod/bin/nitropod", "--help"},
	})
}
