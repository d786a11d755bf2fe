//go:build tools

// Package tools pins the commands that hack/build-tools.sh builds for the
// test cluster: Kubernetes, an OCI registry, an S3 server, crictl and helm.
// It is a separate module so none of these reach nitropod's own go.mod.
package tools

import (
	_ "github.com/distribution/distribution/v3/cmd/registry"
	_ "github.com/nitropod/nitropod/test/tools/cmd/etcd"
	_ "github.com/versity/versitygw/cmd/versitygw"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
