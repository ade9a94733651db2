//! One ingest request (the filter's headers and body, `mlep_contract::capture`) to its capture
//! record. Pure: headers come in through a lookup function.

use base64::Engine as _;
use mlep_contract::capture::{
    encoding_for, rfc3339_ms, CaptureData, CaptureRecord, EventMetadata, Payload, Skipped,
    EVENT_VERSION, H_ENDPOINT, H_EVENT_ID, H_INPUT_LEN, H_INPUT_SKIPPED, H_INPUT_TYPE, H_KEY_HASH,
    H_MODEL, H_OUTPUT_SKIPPED, H_OUTPUT_TYPE, H_STATUS, H_TIME_MS, H_VARIANT, MODE_INPUT,
    MODE_OUTPUT,
};

use crate::{is_key_segment, SinkError};

/// [`encoding_for`]'s name for bytes kept as base64 (every other encoding keeps text).
pub const ENCODING_BASE64: &str = "BASE64";

/// The last millisecond with a four-digit year (9999-12-31T23:59:59.999Z): later times would
/// not be RFC 3339.
pub const MAX_TIME_MS: u64 = 253_402_300_799_999;

/// A record and what it is batched by.
#[derive(Clone, Debug, PartialEq)]
pub struct Capture {
    pub endpoint: String,
    pub variant: String,
    /// When the request arrived at the proxy (Unix ms): the record's hour directory.
    pub time_ms: u64,
    pub record: CaptureRecord,
}

impl Capture {
    /// The record as one JSON Lines line (ending in `\n`; JSON strings escape newlines).
    pub fn line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut line = serde_json::to_vec(&self.record)?;
        line.push(b'\n');
        Ok(line)
    }
}

/// Build the record of one invocation. `header` looks a header up by its (lower-case) name.
/// Everything the contract requires must be there and well-formed; the error names the header.
/// An invocation without an event id (the filter sends one) gets `new_event_id()`.
pub fn build<'a>(
    header: impl Fn(&'static str) -> Option<&'a [u8]>,
    body: &[u8],
    new_event_id: impl FnOnce() -> String,
) -> Result<Capture, SinkError> {
    let h = Headers(header);
    let endpoint = h.name(H_ENDPOINT)?;
    let variant = h.name(H_VARIANT)?;
    let model = h.required(H_MODEL)?;
    let event_id = match h.optional(H_EVENT_ID)? {
        id if id.is_empty() => new_event_id(),
        id => id,
    };
    let time_ms = h.number::<u64>(H_TIME_MS)?;
    if time_ms > MAX_TIME_MS {
        return Err(SinkError::BadHeader {
            header: H_TIME_MS,
            reason: format!("{time_ms} is after the year 9999"),
        });
    }
    let status = h.number::<u16>(H_STATUS)?;
    let input_len = h.number::<usize>(H_INPUT_LEN)?;
    let (input, output) = match (body.get(..input_len), body.get(input_len..)) {
        (Some(i), Some(o)) => (i, o),
        _ => {
            return Err(SinkError::ShortBody {
                header: H_INPUT_LEN,
                body: body.len(),
                input_len,
            })
        }
    };
    let input_skipped = h.skipped(H_INPUT_SKIPPED)?;
    if input_skipped.is_some() && !input.is_empty() {
        return Err(SinkError::BadHeader {
            header: H_INPUT_LEN,
            reason: format!("is {input_len}, but a skipped input has no bytes"),
        });
    }
    let output_skipped = h.skipped(H_OUTPUT_SKIPPED)?;
    if output_skipped.is_some() && !output.is_empty() {
        return Err(SinkError::BadHeader {
            header: H_OUTPUT_SKIPPED,
            reason: format!(
                "the output is skipped, but the body has {} bytes after the input",
                output.len()
            ),
        });
    }
    let input = payload(MODE_INPUT, h.optional(H_INPUT_TYPE)?, input_skipped, input);
    let output = payload(
        MODE_OUTPUT,
        h.optional(H_OUTPUT_TYPE)?,
        output_skipped,
        output,
    );
    let record = CaptureRecord {
        capture_data: CaptureData {
            endpoint_input: Some(input),
            endpoint_output: Some(output),
        },
        event_metadata: EventMetadata {
            event_id,
            inference_time: rfc3339_ms(time_ms),
            endpoint_name: endpoint.to_owned(),
            variant_name: variant.to_owned(),
            model_name: model.to_owned(),
            sticky_key_hash: Some(h.optional(H_KEY_HASH)?).filter(|k| !k.is_empty()),
            status,
        },
        event_version: EVENT_VERSION.to_owned(),
    };
    Ok(Capture {
        endpoint: endpoint.to_owned(),
        variant: variant.to_owned(),
        time_ms,
        record,
    })
}

/// One side: the bytes as text when [`encoding_for`] keeps them as text (it does so only for
/// UTF-8), else standard base64; or only why they are absent.
fn payload(mode: &str, content_type: String, skipped: Option<Skipped>, bytes: &[u8]) -> Payload {
    let (data, encoding) = match skipped {
        Some(_) => (None, None),
        None => {
            let encoding = encoding_for(&content_type, bytes);
            let data = match std::str::from_utf8(bytes) {
                Ok(text) if encoding != ENCODING_BASE64 => text.to_owned(),
                _ => base64::engine::general_purpose::STANDARD.encode(bytes),
            };
            (Some(data), Some(encoding.to_owned()))
        }
    };
    Payload {
        observed_content_type: content_type,
        mode: mode.to_owned(),
        data,
        encoding,
        skipped,
    }
}

struct Headers<F>(F);

impl<'a, F: Fn(&'static str) -> Option<&'a [u8]>> Headers<F> {
    /// The value as text, if present (empty counts as present).
    fn text(&self, header: &'static str) -> Result<Option<&'a str>, SinkError> {
        self.0(header)
            .map(|v| {
                std::str::from_utf8(v).map_err(|_| SinkError::BadHeader {
                    header,
                    reason: "is not UTF-8".into(),
                })
            })
            .transpose()
    }

    fn optional(&self, header: &'static str) -> Result<String, SinkError> {
        Ok(self.text(header)?.unwrap_or_default().trim().to_owned())
    }

    fn required(&self, header: &'static str) -> Result<&'a str, SinkError> {
        match self.text(header)?.map(str::trim) {
            None => Err(SinkError::MissingHeader { header }),
            Some("") => Err(SinkError::BadHeader {
                header,
                reason: "is empty".into(),
            }),
            Some(v) => Ok(v),
        }
    }

    /// A name that becomes a segment of the object key.
    fn name(&self, header: &'static str) -> Result<&'a str, SinkError> {
        let v = self.required(header)?;
        if is_key_segment(v) {
            Ok(v)
        } else {
            Err(SinkError::BadHeader {
                header,
                reason: format!("{v:?} is not a name (1 to 253 of A-Z, a-z, 0-9, `.`, `_`, `-`)"),
            })
        }
    }

    fn number<N: std::str::FromStr>(&self, header: &'static str) -> Result<N, SinkError> {
        let v = self.required(header)?;
        v.parse().map_err(|_| SinkError::BadHeader {
            header,
            reason: format!("{v:?} is not a number in range"),
        })
    }

    fn skipped(&self, header: &'static str) -> Result<Option<Skipped>, SinkError> {
        match self.text(header)?.map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) => Skipped::parse(v)
                .map(Some)
                .ok_or_else(|| SinkError::BadHeader {
                    header,
                    reason: format!(
                        "{v:?} is not one of {}",
                        Skipped::ALL.map(Skipped::as_str).join(", ")
                    ),
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::collections::BTreeMap;

    // 2026-12-03T12:34:56.789Z
    const T: u64 = 1_796_301_296_789;

    fn headers(input_len: usize) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            (H_ENDPOINT, "titanic".to_string()),
            (H_VARIANT, "a".to_string()),
            (H_MODEL, "titanic-v1".to_string()),
            (H_EVENT_ID, "00ff".to_string()),
            (H_TIME_MS, T.to_string()),
            (H_STATUS, "200".to_string()),
            (H_INPUT_LEN, input_len.to_string()),
            (H_INPUT_TYPE, "application/json".to_string()),
            (H_OUTPUT_TYPE, "text/csv".to_string()),
        ])
    }

    fn build_with(h: &BTreeMap<&'static str, String>, body: &[u8]) -> Result<Capture, SinkError> {
        build(
            |name| h.get(name).map(|v| v.as_bytes()),
            body,
            || "new".into(),
        )
    }

    #[test]
    fn json_and_csv_bodies_are_kept_as_text_and_the_metadata_comes_from_the_headers() {
        let mut h = headers(7);
        h.insert(H_KEY_HASH, "9a3f".into());
        let c = build_with(&h, b"{\"x\":1}0.93,0.07\n").unwrap();
        assert_eq!(
            (c.endpoint.as_str(), c.variant.as_str(), c.time_ms),
            ("titanic", "a", T)
        );
        let input = c.record.capture_data.endpoint_input.unwrap();
        assert_eq!(
            input,
            Payload {
                observed_content_type: "application/json".into(),
                mode: "INPUT".into(),
                data: Some("{\"x\":1}".into()),
                encoding: Some("JSON".into()),
                skipped: None,
            }
        );
        let output = c.record.capture_data.endpoint_output.unwrap();
        assert_eq!(output.data.as_deref(), Some("0.93,0.07\n"));
        assert_eq!(output.encoding.as_deref(), Some("CSV"));
        assert_eq!(output.mode, "OUTPUT");
        let m = c.record.event_metadata;
        assert_eq!(m.event_id, "00ff");
        assert_eq!(m.inference_time, "2026-12-03T12:34:56.789Z");
        assert_eq!(m.model_name, "titanic-v1");
        assert_eq!(m.sticky_key_hash.as_deref(), Some("9a3f"));
        assert_eq!(m.status, 200);
        assert_eq!(c.record.event_version, "0");
    }

    #[test]
    fn binary_and_non_utf8_bodies_are_base64_of_the_exact_bytes() {
        let mut h = headers(3);
        h.insert(H_INPUT_TYPE, "application/x-npy".into());
        // Non-UTF-8 bytes under a JSON content type are not text either.
        h.insert(H_OUTPUT_TYPE, "application/json".into());
        let body = [0x93, b'N', b'U', 0xff, 0xfe, 0x00];
        let c = build_with(&h, &body).unwrap();
        let decode = |p: &Payload| {
            assert_eq!(p.encoding.as_deref(), Some(ENCODING_BASE64));
            base64::engine::general_purpose::STANDARD
                .decode(p.data.as_deref().unwrap())
                .unwrap()
        };
        let d = &c.record.capture_data;
        assert_eq!(decode(d.endpoint_input.as_ref().unwrap()), &body[..3]);
        assert_eq!(decode(d.endpoint_output.as_ref().unwrap()), &body[3..]);
        assert_eq!(encoding_for("application/x-npy", b""), ENCODING_BASE64);
    }

    #[test]
    fn a_skipped_side_has_its_reason_and_no_data() {
        let mut h = headers(4);
        h.insert(H_OUTPUT_SKIPPED, "too_large".into());
        let c = build_with(&h, b"[1 ]").unwrap();
        let out = c.record.capture_data.endpoint_output.unwrap();
        assert_eq!(out.skipped, Some(Skipped::TooLarge));
        assert_eq!((out.data, out.encoding), (None, None));
        assert_eq!(out.observed_content_type, "text/csv");

        let mut h = headers(0);
        h.insert(H_INPUT_SKIPPED, "content_type".into());
        h.remove(H_INPUT_TYPE);
        let c = build_with(&h, b"1,2").unwrap();
        let input = c.record.capture_data.endpoint_input.unwrap();
        assert_eq!(input.skipped, Some(Skipped::ContentType));
        assert_eq!(input.observed_content_type, "");
        assert_eq!(input.data, None);
        // An empty body with no type is still a (base64, empty) payload, not a skipped one.
        let mut h = headers(0);
        h.remove(H_INPUT_TYPE);
        let c = build_with(&h, b"").unwrap();
        let input = c.record.capture_data.endpoint_input.unwrap();
        assert_eq!((input.data.as_deref(), input.skipped), (Some(""), None));
        assert_eq!(input.encoding.as_deref(), Some(ENCODING_BASE64));
    }

    #[test]
    fn records_serialize_to_one_line_that_parses_back() {
        let c = build_with(&headers(9), b"{\"a\":\n1}\n\n").unwrap();
        let line = c.line().unwrap();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
        let back: CaptureRecord = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, c.record);
    }

    #[test]
    fn bad_requests_name_the_header_at_fault() {
        // Header changes (None removes, Some sets), body, the header at fault.
        type Changes<'a> = &'a [(&'static str, Option<&'a str>)];
        let time_too_late = (MAX_TIME_MS + 1).to_string();
        let cases: [(Changes, &[u8], &str); 14] = [
            (&[(H_ENDPOINT, None)], b"", H_ENDPOINT),
            (&[(H_MODEL, None)], b"", H_MODEL),
            (&[(H_STATUS, None)], b"", H_STATUS),
            (&[(H_INPUT_LEN, None)], b"", H_INPUT_LEN),
            (&[(H_VARIANT, Some("../x"))], b"", H_VARIANT),
            (&[(H_VARIANT, Some(""))], b"", H_VARIANT),
            (&[(H_ENDPOINT, Some("a/b"))], b"", H_ENDPOINT),
            (&[(H_TIME_MS, Some("-1"))], b"", H_TIME_MS),
            (&[(H_TIME_MS, Some(&time_too_late))], b"", H_TIME_MS),
            (&[(H_STATUS, Some("70000"))], b"", H_STATUS),
            (&[(H_INPUT_LEN, Some("5"))], b"abc", H_INPUT_LEN),
            (&[(H_OUTPUT_SKIPPED, Some("huge"))], b"", H_OUTPUT_SKIPPED),
            (
                &[(H_OUTPUT_SKIPPED, Some("too_large"))],
                b"out",
                H_OUTPUT_SKIPPED,
            ),
            (
                &[
                    (H_INPUT_SKIPPED, Some("too_large")),
                    (H_INPUT_LEN, Some("2")),
                ],
                b"in",
                H_INPUT_LEN,
            ),
        ];
        for (i, (changes, body, header)) in cases.iter().enumerate() {
            let mut h = headers(0);
            for (name, value) in changes.iter().copied() {
                match value {
                    None => h.remove(name),
                    Some(v) => h.insert(name, v.to_string()),
                };
            }
            let e = build_with(&h, body).unwrap_err();
            assert_eq!(e.header(), Some(*header), "case {i}: {e}");
            assert!(e.to_string().contains(header), "case {i}: {e}");
        }
        // A value that is not UTF-8.
        let h = headers(0);
        let e = build(
            |name| {
                if name == H_MODEL {
                    Some(&[0xff][..])
                } else {
                    h.get(name).map(|v| v.as_bytes())
                }
            },
            b"",
            String::new,
        )
        .unwrap_err();
        assert_eq!(e.header(), Some(H_MODEL));
    }

    #[test]
    fn an_invocation_without_an_event_id_gets_a_new_one() {
        let mut h = headers(0);
        h.remove(H_EVENT_ID);
        let c = build_with(&h, b"").unwrap();
        assert_eq!(c.record.event_metadata.event_id, "new");
        h.insert(H_EVENT_ID, " ".into());
        let c = build_with(&h, b"").unwrap();
        assert_eq!(c.record.event_metadata.event_id, "new");
    }
}
