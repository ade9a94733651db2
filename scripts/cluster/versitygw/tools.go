//go:build tools

// Package tools pins the S3-protocol server the tests store artifacts (and captured data) in:
// Versity's S3 gateway over a POSIX directory (Apache-2.0, actively maintained, used in
// production in front of file systems and tape archives), rather than an in-memory mock.
package tools

import (
	_ "github.com/versity/versitygw/cmd/versitygw"
)
