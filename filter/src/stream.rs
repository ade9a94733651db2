//! One HTTP stream through the filter, driven by the adapter's callbacks. Pure: all host
//! access goes through [`Host`], so the whole request path runs in native tests.

use crate::capture::Record;
use crate::compiled::{Compiled, Endpoint, ModelHeader, Shadow};
use crate::host::Host;
use crate::host::MetricId;
use crate::request::{decide, Decision, FromHost};
use crate::shadow::{shadow_headers, CompareSpec, Event, Hub, Outcome, Outgoing, SharedHub};
use crate::wake::{Call, Hold, Step, Wake};
use mlep_contract::latency::{model_duration_us, split, SERVER_TIMING_HEADER};
use mlep_contract::metrics::{
    Agreement, CaptureOutcome, CodeClass, HoldOutcome, MODEL_HEADER, VARIANT_HEADER,
};
use mlep_contract::CompareMode;
use std::cell::RefCell;
use std::rc::Rc;

/// What the adapter must do after the request headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestAction {
    Continue,
    /// Answer locally with this status and JSON body; the request goes nowhere.
    Reply {
        status: u32,
        body: String,
    },
    /// The variant is asleep: pause the request and send this call (from the stream's
    /// context); its answer goes to [`Stream::on_call_answer`].
    Hold(Call),
}

/// What the adapter must do after the answer to a held request's call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldAction {
    /// Send this call next.
    Call(Call),
    /// Let the request go (it carries the headers the assignment set).
    Resume,
    /// Answer locally with this status and JSON body.
    Reply { status: u32, body: String },
    /// Nothing now: the request goes at its next body callback (or is no longer held).
    Wait,
}

/// Whether a request body or trailers callback lets the request go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Pause,
}

/// A request held while its variant wakes. Envoy 1.40 delivers no body while the headers are
/// paused (it stops all iteration and hands the buffered body over after the resume, see
/// `adapter.rs`). For a host that does, body callbacks while held pause and each reports
/// (and reads from offset 0) everything buffered so far, as Envoy's Wasm `decodeData` does
/// once a body callback paused; the body is then handed to the shadow and capture logic
/// once, whole, when the request is let go.
#[derive(Debug)]
struct Held {
    wake: Rc<Wake>,
    hold: Hold,
    body_len: usize,
    body_end: bool,
    trailers: bool,
    /// Awake while the body was still arriving: the request goes at its next body callback
    /// (resuming from the call's answer would leave Envoy's Wasm context buffering the rest).
    ready: bool,
}

#[derive(Debug)]
struct Capture {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Drawn for comparison ([`crate::compiled::Shadow::draw_compared`]).
    compared: bool,
}

/// One stream; `H` is where its shadow hub lives ([`SharedHub`]).
#[derive(Debug)]
pub struct Stream<H = Rc<RefCell<Hub>>> {
    cfg: Rc<Compiled>,
    hub: H,
    /// `(endpoint, variant)` once assigned.
    assigned: Option<(usize, usize)>,
    /// When the request headers arrived (host clock, ns), for `mlep_request_duration_ms`.
    started_ns: u64,
    set_cookie: Option<String>,
    status: Option<u32>,
    /// The model's time (µs): its `Server-Timing` report, else request headers -> response
    /// headers by the host clock; `None` until response headers arrive.
    model_us: Option<u64>,
    capture: Option<Capture>,
    shadow_id: Option<u64>,
    /// The primary body collected for comparison (`None` once it is over the cap).
    primary: Option<Vec<u8>>,
    /// A data capture sample being collected (`crate::capture`).
    record: Option<Box<Record>>,
    held: Option<Box<Held>>,
    logged: bool,
}

/// Count `events` on the metrics of `cfg`.
pub fn count(cfg: &Compiled, events: &[Event], host: &mut dyn Host) {
    count_events(cfg, events, host, true);
}

/// Count `events` of copies the host refused to send: no Envoy cluster saw them, so the
/// filter counts them even where the shadow's cluster counts the copies sent.
pub fn count_unsent(cfg: &Compiled, events: &[Event], host: &mut dyn Host) {
    count_events(cfg, events, host, false);
}

fn count_events(cfg: &Compiled, events: &[Event], host: &mut dyn Host, sent: bool) {
    for m in shadow_metrics(cfg, events, sent) {
        host.increment(m);
    }
}

/// Send every copy `hub` has queued with `send` (the host's call to the shadow's cluster: its
/// token, or `Err` when the host refused it), recording each in the hub at `now_ms()`; the
/// events of the copies the host refused, for [`count_unsent`].
pub fn send_copies(
    cfg: &Compiled,
    hub: &impl SharedHub,
    now_ms: impl Fn() -> u64,
    mut send: impl FnMut(&Shadow, &Outgoing) -> Result<u32, ()>,
) -> Vec<Event> {
    let mut unsent = Vec::new();
    for o in hub.with(Hub::drain) {
        let Some(s) = cfg.endpoints.get(o.ep).and_then(|e| e.shadow.as_ref()) else {
            continue;
        };
        match send(s, &o) {
            Ok(token) => hub.with(|h| h.sent(o.id, o.body.len(), token, now_ms())),
            Err(()) => unsent.extend(hub.with(|h| h.send_failed(o.id, o.body.len()))),
        }
    }
    unsent
}

/// The counters `events` increment (`sent`: the copies reached the host, whose shadow
/// cluster may count their outcomes itself, [`crate::compiled::Shadow::counts`]).
pub fn shadow_metrics(cfg: &Compiled, events: &[Event], sent: bool) -> Vec<MetricId> {
    let metric = |e: &Event| {
        let ep = match *e {
            Event::Outcome { ep, .. } | Event::Agreement { ep, .. } => ep,
        };
        let s = cfg.endpoints.get(ep)?.shadow.as_ref()?;
        match *e {
            Event::Outcome { outcome, .. } if sent && !s.counts(outcome) => None,
            Event::Outcome { outcome, .. } => Some(s.outcome(outcome)),
            Event::Agreement { matched, .. } => Some(s.agreement(Agreement::of(matched))),
        }
    };
    events.iter().filter_map(metric).collect()
}

/// Add a body chunk read from the host: the first chunk is kept as read (a one-chunk body,
/// the usual case, is then copied once, by the host into the VM).
fn append(body: &mut Vec<u8>, chunk: Vec<u8>) {
    if body.is_empty() {
        *body = chunk;
    } else {
        body.extend_from_slice(&chunk);
    }
}

impl<H: SharedHub> Stream<H> {
    pub fn new(cfg: Rc<Compiled>, hub: H) -> Self {
        Self {
            cfg,
            hub,
            assigned: None,
            started_ns: 0,
            set_cookie: None,
            status: None,
            model_us: None,
            capture: None,
            shadow_id: None,
            primary: None,
            record: None,
            held: None,
            logged: false,
        }
    }

    /// Whether request body callbacks have anything to do (a copy or a capture record to
    /// fill, a held request): a host may skip them otherwise.
    pub fn wants_request_body(&self) -> bool {
        self.capture.is_some() || self.record.is_some() || self.held.is_some()
    }

    /// Whether response body callbacks have anything to do (a primary answer to compare, a
    /// capture record to fill).
    pub fn wants_response_body(&self) -> bool {
        self.primary.is_some() || self.record.is_some()
    }

    fn endpoint(&self) -> Option<&Endpoint> {
        self.assigned.and_then(|(ep, _)| self.cfg.endpoints.get(ep))
    }

    pub fn on_request_headers(&mut self, h: &mut dyn Host, end_of_stream: bool) -> RequestAction {
        // The route Envoy chose says whose request this is, not a client-written name.
        let Some(ep_index) = h
            .virtual_host_name()
            .and_then(|v| self.cfg.endpoint_for(&v))
        else {
            return RequestAction::Continue;
        };
        let cfg = Rc::clone(&self.cfg);
        let Some(ep) = cfg.endpoints.get(ep_index) else {
            return RequestAction::Continue;
        };
        // Whether this request is copied, and compared, is drawn first (its variant only
        // decides whether its traffic is mirrored at all). A copy the filter sends itself needs
        // every header: one bulk read then serves assignment too. Else the two or three
        // headers assignment needs, one call each, which costs about half (docs/filter.md,
        // "Instructions per request").
        // `(compared, twins)` of a request drawn for a copy.
        let drawn = ep
            .shadow
            .as_ref()
            .filter(|s| s.per_million > 0 && h.random() % 1_000_000 < s.per_million)
            .map(|s| (s.draw_compared(|| h.random()), s.mirror_routes));
        let sent_by_filter = drawn.is_some_and(|(compared, twins)| compared || !twins);
        let all = sent_by_filter.then(|| h.request_headers());
        let decision = match &all {
            Some(headers) => decide(ep, headers, h),
            None => decide(ep, &FromHost, h),
        };
        // Clients must not pick a route by sending the routing header themselves: every path
        // below either replaces it (a host "set" replaces all values, one host call instead of
        // remove + set) or removes it.
        match decision {
            Decision::Reject { body } => {
                h.remove_request_header(VARIANT_HEADER);
                RequestAction::Reply { status: 400, body }
            }
            Decision::Assign {
                variant,
                reason,
                set_cookie,
            } => {
                let Some(v) = ep.variants.get(variant) else {
                    h.remove_request_header(VARIANT_HEADER);
                    return RequestAction::Continue;
                };
                // One draw decided the copy, another whether it is compared. A copy not
                // compared goes through the route's mirroring twin when the routes have them
                // (`mlep_core::mirror`): Envoy sends it, the filter never sees its answer.
                let copy = drawn.filter(|_| v.mirror);
                let by_envoy = copy.is_some_and(|(compared, twins)| twins && !compared);
                h.set_request_header(
                    VARIANT_HEADER,
                    if by_envoy { &v.routed_twin } else { &v.routed },
                );
                match &v.model_header {
                    ModelHeader::Untouched => {}
                    ModelHeader::Remove => h.remove_request_header(MODEL_HEADER),
                    ModelHeader::Set(model) => h.set_request_header(MODEL_HEADER, model),
                }
                h.increment(v.metrics.assignments(reason));
                self.assigned = Some((ep_index, variant));
                // Two clock reads cost less than Envoy's `request.duration` attribute, whose
                // answer is copied into memory the host must first allocate inside the VM.
                self.started_ns = h.now_ns();
                self.set_cookie = set_cookie;
                if let (Some(s), Some((compared, _))) = (&ep.shadow, copy.filter(|_| !by_envoy)) {
                    let headers = all.unwrap_or_else(|| h.request_headers());
                    let headers = shadow_headers(headers, &s.authority, s.forward_credentials);
                    self.capture = Some(Capture {
                        headers,
                        body: Vec::new(),
                        compared,
                    });
                    if end_of_stream {
                        self.submit(h);
                    }
                }
                if let Some(c) = &ep.capture {
                    if c.per_million > 0 && h.random() % 1_000_000 < c.per_million {
                        self.start_record(h, ep_index);
                    }
                }
                match &v.wake {
                    None => RequestAction::Continue,
                    Some(w) => self.hold_if_asleep(h, w, end_of_stream),
                }
            }
        }
    }

    /// Hold the request unless its variant was seen awake in this VM a moment ago.
    fn hold_if_asleep(&mut self, h: &mut dyn Host, w: &Rc<Wake>, end: bool) -> RequestAction {
        let now = h.now_ms();
        if w.is_awake(now) {
            return RequestAction::Continue;
        }
        let (hold, call) = Hold::start(w, now);
        self.held = Some(Box::new(Held {
            wake: Rc::clone(w),
            hold,
            body_len: 0,
            body_end: end,
            trailers: false,
            ready: false,
        }));
        RequestAction::Hold(call)
    }

    /// The answer to a held request's call (`status` `None`: the call failed without one).
    pub fn on_call_answer(&mut self, h: &mut dyn Host, status: Option<u32>) -> HoldAction {
        let now = h.now_ms();
        let Some(held) = self.held.as_mut() else {
            return HoldAction::Wait;
        };
        match held.hold.answered(&held.wake, status, now) {
            Step::Call(c) => HoldAction::Call(c),
            Step::Reply {
                status,
                body,
                outcome,
            } => {
                h.increment(held.wake.holds(outcome));
                self.held = None;
                HoldAction::Reply { status, body }
            }
            Step::Resume => {
                h.increment(held.wake.holds(HoldOutcome::Woken));
                self.let_go(h).unwrap_or(HoldAction::Wait)
            }
        }
    }

    /// The host refused to send a held request's call.
    pub fn on_call_refused(&mut self, h: &mut dyn Host) -> HoldAction {
        // Envoy refuses a call it fails at once (a cluster with no endpoint: the async client
        // answers "no healthy upstream" inline and `httpCall` returns InternalFailure; an
        // unknown cluster: BadArgument): that is an answer that is not 200, so a refused
        // probe asks the control plane again, and refused wake calls end the hold after
        // `MAX_WAKE_FAILURES` (`crate::wake`).
        self.on_call_answer(h, None)
    }

    /// The variant is awake: hand the buffered body on and let the request go, or, while its
    /// body is still arriving, let it go at the next body callback (`Some(Wait)`).
    fn let_go(&mut self, h: &mut dyn Host) -> Option<HoldAction> {
        let held = self.held.as_mut()?;
        if held.body_len > 0 && !held.body_end && !held.trailers {
            held.ready = true;
            return Some(HoldAction::Wait);
        }
        let held = self.held.take()?;
        if held.body_len > 0 {
            self.on_request_body(h, held.body_len, held.body_end);
        }
        if held.trailers {
            self.on_request_trailers(h);
        }
        Some(HoldAction::Resume)
    }

    /// A request body callback; `len` is the chunk, or while held everything buffered so far.
    pub fn on_body(&mut self, h: &mut dyn Host, len: usize, end_of_stream: bool) -> Flow {
        if let Some(held) = self.held.as_mut() {
            held.body_len = len;
            held.body_end = end_of_stream;
            if !held.ready {
                return Flow::Pause;
            }
            self.held = None;
        }
        self.on_request_body(h, len, end_of_stream);
        Flow::Continue
    }

    /// Request trailers (the body, if any, has ended).
    pub fn on_trailers(&mut self, h: &mut dyn Host) -> Flow {
        if let Some(held) = self.held.as_mut() {
            held.trailers = true;
            if !held.ready {
                return Flow::Pause;
            }
            let len = held.body_len;
            self.held = None;
            if len > 0 {
                self.on_request_body(h, len, false);
            }
        }
        self.on_request_trailers(h);
        Flow::Continue
    }

    pub fn on_request_body(&mut self, h: &mut dyn Host, len: usize, end_of_stream: bool) {
        let Some(ep) = self.endpoint() else { return };
        let shadow_max = ep.shadow.as_ref().map(Shadow::body_cap);
        let capture_max = ep.capture.as_ref().map_or(0, |c| c.max_payload_bytes);
        let record_wants = self.record.as_ref().is_some_and(|r| r.input.wants());
        // A chunk both the shadow copy and a capture need is read from the host once.
        let mut shared = None;
        if let (Some(max), Some(c)) = (shadow_max, &mut self.capture) {
            if c.body.len() + len > max {
                self.capture = None;
                self.count_outcome(h, Outcome::Skipped);
            } else if len > 0 {
                let chunk = h.request_body(len);
                if record_wants {
                    shared = Some(chunk.clone());
                }
                append(&mut c.body, chunk);
            }
        }
        if let Some(r) = self.record.as_mut().filter(|_| record_wants) {
            match &shared {
                Some(chunk) => r.input.add_bytes(capture_max, chunk),
                None => r.input.add(capture_max, len, || h.request_body(len)),
            }
        }
        if end_of_stream {
            self.submit(h);
        }
    }

    /// Request trailers end the request body.
    pub fn on_request_trailers(&mut self, h: &mut dyn Host) {
        self.submit(h);
    }

    fn count_outcome(&self, h: &mut dyn Host, outcome: Outcome) {
        if let Some((ep, _)) = self.assigned {
            count(&self.cfg, &[Event::Outcome { ep, outcome }], h);
        }
    }

    fn submit(&mut self, h: &mut dyn Host) {
        let Some(c) = self.capture.take() else { return };
        let Some((ep, _)) = self.assigned else { return };
        let Some(s) = self.cfg.endpoints.get(ep).and_then(|e| e.shadow.as_ref()) else {
            return;
        };
        let compared = c.compared;
        let spec = CompareSpec {
            mode: if compared {
                s.compare
            } else {
                CompareMode::Off
            },
            tolerance: s.tolerance,
            timeout_ms: s.timeout_ms,
            max_body_bytes: s.body_cap(),
        };
        let now = h.now_ms();
        let id = (self.hub).with(|hub| hub.submit(ep, spec, c.headers, c.body, now));
        match id {
            None => self.count_outcome(h, Outcome::Skipped),
            Some(id) => {
                self.shadow_id = Some(id);
                if compared {
                    self.primary = Some(Vec::new());
                }
                h.send_queued();
            }
        }
    }

    pub fn on_response_headers(&mut self, h: &mut dyn Host, end_of_stream: bool) {
        if self.assigned.is_none() {
            return;
        }
        self.status = h
            .response_header(":status")
            .and_then(|s| s.trim().parse().ok());
        self.model_us = Some(self.model_time(h));
        // The variant's route, not the filter, names it on the response (`x-mlep-variant`,
        // `mlep_core::envoy::restored_variant`): one host call less, and the header says
        // which variant's route served.
        if let Some(c) = self.set_cookie.take() {
            h.add_response_header("set-cookie", &c);
        }
        if let Some(r) = self.record.as_mut() {
            if let Some(spec) = self
                .assigned
                .and_then(|(ep, _)| self.cfg.endpoints.get(ep))
                .and_then(|e| e.capture.as_ref())
            {
                r.response_started(spec, h.response_header("content-type").unwrap_or_default());
            }
        }
        if end_of_stream {
            self.primary_finished(h);
        }
    }

    /// The model's own time (µs) as its server reports it in a response header (the
    /// client cannot forge one: only what the upstream, or Envoy's own local reply, sends is
    /// read), else the upstream time: request headers to response headers, the time the
    /// model had the request, by the same clock as the total (one more clock read, only for
    /// containers that do not report).
    fn model_time(&self, h: &mut dyn Host) -> u64 {
        match h
            .response_header(SERVER_TIMING_HEADER)
            .and_then(|v| model_duration_us(&v))
        {
            Some(us) => us,
            None => h.now_ns().saturating_sub(self.started_ns) / 1_000,
        }
    }

    pub fn on_response_body(&mut self, h: &mut dyn Host, len: usize, end_of_stream: bool) {
        let (max, capture_max) = self.endpoint().map_or((0, 0), |e| {
            (
                e.shadow.as_ref().map_or(0, Shadow::body_cap),
                e.capture.as_ref().map_or(0, |c| c.max_payload_bytes),
            )
        });
        let record_wants = self
            .record
            .as_ref()
            .and_then(|r| r.output.as_ref())
            .is_some_and(|(_, side)| side.wants());
        let mut shared = None;
        if let Some(b) = &mut self.primary {
            // The hub counts the bytes collected against the VM's budget as they arrive.
            let held = |id| self.hub.with(|hub| hub.hold_primary(id, len));
            if b.len() + len > max || !self.shadow_id.is_some_and(held) {
                self.primary = None;
                self.report_primary(h, None);
            } else if len > 0 {
                let chunk = h.response_body(len);
                if record_wants {
                    shared = Some(chunk.clone());
                }
                append(b, chunk);
            }
        }
        if let Some((_, side)) = self
            .record
            .as_mut()
            .and_then(|r| r.output.as_mut())
            .filter(|_| record_wants)
        {
            match &shared {
                Some(chunk) => side.add_bytes(capture_max, chunk),
                None => side.add(capture_max, len, || h.response_body(len)),
            }
        }
        if end_of_stream {
            self.primary_finished(h);
        }
    }

    fn primary_finished(&mut self, h: &mut dyn Host) {
        if let Some(b) = self.primary.take() {
            self.report_primary(h, Some(b));
        }
        self.finish_record(h, true);
    }

    /// Sample this invocation for data capture: its time, sticky key hash and request type.
    fn start_record(&mut self, h: &mut dyn Host, ep_index: usize) {
        let cfg = Rc::clone(&self.cfg);
        let Some(ep) = cfg.endpoints.get(ep_index) else {
            return;
        };
        let Some(spec) = &ep.capture else { return };
        // The key the assignment used: the client's (header or cookie), else the one the
        // filter just made for its cookie.
        let key = crate::request::sticky_key(ep, &FromHost, &*h).or_else(|| {
            let cookie = self.set_cookie.as_deref()?;
            let value = cookie.split(';').next()?.split_once('=')?.1;
            Some(value.to_owned())
        });
        let key_hash = key.map(|k| {
            mlep_contract::hash::hash_key(
                &ep.salt,
                crate::request::cut(&k, crate::request::MAX_KEY_BYTES),
            )
        });
        let input_type = h.request_header("content-type").unwrap_or_default();
        let event_id = format!("{:016x}{:016x}", h.random(), h.random());
        self.record = Some(Box::new(Record::new(
            spec,
            event_id,
            h.now_ms(),
            key_hash,
            input_type,
        )));
    }

    /// Queue the capture record for the sink: once the response ended (`complete`), or when
    /// the stream ends before it did.
    fn finish_record(&mut self, h: &mut dyn Host, complete: bool) {
        let Some(r) = self.record.take() else { return };
        let Some((ep_index, variant)) = self.assigned else {
            return;
        };
        let cfg = Rc::clone(&self.cfg);
        let Some(ep) = cfg.endpoints.get(ep_index) else {
            return;
        };
        let (Some(spec), Some(v)) = (&ep.capture, ep.variants.get(variant)) else {
            return;
        };
        let out = r.finish(spec, &ep.name, &v.name, &v.model, self.status, complete);
        let queued = (self.hub).with(|hub| hub.captures.submit(ep_index, out));
        if queued {
            h.send_queued();
        } else {
            h.increment(spec.outcome(CaptureOutcome::QueueFull));
        }
    }

    fn report_primary(&mut self, h: &mut dyn Host, body: Option<Vec<u8>>) {
        if let Some(id) = self.shadow_id.take() {
            let events = self.hub.with(|hub| hub.primary_done(id, body));
            count(&self.cfg, &events, h);
        }
    }

    /// The stream is over (proxy-wasm `on_log`): count the request, its duration and its
    /// model / overhead split (`mlep_contract::latency`).
    pub fn on_log(&mut self, h: &mut dyn Host) {
        if self.logged {
            return;
        }
        self.logged = true;
        // Still held (not yet let go): the client went away while its variant woke.
        if let Some(held) = self.held.take().filter(|held| !held.ready) {
            h.increment(held.wake.holds(HoldOutcome::Abandoned));
        }
        // A stream that ended before its response finished cannot be compared.
        self.primary = None;
        self.report_primary(h, None);
        if self.capture.take().is_some() {
            self.count_outcome(h, Outcome::Skipped);
        }
        self.finish_record(h, false);
        let Some((ep, variant)) = self.assigned else {
            return;
        };
        let cfg = Rc::clone(&self.cfg);
        let Some(v) = cfg.endpoints.get(ep).and_then(|e| e.variants.get(variant)) else {
            return;
        };
        let class = self.status.map_or(CodeClass::Other, CodeClass::of);
        h.increment(v.metrics.requests(class));
        let total_ns = h.now_ns().saturating_sub(self.started_ns);
        h.record(v.metrics.duration, total_ns / 1_000_000);
        // No response headers (the client went away first): no model time to split by.
        if let Some(model_us) = self.model_us {
            let s = split(total_ns / 1_000, model_us);
            h.record(v.metrics.model_latency, s.model_us);
            h.record(v.metrics.overhead_latency, s.overhead_us);
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod props;

#[cfg(test)]
mod hold_tests;

#[cfg(test)]
mod shadow_tests;
