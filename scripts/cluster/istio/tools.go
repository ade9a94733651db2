//go:build tools

// Package tools pins the Istio commands the cluster bed builds: istiod and the proxy's agent.
package tools

import (
	_ "istio.io/istio/istioctl/cmd/istioctl"
	_ "istio.io/istio/pilot/cmd/pilot-agent"
	_ "istio.io/istio/pilot/cmd/pilot-discovery"
)
