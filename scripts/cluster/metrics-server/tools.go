//go:build tools

// Package tools pins the metrics-server the cluster bed runs: it serves the resource metrics
// API (metrics.k8s.io, through the API server's aggregation layer) that HorizontalPodAutoscalers
// on CPU read, the way a user's cluster provides it.
package tools

import (
	_ "sigs.k8s.io/metrics-server/cmd/metrics-server"
)
