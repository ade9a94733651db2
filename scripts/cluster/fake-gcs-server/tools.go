//go:build tools

// Package tools pins the GCS-protocol server the model-init tests fetch gs:// artifacts from:
// fake-gcs-server (Apache-2.0, maintained; the emulator object_store's own GCS tests run
// against), serving a directory. It checks no credentials: the tests prove the gs:// path,
// the object key and the service account key's wiring, not Google's authentication.
package tools

import (
	_ "github.com/fsouza/fake-gcs-server"
)
