//! The request path: arbitrary headers, cookies, statuses, chunked bodies and shadow answers
//! through the stream logic with the in-memory host. Never panics; an assigned request
//! carries exactly one valid `x-mlep-variant` (a variant's routed value or, with twin routes,
//! its mirroring twin's); a rejected one carries none; shadow copies
//! carry no credentials; the hub stays within its bounds and drains.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use mlep_filter::compiled::Compiled;
use mlep_filter::host::{Host, MemHost};
use mlep_filter::shadow::{Hub, MAX_HUB_BYTES, MAX_PENDING};
use mlep_filter::stream::{count, RequestAction, Stream};
use std::cell::RefCell;
use std::rc::Rc;

const CONFIG: &str = include_str!("../../examples/filter-config.json");

#[derive(Arbitrary, Debug)]
struct Request {
    headers: Vec<(Name, String)>,
    status: String,
    request_chunks: Vec<Vec<u8>>,
    trailers: bool,
    response_chunks: Vec<Vec<u8>>,
    /// The shadow's answer: status (`None`: no answer) and body, and whether it comes first.
    shadow: Option<(u16, Vec<u8>)>,
    shadow_first: bool,
    ends_early: bool,
}

#[derive(Arbitrary, Debug)]
enum Name {
    Authority,
    Cookie,
    UserId,
    Target,
    Variant,
    Authorization,
    Other(String),
}

impl Name {
    fn as_str(&self) -> &str {
        match self {
            Name::Authority => ":authority",
            Name::Cookie => "cookie",
            Name::UserId => "x-user-id",
            Name::Target => "x-mlep-target-variant",
            Name::Variant => "x-mlep-variant",
            Name::Authorization => "authorization",
            Name::Other(s) => s,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    percent: u8,
    /// `Some(p)`: `p` % of the copies compared, the rest sent through the routes' mirroring
    /// twins (`mirrorRoutes`).
    twins: Option<u8>,
    seed: u64,
    requests: Vec<Request>,
}

fuzz_target!(|input: Input| {
    let mut cfg = CONFIG.replace(
        "\"percent\": 10",
        &format!("\"percent\": {}", input.percent % 101),
    );
    if let Some(p) = input.twins {
        cfg = cfg.replace(
            "\"tolerance\": 0.000001}",
            &format!("\"tolerance\": 0.000001, \"percent\": {}}}, \"mirrorRoutes\": true", p % 101),
        );
    }
    let mut h = MemHost {
        seed: input.seed,
        ..MemHost::default()
    };
    let cfg = Rc::new(Compiled::from_json(cfg.as_bytes(), &mut h).expect("example config"));
    let hub = Rc::new(RefCell::new(Hub::new()));
    let mut token = 0u32;
    for r in input.requests.iter().take(16) {
        h.request = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
            .collect();
        // The virtual host Envoy would route to: Istio names it `<host>:<port>`.
        h.vhost = h.request_header(":authority").map(|a| format!("{a}:80"));
        h.response = vec![(":status".into(), r.status.clone())];
        let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
        let no_body = r.request_chunks.is_empty() && !r.trailers;
        let action = s.on_request_headers(&mut h, no_body);
        let variants: Vec<String> = h
            .request
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("x-mlep-variant"))
            .map(|(_, v)| v.clone())
            .collect();
        match action {
            RequestAction::Reply { status, .. } => {
                assert_eq!(status, 400);
                assert!(variants.is_empty(), "a rejected request keeps no variant");
            }
            // A held request (its variant asleep) is assigned like any other.
            RequestAction::Continue | RequestAction::Hold(_) => {
                let ours = h.vhost.as_deref().and_then(|v| cfg.endpoint_for(v));
                if let Some(ep) = ours {
                    assert_eq!(variants.len(), 1, "{variants:?}");
                    let entries = &cfg.endpoints[ep].variants;
                    assert!(
                        entries
                            .iter()
                            .any(|v| v.routed == variants[0] || v.routed_twin == variants[0]),
                        "the routed value of a variant or its mirroring twin: {variants:?}"
                    );
                }
            }
        }
        for (i, c) in r.request_chunks.iter().enumerate() {
            h.request_chunk = c.clone();
            let last = i + 1 == r.request_chunks.len() && !r.trailers;
            s.on_request_body(&mut h, c.len(), last);
        }
        if r.trailers {
            s.on_request_trailers(&mut h);
        }
        // The root sends what was queued; copies carry no credentials.
        // Drain first: a `RefMut` in the loop head lives for the whole loop.
        let queued = hub.borrow_mut().drain();
        for o in queued {
            assert!(!o.headers.iter().any(|(k, _)| {
                let k = k.to_ascii_lowercase();
                k == "cookie" || k == "authorization"
            }));
            token += 1;
            hub.borrow_mut().sent(o.id, o.body.len(), token, h.now);
        }
        let answer = |h: &mut MemHost| {
            if let Some((status, body)) = &r.shadow {
                let events =
                    hub.borrow_mut()
                        .shadow_done(token, Some(u32::from(*status)), body.clone(), h.now);
                count(&cfg, &events, h);
            }
        };
        if r.shadow_first {
            answer(&mut h);
        }
        if !r.ends_early {
            s.on_response_headers(&mut h, r.response_chunks.is_empty());
            for (i, c) in r.response_chunks.iter().enumerate() {
                h.response_chunk = c.clone();
                s.on_response_body(&mut h, c.len(), i + 1 == r.response_chunks.len());
            }
        }
        s.on_log(&mut h);
        if !r.shadow_first {
            answer(&mut h);
        }
        h.now += 7;
        let hub = hub.borrow();
        assert!(hub.in_flight() <= MAX_PENDING && hub.bytes() <= MAX_HUB_BYTES);
    }
    // Everything left is evicted after its timeout, and nothing stays behind.
    let events = hub.borrow_mut().evict(h.now + 1_000_000);
    count(&cfg, &events, &mut h);
    let hub = hub.borrow();
    assert_eq!((hub.in_flight(), hub.queued(), hub.bytes()), (0, 0, 0));
});
