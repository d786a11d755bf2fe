package webhook

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var metaPod = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}

func objectMeta(name string, labels map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Labels: labels}
}

func mustQ(s string) resource.Quantity { return resource.MustParse(s) }
