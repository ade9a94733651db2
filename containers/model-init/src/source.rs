//! Where artifacts come from. One [`Source`] per URI scheme; `s3://`, `gs://` and `pvc://`
//! plug in here later by adding an implementation and a line in [`source_for`].

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use crate::InitError;

/// An opened artifact stream.
pub struct Download {
    pub reader: Box<dyn Read + Send>,
    /// Size announced by the source (HTTP `Content-Length`, file size), if any. A stream that
    /// ends before this many bytes is a truncated download (transient, retried).
    pub total: Option<u64>,
}

/// A way to open an artifact URI. Errors must be classified: [`InitError::Transient`] for
/// what a retry may fix (connect errors, 5xx, timeouts), anything else for what it cannot.
pub trait Source: Send + Sync {
    fn open(&self, uri: &str) -> Result<Download, InitError>;
}

/// Split `scheme://rest`. The scheme is lower-cased (RFC 3986: schemes are case-insensitive).
pub fn scheme_of(uri: &str) -> Result<String, InitError> {
    match uri.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            Ok(scheme.to_ascii_lowercase())
        }
        _ => Err(InitError::BadUri {
            uri: uri.to_string(),
            reason: "expected <scheme>://<location>".into(),
        }),
    }
}

/// The source for a URI's scheme.
pub fn source_for(uri: &str, http_timeout: Duration) -> Result<Box<dyn Source>, InitError> {
    match scheme_of(uri)?.as_str() {
        "http" | "https" => Ok(Box::new(HttpSource::new(http_timeout))),
        "file" => Ok(Box::new(FileSource)),
        other => Err(InitError::UnsupportedScheme {
            scheme: other.to_string(),
            supported: "http, https, file (s3, gs, pvc are planned)",
        }),
    }
}

/// Local files: `file:///absolute/path` only (RFC 8089; `file://localhost/abs` is accepted too).
/// Relative paths are the caller's business: resolve them and build a `file:///` URI.
pub struct FileSource;

/// The absolute path named by a `file:` URI.
pub fn file_uri_path(uri: &str) -> Result<PathBuf, InitError> {
    let bad = |reason: &str| InitError::BadUri {
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    let rest = uri
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("file://"))
        .map(|_| &uri[7..])
        .ok_or_else(|| bad("not a file:// URI"))?;
    let path = if let Some(p) = rest.strip_prefix("localhost/") {
        format!("/{p}")
    } else {
        rest.to_string()
    };
    if !path.starts_with('/') {
        return Err(bad("file URIs must be absolute, file:///abs/path (RFC 8089); resolve relative paths before building the URI"));
    }
    if path.contains('?') || path.contains('#') || path.contains('%') {
        return Err(bad(
            "query, fragment and percent-escapes are not supported in file URIs",
        ));
    }
    Ok(PathBuf::from(path))
}

impl Source for FileSource {
    fn open(&self, uri: &str) -> Result<Download, InitError> {
        let path = file_uri_path(uri)?;
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                InitError::NotFound {
                    uri: uri.to_string(),
                    reason: e.to_string(),
                }
            }
            _ => InitError::Transient {
                what: format!("open {}", path.display()),
                reason: e.to_string(),
            },
        })?;
        let meta = file.metadata().map_err(|e| InitError::Transient {
            what: "stat".into(),
            reason: e.to_string(),
        })?;
        if !meta.is_file() {
            return Err(InitError::NotFound {
                uri: uri.to_string(),
                reason: "not a regular file".into(),
            });
        }
        Ok(Download {
            reader: Box::new(file),
            total: Some(meta.len()),
        })
    }
}

/// HTTP(S) with ureq (rustls, no OpenSSL). Redirects are followed (ureq's default, max 10).
pub struct HttpSource {
    agent: ureq::Agent,
}

impl HttpSource {
    pub fn new(timeout: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeout))
            // No global timeout: models can be large; a stalled body is caught per read.
            .timeout_recv_response(Some(timeout))
            .timeout_per_read(Some(timeout))
            .user_agent(concat!("mlep-model-init/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            agent: config.into(),
        }
    }
}

impl Source for HttpSource {
    fn open(&self, uri: &str) -> Result<Download, InitError> {
        let resp = self
            .agent
            .get(uri)
            .call()
            .map_err(|e| classify_ureq(uri, e))?;
        let status = resp.status().as_u16();
        if status >= 500 || status == 429 || status == 408 {
            return Err(InitError::Transient {
                what: format!("GET {uri}"),
                reason: format!("HTTP {status}"),
            });
        }
        if !(200..300).contains(&status) {
            return Err(InitError::NotFound {
                uri: uri.to_string(),
                reason: format!("HTTP {status}"),
            });
        }
        let total = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        Ok(Download {
            reader: Box::new(resp.into_body().into_reader()),
            total,
        })
    }
}

fn classify_ureq(uri: &str, e: ureq::Error) -> InitError {
    match e {
        ureq::Error::BadUri(reason) => InitError::BadUri {
            uri: uri.to_string(),
            reason,
        },
        ureq::Error::Http(err) => InitError::BadUri {
            uri: uri.to_string(),
            reason: err.to_string(),
        },
        ureq::Error::HostNotFound => InitError::Transient {
            what: format!("GET {uri}"),
            reason: "host not found".into(),
        },
        other => InitError::Transient {
            what: format!("GET {uri}"),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_must_be_absolute() {
        assert_eq!(
            file_uri_path("file:///opt/m.tar.gz").unwrap(),
            PathBuf::from("/opt/m.tar.gz")
        );
        assert_eq!(
            file_uri_path("file://localhost/opt/m").unwrap(),
            PathBuf::from("/opt/m")
        );
        assert!(matches!(
            file_uri_path("file://relative/m.tar.gz"),
            Err(InitError::BadUri { .. })
        ));
    }

    #[test]
    fn unknown_scheme_is_a_clear_bad_input_error() {
        let err = source_for("s3://bucket/key", Duration::from_secs(1))
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("s3"), "{err}");
        assert!(matches!(
            scheme_of("no-scheme"),
            Err(InitError::BadUri { .. })
        ));
    }
}
