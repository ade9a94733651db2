//! Data capture: what the filter sends the capture sink for each sampled invocation, and the
//! record the sink writes (SageMaker's capture record shape, JSON Lines). One definition for
//! the filter, the sink (`containers/capture-sink`), local mode and `mlep capture`.
//!
//! The filter does no encoding: it POSTs the request body followed by the response body to
//! [`INGEST_PATH`] with the metadata in the headers below; the sink splits the body at
//! [`H_INPUT_LEN`], encodes it ([`encoding_for`]) and batches records into files under
//! [`object_dir`].

use serde::{Deserialize, Serialize};

/// Where the sink takes one invocation (`POST`).
pub const INGEST_PATH: &str = "/v1/capture";

/// Ingest headers, all lower-case (HTTP/2 and Envoy's header maps).
pub const H_ENDPOINT: &str = "x-mlep-capture-endpoint";
pub const H_VARIANT: &str = "x-mlep-capture-variant";
pub const H_MODEL: &str = "x-mlep-capture-model";
/// A unique id of the invocation (hex).
pub const H_EVENT_ID: &str = "x-mlep-capture-event-id";
/// When the request arrived, Unix milliseconds.
pub const H_TIME_MS: &str = "x-mlep-capture-time-ms";
/// The sticky key's hash (hex, the filter's bucket hash), when the request had a key.
pub const H_KEY_HASH: &str = "x-mlep-capture-key-hash";
/// `content-type` of the request and of the response, as observed.
pub const H_INPUT_TYPE: &str = "x-mlep-capture-input-type";
pub const H_OUTPUT_TYPE: &str = "x-mlep-capture-output-type";
/// How many leading bytes of the body are the request's; the rest is the response's.
pub const H_INPUT_LEN: &str = "x-mlep-capture-input-len";
/// Why a side was not captured (a [`Skipped`] value); its bytes are then absent.
pub const H_INPUT_SKIPPED: &str = "x-mlep-capture-input-skipped";
pub const H_OUTPUT_SKIPPED: &str = "x-mlep-capture-output-skipped";
/// The response status the client got.
pub const H_STATUS: &str = "x-mlep-capture-status";

/// Where capture files go: `s3://bucket/prefix`, `gs://bucket/prefix` (the prefix may be
/// empty) or `file:///absolute/dir` (local mode, a mounted volume).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    S3 { bucket: String, prefix: String },
    Gs { bucket: String, prefix: String },
    Dir { path: String },
}

impl Destination {
    /// Parse a destination URI, or say what is wrong with it.
    pub fn parse(value: &str) -> Result<Self, String> {
        let Some((scheme, rest)) = value.split_once("://") else {
            return Err("expected <scheme>://<location> (s3, gs or file)".into());
        };
        match scheme {
            "s3" | "gs" => {
                let rest = rest.trim_end_matches('/');
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                // The bucket and the prefix follow the artifact URIs' rules for bucket names
                // and object keys: check them as the URI they would form.
                let key = if prefix.is_empty() { "k" } else { prefix };
                crate::artifact::ArtifactLocation::parse(&format!("{scheme}://{bucket}/{key}"))?;
                let (bucket, prefix) = (bucket.to_owned(), prefix.to_owned());
                Ok(if scheme == "s3" {
                    Destination::S3 { bucket, prefix }
                } else {
                    Destination::Gs { bucket, prefix }
                })
            }
            "file" => {
                if !rest.starts_with('/') {
                    return Err("file destinations must be absolute (file:///dir)".into());
                }
                let dir = match rest.trim_end_matches('/') {
                    "" => "/",
                    d => d,
                };
                Ok(Destination::Dir { path: dir.into() })
            }
            other => Err(format!(
                "scheme {other:?} is not supported (s3, gs or file)"
            )),
        }
    }

    /// The key prefix records go under (empty for a directory).
    pub fn prefix(&self) -> &str {
        match self {
            Destination::S3 { prefix, .. } | Destination::Gs { prefix, .. } => prefix,
            Destination::Dir { .. } => "",
        }
    }
}

/// The sink's metrics (Prometheus, `GET /metrics` of `mlep-capture-sink`).
pub mod sink_metrics {
    /// Records accepted for writing, by `endpoint`.
    pub const RECEIVED: &str = "mlep_capture_sink_records_received_total";
    /// Records written to the destination, by `endpoint`.
    pub const WRITTEN: &str = "mlep_capture_sink_records_written_total";
    /// Records lost, by `endpoint` and `reason` (`buffer_full`: refused with 503 because the
    /// sink's memory bound was reached; `store_error`: the destination kept failing and the
    /// batch was given up to stay within that bound; `bad_request`).
    pub const DROPPED: &str = "mlep_capture_sink_records_dropped_total";
    /// Files written to the destination.
    pub const FILES: &str = "mlep_capture_sink_files_written_total";
    /// Failed writes to the destination (each retried or given up).
    pub const STORE_ERRORS: &str = "mlep_capture_sink_store_errors_total";
    /// Bytes of records held in memory, waiting to be written.
    pub const BUFFERED_BYTES: &str = "mlep_capture_sink_buffered_bytes";
}

/// Why a payload is not in its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Skipped {
    /// Larger than the endpoint's `maxPayloadBytes`.
    TooLarge,
    /// A content type the endpoint does not capture.
    ContentType,
    /// The endpoint captures only the other side.
    NotCaptured,
    /// The stream ended before the body did (client gone, reset).
    Incomplete,
}

impl Skipped {
    pub const ALL: [Skipped; 4] = [
        Skipped::TooLarge,
        Skipped::ContentType,
        Skipped::NotCaptured,
        Skipped::Incomplete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Skipped::TooLarge => "too_large",
            Skipped::ContentType => "content_type",
            Skipped::NotCaptured => "not_captured",
            Skipped::Incomplete => "incomplete",
        }
    }

    pub fn parse(s: &str) -> Option<Skipped> {
        Skipped::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One line of a capture file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureRecord {
    pub capture_data: CaptureData,
    pub event_metadata: EventMetadata,
    /// SageMaker's record version.
    pub event_version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_input: Option<Payload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_output: Option<Payload>,
}

/// A request (`mode: INPUT`) or response (`mode: OUTPUT`) body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    pub observed_content_type: String,
    pub mode: String,
    /// The body: as text for `JSON` and `CSV`, base64 for `BASE64`; absent when skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// Why the body is absent (not in SageMaker's shape: its records have no such case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<Skipped>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventMetadata {
    pub event_id: String,
    /// RFC 3339, UTC, milliseconds (`2026-12-03T12:00:00.123Z`).
    pub inference_time: String,
    pub endpoint_name: String,
    pub variant_name: String,
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_key_hash: Option<String>,
    /// The response status the client got.
    pub status: u16,
}

pub const MODE_INPUT: &str = "INPUT";
pub const MODE_OUTPUT: &str = "OUTPUT";
pub const EVENT_VERSION: &str = "0";

/// SageMaker's encodings: `JSON` for JSON content types and `CSV` for `text/csv`, as long as
/// the bytes are UTF-8 (the record then holds them as text); `BASE64` for everything else.
pub fn encoding_for(content_type: &str, body: &[u8]) -> &'static str {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let text = std::str::from_utf8(body).is_ok();
    if text && (essence == "application/json" || essence.ends_with("+json")) {
        "JSON"
    } else if text && essence == "text/csv" {
        "CSV"
    } else {
        "BASE64"
    }
}

/// Does `content_type` match one of `allowed` (media type essences, case-insensitive; an
/// empty list allows all)?
pub fn content_type_allowed(allowed: &[String], content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    allowed.is_empty() || allowed.iter().any(|a| a.eq_ignore_ascii_case(essence))
}

/// The directory of an hour's captures: `<prefix>/<endpoint>/<variant>/<yyyy>/<mm>/<dd>/<hh>`
/// (UTC; `prefix` without a trailing slash, may be empty), so a day or an hour is listed by
/// prefix.
pub fn object_dir(prefix: &str, endpoint: &str, variant: &str, unix_ms: u64) -> String {
    let (y, mo, d, h) = utc_hour(unix_ms);
    let head = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    format!("{head}{endpoint}/{variant}/{y:04}/{mo:02}/{d:02}/{h:02}")
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let (y, mo, d, h) = utc_hour(unix_ms);
    let in_hour = unix_ms % 3_600_000;
    let (mi, s, ms) = (in_hour / 60_000, in_hour % 60_000 / 1000, in_hour % 1000);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// Year, month, day, hour (UTC) of a Unix time in ms (civil-from-days, proleptic Gregorian).
fn utc_hour(unix_ms: u64) -> (u64, u64, u64, u64) {
    let secs = unix_ms / 1000;
    let days = secs / 86_400;
    let hour = secs % 86_400 / 3600;
    // Howard Hinnant's days -> civil date, for days since 1970-01-01 (non-negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day, hour)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn destinations_parse_into_bucket_and_prefix_or_a_directory() {
        assert_eq!(
            Destination::parse("s3://captures/prod/"),
            Ok(Destination::S3 {
                bucket: "captures".into(),
                prefix: "prod".into()
            })
        );
        assert_eq!(
            Destination::parse("gs://captures").map(|d| d.prefix().to_owned()),
            Ok(String::new())
        );
        assert_eq!(
            Destination::parse("file:///var/captures/"),
            Ok(Destination::Dir {
                path: "/var/captures".into()
            })
        );
        for bad in [
            "captures",
            "s3://Bad/x",
            "s3://b/../x",
            "file://rel",
            "ftp://h/x",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn capture_paths_and_times_are_utc_by_the_hour() {
        // 2026-12-03T12:34:56.789Z
        let t = 1_796_301_296_789;
        assert_eq!(rfc3339_ms(t), "2026-12-03T12:34:56.789Z");
        assert_eq!(
            object_dir("captures/prod", "titanic", "a", t),
            "captures/prod/titanic/a/2026/12/03/12"
        );
        assert_eq!(object_dir("", "e", "v", 0), "e/v/1970/01/01/00");
        // A leap day and the last millisecond of a year.
        assert_eq!(rfc3339_ms(1_709_208_000_000), "2024-02-29T12:00:00.000Z");
        assert_eq!(rfc3339_ms(1_798_761_599_999), "2026-12-31T23:59:59.999Z");
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn encodings_follow_sagemaker_and_fall_back_to_base64_for_non_text() {
        assert_eq!(encoding_for("application/json", b"{\"a\":1}"), "JSON");
        assert_eq!(
            encoding_for("Application/JSON; charset=utf-8", b"[1]"),
            "JSON"
        );
        assert_eq!(encoding_for("application/vnd.x+json", b"{}"), "JSON");
        assert_eq!(encoding_for("text/csv", b"1,2\n"), "CSV");
        assert_eq!(encoding_for("text/csv", &[0xff, 0xfe]), "BASE64");
        assert_eq!(encoding_for("application/x-npy", b"abc"), "BASE64");
        assert_eq!(encoding_for("", b"abc"), "BASE64");
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn content_types_match_by_essence() {
        let allowed = vec!["application/json".to_string(), "text/csv".to_string()];
        assert!(content_type_allowed(
            &allowed,
            "application/json; charset=utf-8"
        ));
        assert!(content_type_allowed(&allowed, "TEXT/CSV"));
        assert!(!content_type_allowed(&allowed, "image/png"));
        assert!(!content_type_allowed(&allowed, ""));
        assert!(content_type_allowed(&[], "image/png"));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn skipped_reasons_round_trip_and_records_keep_sagemakers_field_names() {
        for k in Skipped::ALL {
            assert_eq!(Skipped::parse(k.as_str()), Some(k));
        }
        let r = CaptureRecord {
            capture_data: CaptureData {
                endpoint_input: Some(Payload {
                    observed_content_type: "text/csv".into(),
                    mode: MODE_INPUT.into(),
                    data: Some("1,2".into()),
                    encoding: Some("CSV".into()),
                    skipped: None,
                }),
                endpoint_output: Some(Payload {
                    observed_content_type: "application/json".into(),
                    mode: MODE_OUTPUT.into(),
                    data: None,
                    encoding: None,
                    skipped: Some(Skipped::TooLarge),
                }),
            },
            event_metadata: EventMetadata {
                event_id: "ab".into(),
                inference_time: rfc3339_ms(0),
                endpoint_name: "e".into(),
                variant_name: "v".into(),
                model_name: "m".into(),
                sticky_key_hash: None,
                status: 200,
            },
            event_version: EVENT_VERSION.into(),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["captureData"]["endpointInput"]["observedContentType"],
            "text/csv"
        );
        assert_eq!(v["captureData"]["endpointOutput"]["skipped"], "too_large");
        assert_eq!(
            v["eventMetadata"]["inferenceTime"],
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(v["eventVersion"], "0");
        assert_eq!(serde_json::from_value::<CaptureRecord>(v).unwrap(), r);
    }
}
