//! Where a model artifact lives: the URI forms `Model.spec.artifact.uri` accepts, parsed once
//! for the operator's validation and rendering, local mode and `mlep-model-init` alike.
//!
//! - `https://host/path`, `http://host/path`
//! - `file:///absolute/path` (local mode, or a file baked into the init image)
//! - `s3://bucket/key`: AWS S3 or any S3-compatible server (`AWS_ENDPOINT_URL`)
//! - `gs://bucket/object`: Google Cloud Storage
//! - `pvc://claim/path`: a file on a PersistentVolumeClaim in the Model's namespace, mounted
//!   read-only into the init container at [`crate::names::PVC_MOUNT_ROOT`]`/<claim>`

/// A parsed artifact URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactLocation<'a> {
    Http { uri: &'a str },
    File { path: &'a str },
    S3 { bucket: &'a str, key: &'a str },
    Gs { bucket: &'a str, key: &'a str },
    Pvc { claim: &'a str, path: &'a str },
}

/// The schemes [`ArtifactLocation::parse`] accepts, for error messages and docs.
pub const SCHEMES: &str = "https, http, file, s3, gs, pvc";

impl<'a> ArtifactLocation<'a> {
    /// Parse `uri`, or say what is wrong with it.
    pub fn parse(uri: &'a str) -> Result<Self, String> {
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(format!("expected <scheme>://<location> ({SCHEMES})"));
        };
        match scheme {
            "http" | "https" => {
                let host = rest.split(['/', '?', '#']).next().unwrap_or("");
                if host.is_empty() {
                    return Err("has no host".into());
                }
                Ok(Self::Http { uri })
            }
            "file" => {
                if !rest.starts_with('/') {
                    return Err("file URIs must be absolute (file:///path)".into());
                }
                Ok(Self::File { path: rest })
            }
            "s3" | "gs" => {
                let (bucket, key) = split_first(rest);
                bucket_name(bucket)?;
                object_key(key)?;
                Ok(if scheme == "s3" {
                    Self::S3 { bucket, key }
                } else {
                    Self::Gs { bucket, key }
                })
            }
            "pvc" => {
                let (claim, path) = split_first(rest);
                if !crate::config::is_dns_label(claim) {
                    return Err(format!(
                        "claim {claim:?} is not a PersistentVolumeClaim name (a DNS label)"
                    ));
                }
                if path.is_empty()
                    || path
                        .split('/')
                        .any(|s| s.is_empty() || s == "." || s == "..")
                {
                    return Err(format!(
                        "path {path:?} on the claim must be relative, without empty, `.` or `..` segments"
                    ));
                }
                if path.contains(['?', '#', '%', '\\']) {
                    return Err(format!("path {path:?} may not hold `?`, `#`, `%` or `\\`"));
                }
                Ok(Self::Pvc { claim, path })
            }
            other => Err(format!("scheme {other:?} is not supported ({SCHEMES})")),
        }
    }

    /// The URI scheme, as written in the URI.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Http { uri } if uri.starts_with("https") => "https",
            Self::Http { .. } => "http",
            Self::File { .. } => "file",
            Self::S3 { .. } => "s3",
            Self::Gs { .. } => "gs",
            Self::Pvc { .. } => "pvc",
        }
    }
}

fn split_first(rest: &str) -> (&str, &str) {
    rest.split_once('/').unwrap_or((rest, ""))
}

/// Bucket names as S3 and GCS both accept them: 3..63 of `a-z 0-9 . - _`, starting and ending
/// with a letter or digit (GCS allows `_`; S3 rejects it itself, with its own error).
fn bucket_name(b: &str) -> Result<(), String> {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-_".contains(&c))
        && edge_ok(b.chars().next())
        && edge_ok(b.chars().last())
    {
        Ok(())
    } else {
        Err(format!(
            "bucket {b:?} is not a bucket name (3 to 63 of a-z, 0-9, `.`, `-`, `_`)"
        ))
    }
}

fn object_key(k: &str) -> Result<(), String> {
    if k.is_empty() || k.ends_with('/') {
        return Err("names no object (expected <bucket>/<key>, not a prefix)".into());
    }
    if k.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(format!("key {k:?} has an empty, `.` or `..` segment"));
    }
    if k.contains(['?', '#']) {
        return Err(format!("key {k:?} may not hold `?` or `#`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::ArtifactLocation as L;

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn every_supported_form_parses_into_its_parts() {
        assert_eq!(
            L::parse("s3://models/titanic/v1.tar.gz"),
            Ok(L::S3 {
                bucket: "models",
                key: "titanic/v1.tar.gz"
            })
        );
        assert_eq!(
            L::parse("gs://my_models/m.onnx"),
            Ok(L::Gs {
                bucket: "my_models",
                key: "m.onnx"
            })
        );
        assert_eq!(
            L::parse("pvc://model-store/titanic/v1.tar.gz"),
            Ok(L::Pvc {
                claim: "model-store",
                path: "titanic/v1.tar.gz"
            })
        );
        assert_eq!(
            L::parse("file:///opt/m.tar.gz"),
            Ok(L::File {
                path: "/opt/m.tar.gz"
            })
        );
        assert_eq!(L::parse("https://x/m").map(|l| l.scheme()), Ok("https"));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn malformed_locations_are_refused_with_the_reason() {
        for (uri, says) in [
            ("s3://bucket", "names no object"),
            ("s3://bucket/prefix/", "names no object"),
            ("s3://Bucket/k", "not a bucket name"),
            ("s3://ab/k", "not a bucket name"),
            ("s3://b-/k", "not a bucket name"),
            ("s3://bucket/a/../k", "`..`"),
            ("gs://bucket//k", "empty"),
            ("pvc://Claim/m", "DNS label"),
            ("pvc://claim", "must be relative"),
            ("pvc://claim/../etc/passwd", "`..`"),
            ("pvc://claim//abs", "empty"),
            ("pvc://claim/m%2e", "may not hold"),
            ("ftp://x/m", "not supported"),
            ("file://relative/m", "absolute"),
            ("https:///m", "no host"),
            ("m.tar.gz", "expected <scheme>"),
        ] {
            let err = L::parse(uri).expect_err(uri);
            assert!(err.contains(says), "{uri}: {err}");
        }
    }
}
