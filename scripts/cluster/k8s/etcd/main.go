// Command etcd is the etcd server at the version Kubernetes pins, built in the same module so
// the cluster bed needs one `go build` and one module graph.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
