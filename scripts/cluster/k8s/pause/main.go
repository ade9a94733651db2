// Command pause is the pod sandbox's process: it holds the pod's namespaces and exits on
// SIGINT/SIGTERM. A static Go build, so the pause image is this one file.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}
