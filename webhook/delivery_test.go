package webhook

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	nitropod "github.com/nitropod/nitropod"
	"github.com/nitropod/nitropod/contract"
)

func TestConvertRecordsDelivery(t *testing.T) {
	pod := basePod()
	c := &pod.Spec.Containers[0]
	c.Env = []corev1.EnvVar{
		{Name: "MODE", Value: "prod"},
		{Name: "DB_PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{Key: "pw"}}},
		{Name: "URL", Value: "postgres://app:$(DB_PASSWORD)@db"}, // expanded by kubelet: delivered
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "MODE", Value: "staging"}, // the last definition wins
	}
	c.EnvFrom = []corev1.EnvFromSource{{Prefix: "CFG_", ConfigMapRef: &corev1.ConfigMapEnvSource{}}}
	size := mustQ("64Mi")
	pod.Spec.Volumes = append(pod.Spec.Volumes,
		corev1.Volume{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{}}},
		corev1.Volume{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: &size}}},
		corev1.Volume{Name: "token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}},
	)
	c.VolumeMounts = append(c.VolumeMounts,
		corev1.VolumeMount{Name: "cfg", MountPath: "/etc/app/"},
		corev1.VolumeMount{Name: "scratch", MountPath: "/scratch"},
		corev1.VolumeMount{Name: "token", MountPath: "/var/run/secrets/tokens/t", SubPath: "token"},
	)
	got, _, err := Convert(pod, Config{})
	if err != nil {
		t.Fatal(err)
	}
	all, err := contract.ParseDelivery(got.Annotations[nitropod.DeliveryAnnotation])
	if err != nil {
		t.Fatal(err)
	}
	want := contract.ContainerDelivery{
		Literal: []string{"MODE"},
		Env:     []string{"DB_PASSWORD", "URL", "POD_NAME"},
		EnvFrom: []string{"CFG_"},
		Mounts: []contract.Mount{
			{Path: "/etc/app", Kind: contract.VolumeConfigMap, Volume: "cfg", ReadOnly: true},
			{Path: "/scratch", Kind: contract.VolumeEmptyDir, Volume: "scratch", SizeLimit: 64 << 20},
			{Path: "/var/run/secrets/tokens/t", Kind: contract.VolumeProjected, Volume: "token", SubPath: true, ReadOnly: true},
		},
	}
	if diff := cmp.Diff(want, all["nginx-pod"]); diff != "" {
		t.Errorf("delivery (-want +got):\n%s", diff)
	}
}

// TestConvertRefusesHostVolumes: hostPath and PVC volumes are refused in an
// enclave container with a message naming the volume, and allowed in an
// init container (which runs outside the enclave).
func TestConvertRefusesHostVolumes(t *testing.T) {
	pod := basePod()
	pod.Spec.Volumes = append(pod.Spec.Volumes,
		corev1.Volume{Name: "data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "c"}}},
		corev1.Volume{Name: "host", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var"}}},
	)
	pod.Spec.InitContainers = []corev1.Container{{Name: "prep", Image: "busybox", VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}}
	ok, _, err := Convert(pod.DeepCopy(), Config{})
	if err != nil || ok == nil {
		t.Fatalf("PVC in an init container refused: %v", err)
	}
	c := &pod.Spec.Containers[0]
	c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "data", MountPath: "/data"}, corev1.VolumeMount{Name: "host", MountPath: "/host"})
	_, _, err = Convert(pod, Config{})
	if err == nil {
		t.Fatal("PVC and hostPath in an enclave container accepted")
	}
	for _, want := range []string{"volume data (persistentVolumeClaim) cannot be mounted into an enclave", "volume host (hostPath) cannot be mounted into an enclave"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err, want)
		}
	}
}
