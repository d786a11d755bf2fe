package webhook

import (
	"path"

	corev1 "k8s.io/api/core/v1"

	"github.com/nitropod/nitropod/contract"
)

// delivery records where an enclave container's env comes from and which
// of its volumes are delivered into the enclave (the nitropod.io/delivery
// annotation, contract.ContainerDelivery), and refuses volume mounts that
// cannot work inside an enclave. licence is the licence Secret's volume,
// which the shim reads on the node and which never enters the enclave.
func (c *converter) delivery(ctr *corev1.Container, licence string) contract.ContainerDelivery {
	var d contract.ContainerDelivery
	lit := map[string]bool{}
	for _, e := range ctr.Env {
		// The last definition of a name wins, as in kubelet.
		lit[e.Name] = e.ValueFrom == nil && contract.Literal(e.Value)
	}
	for _, e := range ctr.Env {
		if _, ok := lit[e.Name]; !ok {
			continue
		}
		if lit[e.Name] {
			d.Literal = append(d.Literal, e.Name)
		} else {
			d.Env = append(d.Env, e.Name)
		}
		delete(lit, e.Name)
	}
	for _, f := range ctr.EnvFrom {
		d.EnvFrom = append(d.EnvFrom, f.Prefix)
	}
	vols := map[string]*corev1.Volume{}
	for i := range c.pod.Spec.Volumes {
		vols[c.pod.Spec.Volumes[i].Name] = &c.pod.Spec.Volumes[i]
	}
	for _, m := range ctr.VolumeMounts {
		if m.Name == licence {
			continue
		}
		v := vols[m.Name]
		if v == nil {
			continue // the apiserver refuses a mount of an undeclared volume
		}
		kind, ok := volumeKind(v)
		if !ok {
			c.deny("container %s: volume %s (%s) cannot be mounted into an enclave: an enclave has its own memory and kernel and reaches no node or network storage; "+
				"use a secret, configMap, downwardAPI, projected or emptyDir volume, or mount it in a container outside the enclave", ctr.Name, m.Name, kind)
			continue
		}
		if m.SubPathExpr != "" {
			c.deny("container %s: volumeMount %s uses subPathExpr, which cannot be delivered into an enclave; use subPath", ctr.Name, m.Name)
			continue
		}
		dm := contract.Mount{Path: path.Clean("/" + m.MountPath), Kind: kind, Volume: m.Name, SubPath: m.SubPath != "", ReadOnly: m.ReadOnly || kind != contract.VolumeEmptyDir}
		if kind == contract.VolumeEmptyDir && v.EmptyDir.SizeLimit != nil {
			dm.SizeLimit = v.EmptyDir.SizeLimit.Value()
		}
		d.Mounts = append(d.Mounts, dm)
	}
	if err := d.Validate(); err != nil {
		c.deny("container %s: %v", ctr.Name, err)
	}
	return d
}

// volumeKind names v's type; ok says whether it can be delivered.
func volumeKind(v *corev1.Volume) (string, bool) {
	s := v.VolumeSource
	switch {
	case s.Secret != nil:
		return contract.VolumeSecret, true
	case s.ConfigMap != nil:
		return contract.VolumeConfigMap, true
	case s.DownwardAPI != nil:
		return contract.VolumeDownwardAPI, true
	case s.Projected != nil:
		return contract.VolumeProjected, true
	case s.EmptyDir != nil:
		return contract.VolumeEmptyDir, true
	case s.HostPath != nil:
		return "hostPath", false
	case s.PersistentVolumeClaim != nil:
		return "persistentVolumeClaim", false
	case s.Ephemeral != nil:
		return "ephemeral", false
	case s.CSI != nil:
		return "csi", false
	case s.NFS != nil:
		return "nfs", false
	case s.Image != nil:
		return "image", false
	}
	return "unsupported type", false
}
