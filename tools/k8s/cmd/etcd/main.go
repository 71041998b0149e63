// Command etcd is etcd's server, built from the pinned go.etcd.io/etcd/server/v3 release (the same
// entry point as etcd's own main package), so the tests need no downloaded binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
