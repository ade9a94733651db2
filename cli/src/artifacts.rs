//! Model artifacts in local mode: content-addressed by sha256.
//!
//! Lookup order for an artifact `{uri, sha256}`:
//! 1. the cache, `<cache>/artifacts/<sha256>/` (default `$XDG_CACHE_HOME/mlep`, else
//!    `~/.cache/mlep`), complete when model-init's marker file names that sha256;
//! 2. files in the `--artifacts` directories (default: `artifacts/` beside the input YAML)
//!    whose sha256 matches: fetched from there as `file://`;
//! 3. the artifact's own URI.
//!
//! Fetching, verification, safe unpacking and atomic publishing are model-init's code
//! (`mlep_model_init::fetch`), the same as in the cluster's init container.

use mlep_core::crd::Artifact;
use mlep_model_init::{
    fetch, normalize_sha256, Credentials, Event, FetchRequest, InitError, Progress, RetryPolicy,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("Model {model:?}: artifact {uri} (sha256 {sha256}): {source}")]
    Fetch {
        model: String,
        uri: String,
        sha256: String,
        source: Box<InitError>,
    },
    #[error("Model {model:?}: {source}")]
    BadSha {
        model: String,
        source: Box<InitError>,
    },
}

/// Where the artifact came from, for the progress line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Cache,
    LocalFile(PathBuf),
    Uri(String),
}

/// The artifact cache and the local directories searched by hash.
pub struct ArtifactStore {
    cache: PathBuf,
    search: Vec<PathBuf>,
    /// sha256 -> file, filled on first use.
    index: Mutex<Option<BTreeMap<String, PathBuf>>>,
    retry: RetryPolicy,
    /// Object storage credentials for `s3://` and `gs://` artifacts: this process's
    /// environment, by the names the cluster's init container gets from the Model's
    /// `credentialsSecret` (`mlep_contract::names::OBJECT_STORE_ENV`).
    pub credentials: Credentials,
}

/// The default cache root: `$XDG_CACHE_HOME/mlep`, else `$HOME/.cache/mlep`.
pub fn default_cache_dir() -> PathBuf {
    xdg_dir("XDG_CACHE_HOME", ".cache")
}

/// The default state root: `$XDG_STATE_HOME/mlep`, else `$HOME/.local/state/mlep`.
pub fn default_state_dir() -> PathBuf {
    xdg_dir("XDG_STATE_HOME", ".local/state")
}

fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v).join("mlep"),
        None => {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            home.join(fallback).join("mlep")
        }
    }
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl ArtifactStore {
    pub fn new(cache_root: PathBuf, search: Vec<PathBuf>) -> Self {
        Self {
            cache: cache_root.join("artifacts"),
            search,
            index: Mutex::new(None),
            credentials: Credentials::from_env(),
            // Local mode fails fast: three tries, short backoff.
            retry: RetryPolicy {
                attempts: 3,
                initial_backoff: Duration::from_millis(300),
                max_backoff: Duration::from_secs(2),
            },
        }
    }

    /// Where an artifact with this sha256 lives once fetched.
    pub fn dir_for(&self, sha256: &str) -> PathBuf {
        self.cache.join(sha256)
    }

    /// Which local file, if any, has this sha256. Hashes every regular file of the search
    /// directories once (unreadable entries are skipped).
    pub fn local_file(&self, sha256: &str) -> Option<PathBuf> {
        let mut guard = self.index.lock().ok()?;
        let index = guard.get_or_insert_with(|| {
            let mut idx = BTreeMap::new();
            for dir in &self.search {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                let mut files: Vec<PathBuf> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect();
                files.sort();
                for f in files {
                    if let Ok(h) = sha256_file(&f) {
                        idx.entry(h).or_insert(f);
                    }
                }
            }
            idx
        });
        index.get(sha256).cloned()
    }

    /// Make the artifact available and return its directory and where it came from.
    /// Blocking (run it on a blocking thread).
    pub fn ensure(
        &self,
        model: &str,
        artifact: &Artifact,
        progress: &dyn Progress,
    ) -> Result<(PathBuf, Origin), ArtifactError> {
        let sha = normalize_sha256(&artifact.sha256).map_err(|source| ArtifactError::BadSha {
            model: model.to_owned(),
            source: Box::new(source),
        })?;
        let dest = self.dir_for(&sha);
        if mlep_model_init::publish::is_complete(&dest, &sha) {
            return Ok((dest, Origin::Cache));
        }
        let (uri, origin) = match self.local_file(&sha) {
            Some(f) => {
                let abs = std::fs::canonicalize(&f).unwrap_or(f.clone());
                (format!("file://{}", abs.display()), Origin::LocalFile(f))
            }
            None => (artifact.uri.clone(), Origin::Uri(artifact.uri.clone())),
        };
        let mut req = FetchRequest::new(uri.clone(), sha.clone(), dest.clone());
        req.retry = self.retry;
        req.http_timeout = Duration::from_secs(15);
        req.credentials = self.credentials.clone();
        fetch(&req, progress).map_err(|source| ArtifactError::Fetch {
            model: model.to_owned(),
            uri,
            sha256: sha,
            source: Box::new(source),
        })?;
        Ok((dest, origin))
    }
}

/// Shows model-init's progress events on an `indicatif` bar.
pub struct BarProgress(pub indicatif::ProgressBar);

impl Progress for BarProgress {
    fn event(&self, event: &Event) {
        match event {
            Event::Bytes { done, total } => {
                if let Some(t) = total {
                    self.0.set_length(*t);
                }
                self.0.set_position(*done);
            }
            Event::Retrying {
                attempt, reason, ..
            } => self.0.set_message(format!("retry {attempt}: {reason}")),
            Event::Waiting { holder } => self.0.set_message(format!("waiting for {holder}")),
            Event::Verified { .. } => self.0.set_message("verified"),
            Event::Unpacked { .. } => self.0.set_message("unpacked"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlep_model_init::NoProgress;

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/titanic/artifacts")
    }

    fn sums() -> Vec<(String, String)> {
        std::fs::read_to_string(examples().join("SHA256SUMS"))
            .unwrap()
            .lines()
            .map(|l| {
                let (h, f) = l.split_once("  ").unwrap();
                (h.to_owned(), f.to_owned())
            })
            .collect()
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mlep-artifacts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn an_unreachable_uri_is_found_by_hash_in_the_artifacts_dir_then_in_the_cache() {
        let cache = tmp("byhash");
        let (sha, file) = sums().remove(0);
        let art = Artifact {
            uri: "http://127.0.0.1:9/unreachable.tar.gz".into(),
            sha256: sha.clone(),
            credentials_secret: None,
        };
        let store = ArtifactStore::new(cache.clone(), vec![examples()]);
        let (dir, origin) = store.ensure("titanic-v1", &art, &NoProgress).unwrap();
        assert_eq!(origin, Origin::LocalFile(examples().join(&file)));
        assert!(dir.starts_with(&cache) && dir.ends_with(&sha));
        assert!(
            std::fs::read_dir(&dir).unwrap().count() > 1,
            "unpacked files beside the marker"
        );
        // Second time: from the cache, even with no search directory.
        let store = ArtifactStore::new(cache.clone(), vec![]);
        assert_eq!(
            store.ensure("titanic-v1", &art, &NoProgress).unwrap().1,
            Origin::Cache
        );
        std::fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn a_failing_artifact_names_the_model_uri_and_hash() {
        let cache = tmp("fail");
        let art = Artifact {
            uri: "http://127.0.0.1:9/nope.tar.gz".into(),
            sha256: "1".repeat(64),
            credentials_secret: None,
        };
        let mut store = ArtifactStore::new(cache.clone(), vec![examples()]);
        store.retry = RetryPolicy {
            attempts: 1,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        };
        let err = store
            .ensure("m", &art, &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("Model \"m\": artifact http://127.0.0.1:9/nope.tar.gz (sha256 1111"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&cache);
    }

    #[test]
    fn an_s3_artifact_is_fetched_with_the_environments_credentials() {
        let s3 = mlep_model_init::testing::S3Server::start();
        let (sha, file) = sums().remove(0);
        s3.put(
            "models",
            "titanic/v1.tar.gz",
            &std::fs::read(examples().join(&file)).unwrap(),
        );
        let cache = tmp("s3");
        let art = Artifact {
            uri: "s3://models/titanic/v1.tar.gz".into(),
            sha256: sha.clone(),
            // Local mode reads the environment; the Secret's name is the cluster's business.
            credentials_secret: Some("s3-creds".into()),
        };
        let mut store = ArtifactStore::new(cache.clone(), vec![]);
        store.credentials = s3.credentials();
        let (dir, origin) = store.ensure("titanic-v1", &art, &NoProgress).unwrap();
        assert_eq!(origin, Origin::Uri(art.uri.clone()));
        assert!(dir.join("model.onnx").is_file());

        // Wrong credentials: the error names the model, the URI and the refusal.
        let other = tmp("s3-denied");
        let mut store = ArtifactStore::new(other.clone(), vec![]);
        store.credentials =
            mlep_model_init::Credentials::from_pairs(s3.env().into_iter().map(|(k, v)| {
                (
                    k,
                    if k == "AWS_SECRET_ACCESS_KEY" {
                        "wrong".into()
                    } else {
                        v
                    },
                )
            }));
        let err = store
            .ensure("titanic-v1", &art, &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Model \"titanic-v1\": artifact s3://models/titanic/v1.tar.gz")
                && err.contains("refused"),
            "{err}"
        );
        assert!(!store.dir_for(&sha).exists(), "nothing published");
        let _ = std::fs::remove_dir_all(&cache);
        let _ = std::fs::remove_dir_all(&other);
    }

    #[test]
    fn a_file_whose_hash_does_not_match_is_refused() {
        let cache = tmp("mismatch");
        let (_, file) = sums().remove(0);
        let art = Artifact {
            uri: format!("file://{}", examples().join(file).display()),
            sha256: "2".repeat(64),
            credentials_secret: None,
        };
        let store = ArtifactStore::new(cache.clone(), vec![]);
        let err = store.ensure("m", &art, &NoProgress).unwrap_err();
        assert!(matches!(err, ArtifactError::Fetch { .. }), "{err}");
        assert!(
            !store.dir_for(&"2".repeat(64)).exists(),
            "nothing published on mismatch"
        );
        let _ = std::fs::remove_dir_all(&cache);
    }
}
