//! Where artifacts come from. One [`Source`] per URI scheme, chosen by [`source_for`] from the
//! contract's parse of the URI (`mlep_contract::artifact`): http(s) with ureq, `file://` and
//! `pvc://` (a claim the operator mounts under `PVC_MOUNT_ROOT`) from the file system, `s3://`
//! and `gs://` with Apache Arrow's `object_store`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mlep_contract::artifact::ArtifactLocation;
use mlep_contract::names::{OBJECT_STORE_ENV, PVC_MOUNT_ROOT};
use object_store::{ObjectStore, ObjectStoreExt};

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
pub fn source_for(
    uri: &str,
    timeout: Duration,
    credentials: &Credentials,
) -> Result<Box<dyn Source>, InitError> {
    let scheme = scheme_of(uri)?;
    if !mlep_contract::artifact::SCHEMES
        .split(", ")
        .any(|s| s == scheme)
    {
        return Err(InitError::UnsupportedScheme {
            scheme,
            supported: mlep_contract::artifact::SCHEMES,
        });
    }
    // `file:` keeps its own, older rules (`file://localhost/...`); the rest parse as the
    // operator validated them.
    if scheme == "file" {
        return Ok(Box::new(FileSource));
    }
    let location = ArtifactLocation::parse(uri).map_err(|reason| InitError::BadUri {
        uri: uri.to_string(),
        reason,
    })?;
    Ok(match location {
        ArtifactLocation::Http { .. } => Box::new(HttpSource::new(timeout)),
        ArtifactLocation::File { .. } => Box::new(FileSource),
        ArtifactLocation::Pvc { claim, path } => Box::new(PvcSource {
            file: format!("file://{PVC_MOUNT_ROOT}/{claim}/{path}"),
        }),
        ArtifactLocation::S3 { .. } | ArtifactLocation::Gs { .. } => {
            Box::new(ObjectSource::new(timeout, credentials.clone()))
        }
    })
}

/// Object storage settings by their environment names ([`OBJECT_STORE_ENV`]). `Debug` shows
/// the names only, never a value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials(BTreeMap<String, String>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Credentials {
    /// The contract's names that are set (and not empty) in this process's environment.
    pub fn from_env() -> Self {
        Self::from_pairs(
            OBJECT_STORE_ENV
                .iter()
                .filter_map(|k| Some((*k, std::env::var(k).ok()?))),
        )
    }

    /// Only the contract's names are kept; empty values count as unset.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> Self {
        Self(
            pairs
                .into_iter()
                .filter(|(k, v)| OBJECT_STORE_ENV.contains(k) && !v.is_empty())
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// `pvc://claim/path`: the file under the claim's read-only mount (see `mlep-core`'s render).
struct PvcSource {
    file: String,
}

impl Source for PvcSource {
    fn open(&self, uri: &str) -> Result<Download, InitError> {
        FileSource.open(&self.file).map_err(|e| match e {
            InitError::NotFound { reason, .. } => InitError::NotFound {
                uri: uri.to_string(),
                reason: format!(
                    "{reason} (at {}; is the claim bound and the path right?)",
                    &self.file["file://".len()..]
                ),
            },
            other => other,
        })
    }
}

/// A client for a data capture destination (`mlep_contract::capture::Destination`): the
/// bucket of `s3://` and `gs://` ([`object_store_for`]); a `file://` directory (created if
/// missing). Keys are relative to the bucket (the destination's prefix is the caller's) or to
/// the directory. What the capture sink writes with and `mlep capture` reads with.
pub fn destination_store(
    d: &mlep_contract::capture::Destination,
    credentials: &Credentials,
    connect_timeout: Duration,
) -> Result<Arc<dyn ObjectStore>, String> {
    use mlep_contract::capture::Destination;
    match d {
        Destination::S3 { bucket, prefix } => object_store_for(
            &ArtifactLocation::S3 {
                bucket,
                key: prefix,
            },
            credentials,
            connect_timeout,
        ),
        Destination::Gs { bucket, prefix } => object_store_for(
            &ArtifactLocation::Gs {
                bucket,
                key: prefix,
            },
            credentials,
            connect_timeout,
        ),
        Destination::Dir { path } => {
            std::fs::create_dir_all(path).map_err(|e| format!("create {path}: {e}"))?;
            object_store::local::LocalFileSystem::new_with_prefix(path)
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
                .map_err(|e| e.to_string())
        }
    }
}

/// `s3://` and `gs://` through `object_store` ([`object_store_for`]); the fetch loop retries
/// transient failures, and every body chunk must arrive within `timeout`.
pub struct ObjectSource {
    timeout: Duration,
    credentials: Credentials,
}

impl ObjectSource {
    pub fn new(timeout: Duration, credentials: Credentials) -> Self {
        Self {
            timeout,
            credentials,
        }
    }
}

/// A client for the bucket of an `s3://` or `gs://` location, configured from `credentials`
/// (the contract's names): also what the capture sink writes with. `object_store`'s own
/// retries are off (callers retry with their own policy) and so is its whole-request timeout
/// (a large model takes longer than any fixed bound): connecting has `connect_timeout`.
pub fn object_store_for(
    location: &ArtifactLocation,
    credentials: &Credentials,
    connect_timeout: Duration,
) -> Result<Arc<dyn ObjectStore>, String> {
    let c = credentials;
    // The user named the endpoint (an S3- or GCS-compatible server, maybe in the cluster):
    // plain `http://` is allowed because they wrote it.
    let endpoint = match *location {
        ArtifactLocation::S3 { .. } => c.get("AWS_ENDPOINT_URL"),
        ArtifactLocation::Gs { .. } => c.get("GOOGLE_BASE_URL"),
        _ => None,
    };
    let options = object_store::ClientOptions::new()
        .with_connect_timeout(connect_timeout)
        .with_timeout_disabled()
        .with_allow_http(endpoint.is_some_and(|e| e.starts_with("http://")));
    let retry = object_store::RetryConfig {
        max_retries: 0,
        ..object_store::RetryConfig::default()
    };
    match *location {
        ArtifactLocation::S3 { bucket, .. } => {
            let mut b = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_client_options(options)
                .with_retry(retry);
            for (key, value) in &c.0 {
                if let Ok(k) = key.to_ascii_lowercase().parse() {
                    b = b.with_config(k, value);
                }
            }
            b.build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
                .map_err(|e| format!("S3 client: {e}"))
        }
        ArtifactLocation::Gs { bucket, .. } => {
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::new()
                .with_bucket_name(bucket)
                .with_client_options(options)
                .with_retry(retry);
            if let Some(key) = c.get("GOOGLE_SERVICE_ACCOUNT_KEY") {
                b = b.with_service_account_key(key);
            }
            if let Some(url) = endpoint {
                b = b.with_base_url(url);
            }
            b.build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
                .map_err(|e| format!("GCS client: {e}"))
        }
        _ => Err("not an object storage location (s3:// or gs://)".into()),
    }
}

impl Source for ObjectSource {
    fn open(&self, uri: &str) -> Result<Download, InitError> {
        let location = ArtifactLocation::parse(uri).map_err(|reason| InitError::BadUri {
            uri: uri.to_string(),
            reason,
        })?;
        let key = match location {
            ArtifactLocation::S3 { key, .. } | ArtifactLocation::Gs { key, .. } => key,
            _ => "",
        };
        let store =
            object_store_for(&location, &self.credentials, self.timeout).map_err(|reason| {
                InitError::BadUri {
                    uri: uri.to_string(),
                    reason,
                }
            })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| InitError::Transient {
                what: "starting the object storage client".into(),
                reason: e.to_string(),
            })?;
        let path = object_store::path::Path::from(key);
        let got = runtime
            .block_on(async { tokio::time::timeout(self.timeout, store.get(&path)).await })
            .map_err(|_| InitError::Transient {
                what: format!("GET {uri}"),
                reason: format!("no answer within {:?}", self.timeout),
            })?
            .map_err(|e| classify_object_store(uri, e))?;
        let total = Some(got.meta.size);
        Ok(Download {
            reader: Box::new(ObjectReader {
                runtime,
                stream: got.into_stream(),
                chunk: bytes::Bytes::new(),
                timeout: self.timeout,
            }),
            total,
        })
    }
}

/// A blocking reader over an object's body stream: each `read` drives the runtime until the
/// next chunk arrives (or `timeout` passes without one).
struct ObjectReader {
    runtime: tokio::runtime::Runtime,
    stream: futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    chunk: bytes::Bytes,
    timeout: Duration,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            let next = self
                .runtime
                .block_on(async { tokio::time::timeout(self.timeout, self.stream.next()).await });
            match next {
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no data for {:?}", self.timeout),
                    ))
                }
                Ok(None) => return Ok(0),
                Ok(Some(Err(e))) => return Err(std::io::Error::other(e.to_string())),
                Ok(Some(Ok(bytes))) => self.chunk = bytes,
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// Missing objects and refused credentials are the user's to fix (not retried); the rest
/// (connect errors, 5xx, throttling) may pass.
fn classify_object_store(uri: &str, e: object_store::Error) -> InitError {
    match e {
        object_store::Error::NotFound { .. } => InitError::NotFound {
            uri: uri.to_string(),
            reason: "no such object".into(),
        },
        object_store::Error::PermissionDenied { source, .. }
        | object_store::Error::Unauthenticated { source, .. } => InitError::Denied {
            uri: uri.to_string(),
            reason: concise(&source.to_string()),
        },
        other => InitError::Transient {
            what: format!("GET {uri}"),
            reason: concise(&other.to_string()),
        },
    }
}

/// An S3 error as `<Code>: <Message>` (the XML body echoes the whole signed request, which is
/// noise in a status condition); other errors clipped to 300 characters.
fn concise(error: &str) -> String {
    let tag = |name: &str| {
        let (open, close) = (format!("<{name}>"), format!("</{name}>"));
        let start = error.find(&open)? + open.len();
        let len = error[start..].find(&close)?;
        Some(&error[start..start + len])
    };
    if let (Some(code), Some(message)) = (tag("Code"), tag("Message")) {
        return format!("{code}: {message}");
    }
    match error.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &error[..i]),
        None => error.to_string(),
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
    fn s3_errors_are_told_by_code_and_message_without_the_echoed_request() {
        let xml = "Error performing GET http://h/b/k - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match.</Message><CanonicalRequest>GET ...</CanonicalRequest></Error>";
        assert_eq!(
            concise(xml),
            "SignatureDoesNotMatch: The request signature we calculated does not match."
        );
        assert_eq!(concise(&"x".repeat(400)).len(), 303);
        assert_eq!(concise("connection refused"), "connection refused");
    }

    #[test]
    fn a_pvc_artifact_is_read_from_the_claims_mount_and_a_missing_file_names_where() {
        let src = source_for(
            "pvc://model-store/titanic/v1.tar.gz",
            Duration::from_secs(1),
            &Credentials::default(),
        )
        .unwrap();
        let err = src
            .open("pvc://model-store/titanic/v1.tar.gz")
            .err()
            .unwrap();
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert!(
            text.contains("artifact pvc://model-store/titanic/v1.tar.gz not available"),
            "{text}"
        );
        assert!(
            text.contains(&format!("{PVC_MOUNT_ROOT}/model-store/titanic/v1.tar.gz")),
            "{text}"
        );
    }

    #[test]
    fn credentials_keep_only_the_contracts_names_and_never_print_values() {
        let c = Credentials::from_pairs([
            ("AWS_ACCESS_KEY_ID", "id".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "very-secret".to_string()),
            ("AWS_SESSION_TOKEN", String::new()),
            ("PATH", "/bin".to_string()),
        ]);
        let shown = format!("{c:?}");
        assert_eq!(shown, r#"{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}"#);
    }

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
        let err = source_for(
            "ftp://host/key",
            Duration::from_secs(1),
            &Credentials::default(),
        )
        .err()
        .unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("ftp"), "{err}");
        let err = source_for(
            "pvc://claim/../etc/passwd",
            Duration::from_secs(1),
            &Credentials::default(),
        )
        .err()
        .unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("`..`"), "{err}");
        assert!(matches!(
            scheme_of("no-scheme"),
            Err(InitError::BadUri { .. })
        ));
    }
}
