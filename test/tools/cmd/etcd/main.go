// Command etcd is etcd 3.6's server main, built from the Go module proxy so the
// test cluster needs no downloaded release binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
