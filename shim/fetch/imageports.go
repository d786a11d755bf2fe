package fetch

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	"github.com/containerd/containerd/namespaces"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Media types of Docker's image format, which shares the OCI JSON layout.
const (
	dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	dockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
)

// maxImageBlob bounds the manifests and configs read from containerd.
const maxImageBlob = 4 << 20

// ImageExposedPorts asks containerd (at its gRPC address) for the config of
// image in namespace ns and returns the TCP ports it EXPOSEs: what the
// launcher forwards when the webhook recorded no ports for the container.
func ImageExposedPorts(ctx context.Context, address, ns, image string) ([]uint16, error) {
	// A local lookup, but containerd can be slow to answer on a busy node
	// (seen past 10 s with ten emulated enclaves booting on two cores), and
	// a failed lookup means no port is forwarded.
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(ctx, ns), time.Minute)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connecting to containerd: %w", err)
	}
	defer conn.Close()
	img, err := imagesapi.NewImagesClient(conn).Get(ctx, &imagesapi.GetImageRequest{Name: image})
	if err != nil {
		return nil, fmt.Errorf("looking up image %s: %w", image, err)
	}
	cc := contentapi.NewContentClient(conn)
	desc := img.Image.Target
	for range 4 { // index → manifest → config
		b, err := readBlob(ctx, cc, desc.Digest, desc.Size)
		if err != nil {
			return nil, err
		}
		switch desc.MediaType {
		case ocispec.MediaTypeImageIndex, dockerManifestList:
			var idx ocispec.Index
			if err := json.Unmarshal(b, &idx); err != nil {
				return nil, fmt.Errorf("parsing image index: %w", err)
			}
			m, err := pickManifest(idx.Manifests)
			if err != nil {
				return nil, fmt.Errorf("image %s: %w", image, err)
			}
			desc.Digest, desc.Size, desc.MediaType = m.Digest.String(), m.Size, m.MediaType
		case ocispec.MediaTypeImageManifest, dockerManifest:
			var m ocispec.Manifest
			if err := json.Unmarshal(b, &m); err != nil {
				return nil, fmt.Errorf("parsing image manifest: %w", err)
			}
			desc.Digest, desc.Size, desc.MediaType = m.Config.Digest.String(), m.Config.Size, "config"
		case "config":
			var c ocispec.Image
			if err := json.Unmarshal(b, &c); err != nil {
				return nil, fmt.Errorf("parsing image config: %w", err)
			}
			return ExposedTCPPorts(c.Config.ExposedPorts), nil
		default:
			return nil, fmt.Errorf("image %s: unsupported media type %q", image, desc.MediaType)
		}
	}
	return nil, fmt.Errorf("image %s: manifest nesting too deep", image)
}

func pickManifest(ms []ocispec.Descriptor) (ocispec.Descriptor, error) {
	for _, m := range ms {
		if m.Platform == nil || (m.Platform.OS == "linux" && m.Platform.Architecture == runtime.GOARCH) {
			return m, nil
		}
	}
	return ocispec.Descriptor{}, errors.New("no linux/" + runtime.GOARCH + " manifest in the image index")
}

func readBlob(ctx context.Context, cc contentapi.ContentClient, dgst string, size int64) ([]byte, error) {
	if size > maxImageBlob {
		return nil, fmt.Errorf("image blob %s is %d bytes, more than a manifest or config should be", dgst, size)
	}
	rc, err := cc.Read(ctx, &contentapi.ReadContentRequest{Digest: dgst})
	if err != nil {
		return nil, fmt.Errorf("reading image blob %s: %w", dgst, err)
	}
	var buf bytes.Buffer
	for {
		resp, err := rc.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading image blob %s: %w", dgst, err)
		}
		buf.Write(resp.Data)
		if buf.Len() > maxImageBlob {
			return nil, fmt.Errorf("image blob %s is larger than %d bytes", dgst, maxImageBlob)
		}
	}
	return buf.Bytes(), nil
}

// ExposedTCPPorts returns the TCP ports of an image config's ExposedPorts
// ("80/tcp", "8080", "53/udp"), sorted.
func ExposedTCPPorts(exposed map[string]struct{}) []uint16 {
	var out []uint16
	for k := range exposed {
		port, proto, _ := strings.Cut(k, "/")
		if proto != "" && proto != "tcp" {
			continue
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			continue
		}
		out = append(out, uint16(n))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
