// Command coredns is CoreDNS with only the plugins the cluster bed's DNS needs (cluster names
// from the API server; no forwarding: the bed never sends DNS queries off the machine).
// CoreDNS documents this way of choosing plugins at compile time: set dnsserver.Directives
// (which also fixes their order in the chain) and import the plugins' packages.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The same relative order as CoreDNS's plugin.cfg.
var directives = []string{"ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes"}

func init() { dnsserver.Directives = directives }

func main() { coremain.Run() }
