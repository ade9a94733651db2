//! Where capture files go: the contract's [`Destination`] (`s3://bucket/prefix`,
//! `gs://bucket/prefix`, `file:///absolute/dir`), and the client that writes there
//! (model-init's [`destination_store`], which `mlep capture` reads with).

use std::sync::Arc;
use std::time::Duration;

use mlep_contract::capture::Destination;
use mlep_model_init::{destination_store, Credentials};
use object_store::ObjectStore;

use crate::SinkError;

/// The contract's parse, with an error that names the value and the accepted forms.
pub fn parse(value: &str) -> Result<Destination, SinkError> {
    Destination::parse(value).map_err(|reason| SinkError::BadDestination {
        value: value.to_owned(),
        reason,
    })
}

/// A client for the destination: for s3:// and gs:// configured from `credentials` (the
/// contract's environment names) and connecting within `connect_timeout`; for file:// the
/// directory, created if missing. Keys are then written under [`Destination::prefix`].
pub fn open(
    destination: &Destination,
    credentials: &Credentials,
    connect_timeout: Duration,
) -> Result<Arc<dyn ObjectStore>, SinkError> {
    destination_store(destination, credentials, connect_timeout)
        .map_err(|reason| SinkError::Store { reason })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn bad_destinations_name_the_value_and_the_accepted_forms() {
        for value in [
            "captures",
            "http://example.com/x",
            "s3://",
            "s3://UPPER/x",
            "s3://b/../x",
            "s3://bucket/a//b",
            "gs://bucket/x?y",
            "file://relative/dir",
        ] {
            let e = parse(value).unwrap_err().to_string();
            assert!(e.contains(&format!("{value:?}")), "{e}");
            assert!(e.contains("s3://<bucket>[/<prefix>]"), "{e}");
            assert!(e.contains("file:///<absolute dir>"), "{e}");
        }
        assert_eq!(parse("s3://captures/prod/").unwrap().prefix(), "prod");
    }

    #[test]
    fn a_directory_destination_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let d = parse(&format!("file://{}", dir.display())).unwrap();
        open(&d, &Credentials::default(), Duration::from_secs(1)).unwrap();
        assert!(dir.is_dir());
    }

    #[test]
    fn an_object_store_destination_opens_without_contacting_it() {
        let d = parse("s3://captures/prod").unwrap();
        open(&d, &Credentials::default(), Duration::from_secs(1)).unwrap();
    }
}
