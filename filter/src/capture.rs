//! Data capture (`mlep_contract::capture`): a sampled invocation's request and response bodies,
//! collected while they stream through (never holding them up), and, once the response has
//! ended, queued for the root context to POST to the capture sink. Like shadow copies
//! (`crate::shadow`), streams only queue: the root owns the calls and their answers. Bounded:
//! at most [`MAX_QUEUED`] records waiting or in flight and [`MAX_QUEUED_BYTES`] of bodies
//! waiting; beyond that a record is dropped and counted `queue_full`, and a sink that fails
//! or is slow costs only its `timeoutMs` per record in flight, never a request.

use crate::compiled::Capture as Spec;
use mlep_contract::capture::{self as c, Skipped};
use mlep_contract::metrics::CaptureOutcome;
use std::collections::{HashMap, VecDeque};

/// Most records queued or in flight per VM.
pub const MAX_QUEUED: usize = 256;
/// Most body bytes of queued (not yet sent) records per VM.
pub const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;

/// One side of an invocation while it streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    Collecting(Vec<u8>),
    Skipped(Skipped),
}

impl Side {
    /// The side of content type `content_type`, captured or not by `spec`.
    fn start(spec: &Spec, wanted: bool, content_type: &str) -> Side {
        if !wanted {
            Side::Skipped(Skipped::NotCaptured)
        } else if !c::content_type_allowed(&spec.content_types, content_type) {
            Side::Skipped(Skipped::ContentType)
        } else {
            Side::Collecting(Vec::new())
        }
    }

    /// Whether the next chunk should be read from the host.
    pub fn wants(&self) -> bool {
        matches!(self, Side::Collecting(_))
    }

    /// Add a chunk of `len` bytes, read by `read` only when it fits.
    pub fn add(&mut self, max: usize, len: usize, read: impl FnOnce() -> Vec<u8>) {
        if let Side::Collecting(body) = self {
            if body.len() + len > max {
                *self = Side::Skipped(Skipped::TooLarge);
            } else if len > 0 {
                let chunk = read();
                if body.is_empty() {
                    *body = chunk;
                } else {
                    body.extend_from_slice(&chunk);
                }
            }
        }
    }

    /// Add a chunk already read (shared with the shadow's copy).
    pub fn add_bytes(&mut self, max: usize, chunk: &[u8]) {
        self.add(max, chunk.len(), || chunk.to_vec());
    }
}

/// A sampled invocation being collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The invocation's id in its record (`eventMetadata.eventId`), 128 random bits in hex.
    pub event_id: String,
    pub time_ms: u64,
    pub key_hash: Option<u64>,
    pub input_type: String,
    pub input: Side,
    /// `None` until the response headers arrive.
    pub output: Option<(String, Side)>,
}

impl Record {
    pub fn new(
        spec: &Spec,
        event_id: String,
        time_ms: u64,
        key_hash: Option<u64>,
        input_type: String,
    ) -> Self {
        let input = Side::start(spec, spec.request, &input_type);
        Self {
            event_id,
            time_ms,
            key_hash,
            input_type,
            input,
            output: None,
        }
    }

    pub fn response_started(&mut self, spec: &Spec, output_type: String) {
        let side = Side::start(spec, spec.response, &output_type);
        self.output = Some((output_type, side));
    }

    /// The sink call for this record: ingest headers and body (input bytes, then output).
    /// A side still collecting when the stream ended is `incomplete`.
    pub fn finish(
        self,
        spec: &Spec,
        endpoint: &str,
        variant: &str,
        model: &str,
        status: Option<u32>,
        complete: bool,
    ) -> Outgoing {
        let Record {
            event_id,
            time_ms,
            key_hash,
            input_type,
            input,
            output,
        } = self;
        let (output_type, output) =
            output.unwrap_or((String::new(), Side::Skipped(Skipped::Incomplete)));
        let seal = |side: Side| match side {
            Side::Collecting(_) if !complete => Side::Skipped(Skipped::Incomplete),
            s => s,
        };
        let (input, output) = (seal(input), seal(output));
        let mut headers = vec![
            (":method".to_owned(), "POST".to_owned()),
            (":path".to_owned(), c::INGEST_PATH.to_owned()),
            (":authority".to_owned(), spec.authority.clone()),
            (
                "content-type".to_owned(),
                "application/octet-stream".to_owned(),
            ),
            (c::H_ENDPOINT.to_owned(), endpoint.to_owned()),
            (c::H_VARIANT.to_owned(), variant.to_owned()),
            (c::H_MODEL.to_owned(), model.to_owned()),
            (c::H_EVENT_ID.to_owned(), event_id),
            (c::H_TIME_MS.to_owned(), time_ms.to_string()),
            (c::H_STATUS.to_owned(), status.unwrap_or(0).to_string()),
            (c::H_INPUT_TYPE.to_owned(), input_type),
            (c::H_OUTPUT_TYPE.to_owned(), output_type),
        ];
        if let Some(k) = key_hash {
            headers.push((c::H_KEY_HASH.to_owned(), format!("{k:016x}")));
        }
        let mut body = Vec::new();
        let mut input_len = 0;
        for (side, skipped_header, is_input) in [
            (input, c::H_INPUT_SKIPPED, true),
            (output, c::H_OUTPUT_SKIPPED, false),
        ] {
            match side {
                Side::Collecting(bytes) => {
                    if is_input {
                        input_len = bytes.len();
                        body = bytes;
                    } else {
                        body.extend_from_slice(&bytes);
                    }
                }
                Side::Skipped(why) => {
                    headers.push((skipped_header.to_owned(), why.as_str().to_owned()))
                }
            }
        }
        headers.push((c::H_INPUT_LEN.to_owned(), input_len.to_string()));
        Outgoing { headers, body }
    }
}

/// A record ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Outgoing {
    /// The value of ingest header `name`, if set.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Records waiting for the root context, and the calls in flight (by token).
#[derive(Debug, Default)]
pub struct Queue {
    queue: VecDeque<(usize, Outgoing)>,
    in_flight: HashMap<u32, usize>,
    bytes: usize,
}

impl Queue {
    /// Queue a record of endpoint `ep`; `false` (count it `queue_full`) when full.
    pub fn submit(&mut self, ep: usize, out: Outgoing) -> bool {
        if self.queue.len() + self.in_flight.len() >= MAX_QUEUED
            || self.bytes + out.body.len() > MAX_QUEUED_BYTES
        {
            return false;
        }
        self.bytes += out.body.len();
        self.queue.push_back((ep, out));
        true
    }

    pub fn drain(&mut self) -> Vec<(usize, Outgoing)> {
        self.bytes = 0;
        self.queue.drain(..).collect()
    }

    /// The record of `ep` went out as call `token`.
    pub fn sent(&mut self, token: u32, ep: usize) {
        self.in_flight.insert(token, ep);
    }

    /// The answer to `token`, if it was a capture call: its endpoint and outcome.
    pub fn answered(&mut self, token: u32, status: Option<u32>) -> Option<(usize, CaptureOutcome)> {
        let ep = self.in_flight.remove(&token)?;
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        Some((
            ep,
            if ok {
                CaptureOutcome::Sent
            } else {
                CaptureOutcome::SinkError
            },
        ))
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(content_types: &[&str], request: bool, response: bool) -> Spec {
        Spec {
            cluster: "sink".into(),
            authority: "sink.local".into(),
            per_million: 1_000_000,
            request,
            response,
            max_payload_bytes: 8,
            content_types: content_types.iter().map(|s| (*s).to_owned()).collect(),
            timeout_ms: 1000,
            outcomes: [0; CaptureOutcome::COUNT],
        }
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn both_bodies_travel_in_one_call_split_by_the_input_length() {
        let s = spec(&[], true, true);
        let mut r = Record::new(&s, "e1".into(), 42, Some(0xabc), "text/csv".into());
        r.input.add(8, 3, || b"1,2".to_vec());
        r.input.add(8, 1, || b"\n".to_vec());
        r.response_started(&s, "application/json".into());
        if let Some((_, side)) = r.output.as_mut() {
            side.add_bytes(8, b"[0.5]");
        }
        let o = r.finish(&s, "titanic", "a", "m1", Some(200), true);
        assert_eq!(o.body, b"1,2\n[0.5]");
        assert_eq!(o.header(c::H_INPUT_LEN), Some("4"));
        assert_eq!(o.header(c::H_KEY_HASH), Some("0000000000000abc"));
        assert_eq!(o.header(c::H_TIME_MS), Some("42"));
        assert_eq!(o.header(c::H_EVENT_ID), Some("e1"));
        assert_eq!(o.header(c::H_OUTPUT_TYPE), Some("application/json"));
        assert_eq!(o.header(c::H_INPUT_SKIPPED), None);
        assert_eq!(o.header(":path"), Some(c::INGEST_PATH));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn sides_too_large_of_other_types_not_wanted_or_cut_short_are_skipped_with_the_reason() {
        let s = spec(&["text/csv"], true, true);
        let mut r = Record::new(&s, "e2".into(), 0, None, "text/csv".into());
        let mut read = false;
        r.input.add(8, 9, || {
            read = true;
            vec![0; 9]
        });
        assert!(!read, "a chunk over the limit is not even read");
        assert_eq!(r.input, Side::Skipped(Skipped::TooLarge));
        r.response_started(&s, "image/png".into());
        let o = r.finish(&s, "e", "v", "m", Some(200), true);
        assert_eq!(o.header(c::H_INPUT_SKIPPED), Some("too_large"));
        assert_eq!(o.header(c::H_OUTPUT_SKIPPED), Some("content_type"));
        assert_eq!((o.body.len(), o.header(c::H_INPUT_LEN)), (0, Some("0")));

        let s = spec(&[], false, true);
        let r = Record::new(&s, "e2".into(), 0, None, "text/csv".into());
        let o = r.finish(&s, "e", "v", "m", None, false);
        assert_eq!(o.header(c::H_INPUT_SKIPPED), Some("not_captured"));
        assert_eq!(o.header(c::H_OUTPUT_SKIPPED), Some("incomplete"));
        assert_eq!(o.header(c::H_STATUS), Some("0"));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn the_queue_is_bounded_by_count_and_bytes_and_answers_are_told_by_token() {
        let mut q = Queue::default();
        let big = Outgoing {
            headers: vec![],
            body: vec![0; MAX_QUEUED_BYTES],
        };
        assert!(q.submit(0, big));
        let one = Outgoing {
            headers: vec![],
            body: vec![1],
        };
        assert!(!q.submit(0, one.clone()), "over the byte bound");
        assert_eq!(q.drain().len(), 1);
        for _ in 0..MAX_QUEUED {
            assert!(q.submit(1, one.clone()));
        }
        assert!(!q.submit(1, one.clone()), "over the count bound");
        for (token, (ep, _)) in q.drain().into_iter().enumerate() {
            q.sent(token as u32, ep);
        }
        assert!(!q.submit(1, one.clone()), "in-flight calls count too");
        assert_eq!(q.answered(0, Some(202)), Some((1, CaptureOutcome::Sent)));
        assert_eq!(
            q.answered(1, Some(503)),
            Some((1, CaptureOutcome::SinkError))
        );
        assert_eq!(q.answered(2, None), Some((1, CaptureOutcome::SinkError)));
        assert_eq!(q.answered(2, Some(200)), None, "each answer once");
        assert!(q.submit(1, one));
    }
}
