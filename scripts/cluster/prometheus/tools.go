//go:build tools

// Package tools pins the Prometheus server the cluster bed runs to scrape the mesh's proxies
// (the rollout analysis of the operator queries it, the way Flagger queries Prometheus).
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
)
