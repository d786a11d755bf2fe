package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
	"github.com/nitropod/nitropod/eif"
	"github.com/nitropod/nitropod/eif/build"
	"github.com/nitropod/nitropod/eif/s3"
	"github.com/nitropod/nitropod/eifcache"
	"github.com/nitropod/nitropod/license"
)

// builderVersion is part of every cache key; bump it when the EIF builder
// changes what it writes for the same inputs.
const builderVersion = build.Tool + "-eif-build-v2" // v2: fixed rootfs root metadata, delivery policy

// checkLicense is the licence hook: it runs before anything is built or
// booted, against the licence the Pod mounts (package license).
func checkLicense(ctx context.Context, spec *specs.Spec, cfg Config, enclavesInPod, enclavesOnNode int) error {
	pol := license.Policy{
		Enforce: cfg.License.Enforce,
		Cluster: cfg.License.ClusterID,
		OnIgnored: func(err error) {
			log.G(ctx).WithError(err).Warn("licence check failed (not enforced)")
		},
	}
	if cfg.License.KeysFile != "" {
		b, err := os.ReadFile(cfg.License.KeysFile)
		if err != nil {
			return fmt.Errorf("reading licence keys (license.keys_file in the shim config): %w", err)
		}
		if pol.Keys, err = license.ParsePublicKeys(b); err != nil {
			return fmt.Errorf("parsing licence keys %s: %w", cfg.License.KeysFile, err)
		}
	} else if cfg.License.Enforce {
		return errors.New("shim config: license.enforce is set but license.keys_file is empty: name the trusted issuer keys")
	}
	c := license.ContextFromSpec(spec)
	c.EnclavesInPod = enclavesInPod
	c.EnclavesOnNode = enclavesOnNode
	if _, err := pol.Check(spec, c, time.Now()); err != nil {
		return fmt.Errorf("licence: %w", err)
	}
	return nil
}

// fetchPrebuilt is the EIF-source hook for nitro.k8s.anjuna.io/imageLocation:
// the prebuilt EIF is downloaded into the node cache (package eif/s3) and
// checked against the Pod's expected PCRs.
func fetchPrebuilt(ctx context.Context, cache *eifcache.Cache, spec *specs.Spec, plan Plan, cfg Config) (*eifcache.Entry, error) {
	loc, err := s3.ParseLocation(plan.ImageLocation)
	if err != nil {
		return nil, fmt.Errorf("annotation %s: %w", nitropod.ImageLocationAnnotation, err)
	}
	// A Pod with IRSA env (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE in a
	// spec mount) downloads with its own identity, not the node's.
	wi, err := s3.PodWebIdentity(spec)
	if err != nil {
		return nil, fmt.Errorf("pod web identity for %s: %w", plan.ImageLocation, err)
	}
	// Without one, the node's credentials are used only for buckets the
	// operator allowed.
	if err := s3.CheckNodeIdentity(loc, wi, cfg.S3.NodeIdentityBuckets); err != nil {
		return nil, err
	}
	cl, err := s3.New(ctx, s3.Config{Endpoint: cfg.S3.Endpoint, Region: cfg.S3.Region, WebIdentity: wi, MaxObjectSize: cfg.MaxEIFDownload()})
	if err != nil {
		return nil, fmt.Errorf("s3 client: %w", err)
	}
	res, err := cl.Fetch(ctx, cache, loc, s3.Expect{
		PCR0: spec.Annotations[nitropod.ExpectedPCR0Annotation],
		PCR8: spec.Annotations[nitropod.ExpectedPCR8Annotation],
	})
	if err != nil {
		return nil, fmt.Errorf("fetching prebuilt EIF %s: %w", plan.ImageLocation, err)
	}
	return res.Entry, nil
}

// sizeEnclave sizes a CRI container's enclave from the devices kubelet says
// the device plugin allocated to it (nitropod-fetch pod-devices asks
// kubelet's pod-resources API). Nothing the Pod's author wrote takes part:
// not its env, not its annotations. Containers not created through CRI keep
// the config defaults, as does every container when allocation.source is
// "config".
func sizeEnclave(ctx context.Context, cfg Config, spec *specs.Spec, plan *Plan) error {
	if cfg.Allocation.Source != AllocationKubelet || spec.Annotations[nitropod.CRIContainerType] != nitropod.CRIContainerTypeApp {
		return nil
	}
	if !plan.Pod.IsSet() {
		return fmt.Errorf("the container spec lacks containerd's CRI annotations %s, %s and %s, so its enclave allocation cannot be looked up in kubelet",
			nitropod.CRISandboxNamespace, nitropod.CRISandboxName, nitropod.CRIContainerName)
	}
	var devs map[string][]string
	if err := runFetch(ctx, cfg, &devs, "pod-devices", cfg.Allocation.PodResourcesSocket, plan.Pod.Namespace, plan.Pod.Name, plan.Pod.Container); err != nil {
		return fmt.Errorf("reading the enclave allocation of %s from kubelet (allocation.pod_resources_socket in the shim config): %w", plan.Pod, err)
	}
	a, err := contract.AllocationFromDevices(devs)
	if err != nil {
		return fmt.Errorf("enclave allocation of %s: %w", plan.Pod, err)
	}
	if err := plan.ApplyAllocation(a); err != nil {
		return fmt.Errorf("enclave allocation of %s: %w", plan.Pod, err)
	}
	log.G(ctx).WithFields(log.Fields{"pod": plan.Pod.Namespace + "/" + plan.Pod.Name, "container": plan.Pod.Container,
		"cpus": contract.JoinCPUIDs(a.CPUIDs), "memory_mib": a.MemoryMiB, "slot": a.Slot}).Info("enclave sized from kubelet's allocation")
	return nil
}

// imagePorts returns the TCP ports the container's image EXPOSEs, looked
// up by nitropod-fetch in containerd's image store.
func imagePorts(ctx context.Context, cfg Config, address, ns, image string) ([]uint16, error) {
	var ports []uint16
	if err := runFetch(ctx, cfg, &ports, "image-ports", address, ns, image); err != nil {
		return nil, err
	}
	return ports, nil
}

// FetchBinary is the shim's helper for image lookups.
const FetchBinary = "nitropod-fetch"

// runFetch runs nitropod-fetch and decodes its JSON answer into out.
func runFetch(ctx context.Context, cfg Config, out any, args ...string) error {
	bin, err := findHelper(cfg.FetchPath, FetchBinary, "fetch_path")
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return errors.New(msg)
	}
	if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
		return fmt.Errorf("reading %s output %q: %w", FetchBinary, stdout.String(), err)
	}
	return nil
}

// buildEIF streams the EIF built from rootfs and plan.Process into w.
func buildEIF(_ context.Context, w io.Writer, rootfs string, plan Plan, cfg Config, name string) error {
	ws, ok := w.(io.WriteSeeker)
	if !ok {
		return errors.New("building eif: the cache did not hand out a seekable file")
	}
	_, err := BuildEIF(ws, rootfs, plan, cfg, name)
	return err
}

// BuildEIF is the node's EIF recipe: the container's rootfs and planned
// process with the configured blob set and init, a debug kernel command
// line for debug enclaves. `nitropod pcr` calls it too, so that its
// measurements are the node's.
func BuildEIF(w io.WriteSeeker, rootfs string, plan Plan, cfg Config, name string) (eif.Measurements, error) {
	return build.FromRootfs(w, rootfs, plan.Process, build.Options{
		Blobs:        cfg.BlobsDir,
		Init:         cfg.InitPath,
		DebugCmdline: plan.Debug,
		Name:         name,
		BuildTime:    time.Now().UTC(),
	})
}
