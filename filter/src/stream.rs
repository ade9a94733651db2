//! One HTTP stream through the filter, driven by the adapter's callbacks. Pure: all host
//! access goes through [`Host`], so the whole request path runs in native tests.

use crate::compiled::{Compiled, Endpoint, ModelHeader};
use crate::host::Host;
use crate::request::{decide, Decision, FromHost};
use crate::shadow::{shadow_headers, CompareSpec, Event, Hub, Outcome};
use mlep_contract::metrics::{Agreement, CodeClass, MODEL_HEADER, VARIANT_HEADER};
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
}

#[derive(Debug)]
struct Capture {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Debug)]
pub struct Stream {
    cfg: Rc<Compiled>,
    hub: Rc<RefCell<Hub>>,
    /// `(endpoint, variant)` once assigned.
    assigned: Option<(usize, usize)>,
    /// When the request headers arrived (host clock, ns), for `mlep_request_duration_ms`.
    started_ns: u64,
    set_cookie: Option<String>,
    status: Option<u32>,
    capture: Option<Capture>,
    shadow_id: Option<u64>,
    /// The primary body collected for comparison (`None` once it is over the cap).
    primary: Option<Vec<u8>>,
    logged: bool,
}

/// Count `events` on the metrics of `cfg`.
pub fn count(cfg: &Compiled, events: &[Event], host: &mut dyn Host) {
    for e in events {
        let ep = match *e {
            Event::Outcome { ep, .. } | Event::Agreement { ep, .. } => ep,
        };
        let Some(s) = cfg.endpoints.get(ep).and_then(|x| x.shadow.as_ref()) else {
            continue;
        };
        host.increment(match *e {
            Event::Outcome { outcome, .. } => s.outcome(outcome),
            Event::Agreement { matched, .. } => s.agreement(Agreement::of(matched)),
        });
    }
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

impl Stream {
    pub fn new(cfg: Rc<Compiled>, hub: Rc<RefCell<Hub>>) -> Self {
        Self {
            cfg,
            hub,
            assigned: None,
            started_ns: 0,
            set_cookie: None,
            status: None,
            capture: None,
            shadow_id: None,
            primary: None,
            logged: false,
        }
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
        // Every header in one host call when the shadow copy will need them all anyway (a
        // shadow sampling every request); else the two or three assignment needs, one call
        // each, which costs about half (docs/filter.md, "Instructions per request").
        let all = ep.read_all_headers.then(|| h.request_headers());
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
                h.set_request_header(VARIANT_HEADER, &v.routed);
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
                if let Some(s) = ep.shadow.as_ref().filter(|_| v.mirror) {
                    if s.per_million > 0 && h.random() % 1_000_000 < s.per_million {
                        let headers = all.unwrap_or_else(|| h.request_headers());
                        let headers = shadow_headers(headers, &s.authority, s.forward_credentials);
                        self.capture = Some(Capture {
                            headers,
                            body: Vec::new(),
                        });
                        if end_of_stream {
                            self.submit(h);
                        }
                    }
                }
                RequestAction::Continue
            }
        }
    }

    pub fn on_request_body(&mut self, h: &mut dyn Host, len: usize, end_of_stream: bool) {
        let Some(max) = self
            .endpoint()
            .and_then(|e| e.shadow.as_ref())
            .map(|s| s.max_body_bytes)
        else {
            return;
        };
        if let Some(c) = &mut self.capture {
            if c.body.len() + len > max {
                self.capture = None;
                self.count_outcome(h, Outcome::Skipped);
                return;
            }
            if len > 0 {
                append(&mut c.body, h.request_body(len));
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
        let spec = CompareSpec {
            mode: s.compare,
            tolerance: s.tolerance,
            timeout_ms: s.timeout_ms,
        };
        let now = h.now_ms();
        let (id, wake) = {
            let mut hub = self.hub.borrow_mut();
            let id = hub.submit(ep, spec, c.headers, c.body, now);
            let wake = id.is_some() && !hub.tick_armed;
            if wake {
                hub.tick_armed = true;
            }
            (id, wake)
        };
        match id {
            None => self.count_outcome(h, Outcome::Skipped),
            Some(id) => {
                self.shadow_id = Some(id);
                if s.compare != CompareMode::Off {
                    self.primary = Some(Vec::new());
                }
                if wake {
                    h.wake_root();
                }
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
        // The variant's route, not the filter, names it on the response (`x-mlep-variant`,
        // `mlep_core::envoy::restored_variant`): one host call less, and the header says
        // which variant's route served.
        if let Some(c) = self.set_cookie.take() {
            h.add_response_header("set-cookie", &c);
        }
        if end_of_stream {
            self.primary_finished(h);
        }
    }

    pub fn on_response_body(&mut self, h: &mut dyn Host, len: usize, end_of_stream: bool) {
        let max = self
            .endpoint()
            .and_then(|e| e.shadow.as_ref())
            .map_or(0, |s| s.max_body_bytes);
        if let Some(b) = &mut self.primary {
            if b.len() + len > max {
                self.primary = None;
                self.report_primary(h, None);
            } else if len > 0 {
                append(b, h.response_body(len));
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
    }

    fn report_primary(&mut self, h: &mut dyn Host, body: Option<Vec<u8>>) {
        if let Some(id) = self.shadow_id.take() {
            let events = self.hub.borrow_mut().primary_done(id, body);
            count(&self.cfg, &events, h);
        }
    }

    /// The stream is over (proxy-wasm `on_log`): count the request and its duration.
    pub fn on_log(&mut self, h: &mut dyn Host) {
        if self.logged {
            return;
        }
        self.logged = true;
        // A stream that ended before its response finished cannot be compared.
        self.primary = None;
        self.report_primary(h, None);
        if self.capture.take().is_some() {
            self.count_outcome(h, Outcome::Skipped);
        }
        let Some((ep, variant)) = self.assigned else {
            return;
        };
        let cfg = Rc::clone(&self.cfg);
        let Some(v) = cfg.endpoints.get(ep).and_then(|e| e.variants.get(variant)) else {
            return;
        };
        let class = self.status.map_or(CodeClass::Other, CodeClass::of);
        h.increment(v.metrics.requests(class));
        let ms = h.now_ns().saturating_sub(self.started_ns) / 1_000_000;
        h.record(v.metrics.duration, ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemHost;

    /// The stat name of `metric` for the test endpoint (`default/titanic`), `variant` and
    /// `model`, plus `extra` labels (the contract's encoding).
    fn stat(metric: &str, variant: &str, model: &str, extra: &[(&str, &str)]) -> String {
        let mut labels = vec![
            ("endpoint", "titanic"),
            ("namespace", "default"),
            ("variant", variant),
            ("model", model),
        ];
        labels.extend_from_slice(extra);
        mlep_contract::metrics::stat_name(metric, &labels)
    }

    const EXAMPLE: &str = include_str!("../../examples/filter-config.json");

    fn setup(patch: impl Fn(&str) -> String) -> (Rc<Compiled>, Rc<RefCell<Hub>>, MemHost) {
        let mut host = MemHost::default();
        let cfg = Compiled::from_json(patch(EXAMPLE).as_bytes(), &mut host).unwrap();
        (Rc::new(cfg), Rc::new(RefCell::new(Hub::new())), host)
    }

    /// The example config's route key: the request values the filter sets carry it.
    const KEY: &str = "Zm9yLXRoZS1leGFtcGxlLW9ubHk";

    fn routed(name: &str) -> String {
        mlep_contract::routed_value(name, KEY)
    }

    fn request(host: &mut MemHost, headers: &[(&str, &str)]) {
        host.vhost = MemHost::with_request(headers).vhost;
        host.request = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        host.response = vec![(":status".into(), "200".into())];
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn assigned_requests_carry_the_routed_variant_and_are_counted() {
        let (cfg, hub, mut h) = setup(|s| s.replace("\"percent\": 10", "\"percent\": 0"));
        request(
            &mut h,
            &[
                (":authority", "titanic.example.com"),
                ("x-user-id", "u1"),
                ("x-mlep-variant", "b"),
            ],
        );
        h.now = 100;
        let mut s = Stream::new(cfg, hub);
        assert_eq!(s.on_request_headers(&mut h, true), RequestAction::Continue);
        h.now = 107;
        let v = h.request_header("x-mlep-variant").unwrap();
        let expected = if mlep_contract::bucket_of("default/titanic", "u1") < 8000 {
            "a"
        } else {
            "b"
        };
        // The routes match the variant with the route key; the client's "b" is gone.
        assert_eq!(v, routed(expected));
        s.on_response_headers(&mut h, true);
        // The variant's route names it on the response (Envoy tests), not the filter.
        assert_eq!(h.response_header("x-mlep-variant"), None);
        assert!(h.response_values("set-cookie").is_empty());
        s.on_log(&mut h);
        let model = if expected == "a" {
            "titanic-v1"
        } else {
            "titanic-v2"
        };
        assert_eq!(
            h.counter(&stat(
                "mlep_requests_total",
                expected,
                model,
                &[("code_class", "2xx")]
            )),
            1
        );
        assert_eq!(
            h.counter(&stat(
                "mlep_assignments_total",
                expected,
                model,
                &[("reason", "sticky")]
            )),
            1
        );
        let duration_name = stat("mlep_request_duration_ms", expected, model, &[]);
        let duration = h.names.iter().position(|n| *n == duration_name).unwrap() as u32;
        assert_eq!(h.records[&duration], vec![7]);
    }

    /// Variant b (buckets 8000..10000) rolling out to titanic-v3, buckets 8000..9000 moved.
    pub(super) fn rolling_out(s: &str) -> String {
        s.replace("\"percent\": 10", "\"percent\": 0").replace(
            "{\"name\": \"b\", \"model\": \"titanic-v2\", \"weight\": 20}",
            "{\"name\": \"b\", \"model\": \"titanic-v2\", \"weight\": 20, \"rollout\": {\"model\": \"titanic-v3\", \"buckets\": [{\"start\": 8000, \"end\": 9000}]}}",
        )
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_rollout_sends_moved_users_to_the_new_model_and_counts_them_under_it() {
        let (cfg, hub, mut h) = setup(rolling_out);
        assert_eq!(
            cfg.endpoints[0].variants.len(),
            3,
            "a, b and b's rollout entry"
        );
        let mut seen = std::collections::BTreeMap::new();
        for i in 0..400 {
            let key = format!("user-{i}");
            // A client-sent model header never survives on a variant being rolled out: it names
            // the new model on moved users and is gone from the others.
            request(
                &mut h,
                &[
                    (":authority", "titanic.example.com"),
                    ("x-user-id", key.as_str()),
                    ("x-mlep-model", "titanic-v3"),
                ],
            );
            let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
            s.on_request_headers(&mut h, true);
            let bucket = mlep_contract::bucket_of("default/titanic", &key);
            let (variant, model) = match bucket {
                // a has no rollout: the client's model header is left alone, and without the
                // route key no route obeys it.
                0..8000 => ("a", Some("titanic-v3".to_owned())),
                8000..9000 => ("b", Some(routed("titanic-v3"))),
                _ => ("b", None),
            };
            assert_eq!(h.request_header("x-mlep-variant"), Some(routed(variant)));
            assert_eq!(h.request_header("x-mlep-model"), model, "{key} {bucket}");
            s.on_response_headers(&mut h, true);
            s.on_log(&mut h);
            if variant == "b" {
                let served = if model.is_some() {
                    "titanic-v3"
                } else {
                    "titanic-v2"
                };
                *seen.entry(served).or_insert(0u64) += 1;
            }
        }
        let count = |variant: &str, model: &str| {
            h.counter(&stat(
                "mlep_requests_total",
                variant,
                model,
                &[("code_class", "2xx")],
            ))
        };
        assert_eq!(count("b", "titanic-v3"), seen["titanic-v3"]);
        assert_eq!(count("b", "titanic-v2"), seen["titanic-v2"]);
        assert!(seen["titanic-v3"] > 0 && seen["titanic-v2"] > 0, "{seen:?}");
    }

    /// The model serving one request with `headers` (targeting b unless they say otherwise),
    /// and the stream's entry.
    fn served(cfg: &Rc<Compiled>, h: &mut MemHost, headers: &[(&str, &str)]) -> Option<String> {
        let mut all = vec![
            (":authority", "titanic.example.com"),
            ("x-mlep-model", "titanic-v3"),
        ];
        all.extend_from_slice(headers);
        request(h, &all);
        let mut s = Stream::new(Rc::clone(cfg), Rc::new(RefCell::new(Hub::new())));
        s.on_request_headers(h, true);
        s.on_response_headers(h, true);
        s.on_log(h);
        // A model header the routes obey carries the route key; show any other as such.
        h.request_header("x-mlep-model")
            .map(|m| match m.strip_suffix(&format!(".{KEY}")) {
                Some(model) => model.to_owned(),
                None => format!("unkeyed {m}"),
            })
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_targeted_keyed_request_follows_the_rollout_by_its_key_and_its_share() {
        // b rolls out with half of its buckets (8000..9000 of 8000..10000) moved.
        let (cfg, _, mut h) = setup(rolling_out);
        let (mut moved, n) = (0u64, 2000);
        for i in 0..n {
            let key = format!("user-{i}");
            let target = [("x-mlep-target-variant", "b"), ("x-user-id", key.as_str())];
            let model = served(&cfg, &mut h, &target);
            assert_eq!(h.request_header("x-mlep-variant"), Some(routed("b")));
            // The same key always gets the same model, from the header or from the cookie.
            assert_eq!(served(&cfg, &mut h, &target), model, "{key}");
            let cookie = format!("mlep-titanic={key}");
            let by_cookie = [("x-mlep-target-variant", "b"), ("cookie", cookie.as_str())];
            assert_eq!(served(&cfg, &mut h, &by_cookie), model, "{key}");
            // A user of b gets with the target what they get without it.
            if mlep_contract::bucket_of("default/titanic", &key) >= 8000 {
                let own = served(&cfg, &mut h, &[("x-user-id", key.as_str())]);
                assert_eq!(own, model, "{key}");
            }
            match model.as_deref() {
                Some("titanic-v3") => moved += 1,
                None => {}
                other => panic!("model header {other:?}"),
            }
        }
        // ~half of the keys, as for b's own users (binomial, n = 2000: sd ~ 1.1%).
        assert!((900..1100).contains(&moved), "{moved} of {n} moved");
        // Counted under the model that served them, with reason target (3 per moved key).
        let target = |model: &str| {
            h.counter(&stat(
                "mlep_assignments_total",
                "b",
                model,
                &[("reason", "target")],
            ))
        };
        assert_eq!(target("titanic-v3"), 3 * moved);
        assert_eq!(target("titanic-v2"), 3 * (n - moved));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_targeted_keyless_request_goes_to_the_new_model_with_the_moved_share() {
        let (cfg, _, mut h) = setup(rolling_out);
        let n = 2000;
        let moved = (0..n)
            .filter(|_| served(&cfg, &mut h, &[("x-mlep-target-variant", "b")]).is_some())
            .count();
        assert!((900..1100).contains(&moved), "{moved} of {n} moved");
        // Targeting sets no cookie (as without a rollout).
        assert!(h.response_header("set-cookie").is_none());
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn targeting_a_variant_with_nothing_moved_serves_its_old_model() {
        // A BlueGreen bake (or a rollback) has no moved bucket: every targeted request stays.
        let (cfg, _, mut h) =
            setup(|s| rolling_out(s).replace("{\"start\": 8000, \"end\": 9000}", ""));
        for i in 0..200 {
            let key = format!("user-{i}");
            let keyed = [("x-mlep-target-variant", "b"), ("x-user-id", key.as_str())];
            assert_eq!(served(&cfg, &mut h, &keyed), None);
            assert_eq!(
                served(&cfg, &mut h, &[("x-mlep-target-variant", "b")]),
                None
            );
        }
        // Targeting a, which has no rollout, leaves the client's model header alone: without
        // the route key no route obeys it.
        assert_eq!(
            served(
                &cfg,
                &mut h,
                &[("x-mlep-target-variant", "a"), ("x-user-id", "u")]
            )
            .as_deref(),
            Some("unkeyed titanic-v3")
        );
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_shadow_limited_to_one_variant_mirrors_only_that_variants_requests() {
        let (cfg, hub, mut h) =
            setup(|s| s.replace("\"percent\": 10", "\"percent\": 100, \"variant\": \"b\""));
        let (mut on_b, mut copies) = (0, 0);
        for i in 0..200 {
            let key = format!("user-{i}");
            request(
                &mut h,
                &[
                    (":authority", "titanic.example.com"),
                    ("x-user-id", key.as_str()),
                ],
            );
            let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
            s.on_request_headers(&mut h, true);
            on_b += usize::from(h.request_header("x-mlep-variant") == Some(routed("b")));
            copies += hub.borrow_mut().drain().len();
        }
        assert!(on_b > 0, "some users are on b");
        assert_eq!(copies, on_b, "exactly b's requests were mirrored");
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_client_sent_variant_header_is_stripped_even_when_assignment_fails() {
        let (cfg, hub, mut h) = setup(|s| s.to_owned());
        request(
            &mut h,
            &[
                (":authority", "titanic.example.com"),
                ("x-mlep-variant", "b"),
                ("x-mlep-target-variant", "nope"),
            ],
        );
        let mut s = Stream::new(cfg, hub);
        assert!(matches!(
            s.on_request_headers(&mut h, true),
            RequestAction::Reply { status: 400, .. }
        ));
        assert_eq!(h.request_header("x-mlep-variant"), None);
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn other_hosts_are_left_untouched() {
        let (cfg, hub, mut h) = setup(|s| s.to_owned());
        request(
            &mut h,
            &[(":authority", "elsewhere"), ("x-mlep-variant", "b")],
        );
        let before = h.clone();
        let mut s = Stream::new(cfg, hub);
        assert_eq!(s.on_request_headers(&mut h, true), RequestAction::Continue);
        s.on_response_headers(&mut h, true);
        s.on_log(&mut h);
        assert_eq!(
            (h.request, h.response, h.counters),
            (before.request, before.response, before.counters)
        );
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_sampled_request_queues_a_copy_and_agreement_is_counted() {
        let (cfg, hub, mut h) = setup(|s| s.replace("\"percent\": 10", "\"percent\": 100"));
        request(
            &mut h,
            &[
                (":authority", "titanic.example.com"),
                (":method", "POST"),
                ("authorization", "x"),
            ],
        );
        let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
        s.on_request_headers(&mut h, false);
        h.request_chunk = br#"{"x": 1}"#.to_vec();
        s.on_request_body(&mut h, 8, true);
        let sent = hub.borrow_mut().drain();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].body, br#"{"x": 1}"#.to_vec());
        assert!(!sent[0].headers.iter().any(|(k, _)| k == "authorization"));
        assert_eq!(h.woken, 1);
        hub.borrow_mut().sent(sent[0].id, 8, 42, 0);
        s.on_response_headers(&mut h, false);
        h.response_chunk = br#"{"p": 0.5}"#.to_vec();
        s.on_response_body(&mut h, 10, true);
        s.on_log(&mut h);
        let events =
            hub.borrow_mut()
                .shadow_done(42, Some(200), br#"{"p":0.5000000001}"#.to_vec(), 5);
        count(&cfg, &events, &mut h);
        let shadow = |metric, extra| stat(metric, "shadow", "titanic-v2", &[extra]);
        assert_eq!(
            h.counter(&shadow("mlep_shadow_requests_total", ("outcome", "ok"))),
            1
        );
        assert_eq!(
            h.counter(&shadow("mlep_shadow_agreement_total", ("result", "match"))),
            1
        );
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_body_over_the_cap_is_not_mirrored_and_counts_skipped() {
        let (cfg, hub, mut h) = setup(|s| {
            s.replace("\"percent\": 10", "\"percent\": 100")
                .replace("65536", "4")
        });
        request(&mut h, &[(":authority", "titanic.example.com")]);
        let mut s = Stream::new(cfg, Rc::clone(&hub));
        s.on_request_headers(&mut h, false);
        h.request_chunk = b"12345".to_vec();
        s.on_request_body(&mut h, 5, true);
        assert_eq!(hub.borrow().queued(), 0);
        assert_eq!(
            h.counter(&stat(
                "mlep_shadow_requests_total",
                "shadow",
                "titanic-v2",
                &[("outcome", "skipped")]
            )),
            1
        );
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_fresh_visitor_gets_a_cookie_on_the_response() {
        let (cfg, hub, mut h) = setup(|s| s.to_owned());
        request(&mut h, &[(":authority", "titanic.example.com")]);
        let mut s = Stream::new(cfg, hub);
        s.on_request_headers(&mut h, true);
        s.on_response_headers(&mut h, true);
        let c = h.response_values("set-cookie");
        assert_eq!(c.len(), 1);
        assert!(c[0].starts_with("mlep-titanic="), "{}", c[0]);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::host::MemHost;
    use proptest::prelude::*;

    fn header() -> impl Strategy<Value = (String, String)> {
        let name = prop_oneof![
            Just(":authority".to_owned()),
            Just("cookie".to_owned()),
            Just("x-user-id".to_owned()),
            Just("x-mlep-target-variant".to_owned()),
            Just("x-mlep-variant".to_owned()),
            Just("x-mlep-model".to_owned()),
            "[a-z-]{1,12}",
        ];
        let value = prop_oneof![
            Just("titanic.example.com".to_owned()),
            Just("TITANIC.example.com:443".to_owned()),
            Just("a".to_owned()),
            "mlep-titanic=[ -~]{0,40}",
            "\\PC{0,64}",
            any::<String>(),
        ];
        (name, value)
    }

    proptest! {
        /// Whatever the client sends, a stream never panics, and when it is assigned the
        /// request carries exactly one valid variant.
        #[test]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn arbitrary_headers_and_cookies_never_panic(
            headers in proptest::collection::vec(header(), 0..8),
            status in any::<String>(),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            seed in any::<u64>(),
        ) {
            let mut h = MemHost { seed, ..MemHost::default() };
            let cfg = Rc::new(Compiled::from_json(include_str!("../../examples/filter-config.json").as_bytes(), &mut h).unwrap());
            let hub = Rc::new(RefCell::new(Hub::new()));
            h.request = headers;
            h.response = vec![(":status".into(), status)];
            let len = body.len();
            h.request_chunk = body.clone();
            h.response_chunk = body;
            let mut s = Stream::new(cfg, Rc::clone(&hub));
            let action = s.on_request_headers(&mut h, false);
            s.on_request_body(&mut h, len, true);
            s.on_response_headers(&mut h, false);
            s.on_response_body(&mut h, len, true);
            s.on_log(&mut h);
            let variants: Vec<_> = h.request.iter().filter(|(k, _)| k == "x-mlep-variant").map(|(_, v)| v.clone()).collect();
            if action == RequestAction::Continue && s.assigned.is_some() {
                prop_assert_eq!(variants.len(), 1);
                prop_assert!(variants[0] == "a" || variants[0] == "b");
            }
            for o in hub.borrow_mut().drain() {
                prop_assert!(!o.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("cookie")));
            }
        }

        /// With a rollout split, whatever the client sends: an assigned request carries one
        /// variant, and on the variant being rolled out the model header is the new model
        /// exactly when the user's bucket moved (never a client's value).
        #[test]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn a_rollout_split_marks_exactly_the_moved_users_whatever_the_client_sends(
            headers in proptest::collection::vec(header(), 0..8),
            seed in any::<u64>(),
        ) {
            let mut h = MemHost { seed, ..MemHost::default() };
            let cfg = Rc::new(Compiled::from_json(super::tests::rolling_out(include_str!("../../examples/filter-config.json")).as_bytes(), &mut h).unwrap());
            h.request = headers;
            let mut s = Stream::new(Rc::clone(&cfg), Rc::new(RefCell::new(Hub::new())));
            let action = s.on_request_headers(&mut h, true);
            let values = |name: &str| -> Vec<String> {
                h.request.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
            };
            if let (RequestAction::Continue, Some((_, entry))) = (action, s.assigned) {
                let variant = values("x-mlep-variant");
                prop_assert_eq!(variant.len(), 1);
                if variant[0] == "b" {
                    let moved = entry >= 2; // the rollout entry follows a and b
                    let model = values("x-mlep-model");
                    if moved {
                        prop_assert_eq!(model, vec!["titanic-v3".to_owned()]);
                    } else {
                        prop_assert!(model.is_empty(), "{:?}", model);
                    }
                }
            }
        }

        /// Targeted users follow a growing rollout monotonically: once a key is served by
        /// the new model it stays there at every larger share, the share of targeted keys
        /// moved tracks the variant's, and a rollback (nothing moved) returns every one.
        #[test]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn targeted_users_who_moved_stay_moved_as_the_share_grows(
            mut steps in proptest::collection::vec(0u32..=2000, 1..6),
            first in 0u32..10_000,
        ) {
            use mlep_contract::rollout::{grow, Span};
            steps.sort_unstable();
            let alloc = mlep_contract::Allocation::initial(&[("a", 80), ("b", 20)]).unwrap();
            let keys: Vec<String> = (first..first + 300).map(|i| format!("k{i}")).collect();
            let mut moved_before = vec![false; keys.len()];
            let mut spans: Vec<Span> = Vec::new();
            for target in steps.into_iter().chain([0]) {
                // The last step is a rollback: the moved set is emptied.
                spans = if target == 0 { Vec::new() } else { grow(&alloc, "b", &spans, target) };
                let json = serde_json::to_string(&spans).unwrap();
                let cfg = super::tests::rolling_out(include_str!("../../examples/filter-config.json"))
                    .replace("[{\"start\": 8000, \"end\": 9000}]", &json);
                let cfg = Compiled::from_json(cfg.as_bytes(), &mut MemHost::default()).unwrap();
                let ep = &cfg.endpoints[0];
                let mut n_moved = 0;
                for (k, before) in keys.iter().zip(moved_before.iter_mut()) {
                    let moved = ep.targeted(1, mlep_contract::bucket_of("default/titanic", k)) == 2;
                    prop_assert!(moved || !*before || target == 0, "{} left the new model", k);
                    prop_assert!(!moved || target > 0);
                    *before = moved;
                    n_moved += usize::from(moved);
                }
                if target == 2000 {
                    prop_assert_eq!(n_moved, keys.len());
                }
            }
        }

        /// Arbitrary configuration bytes never panic the compiler (and define no metric
        /// unless the config is valid).
        #[test]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn arbitrary_config_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut h = MemHost::default();
            if Compiled::from_json(&bytes, &mut h).is_err() {
                prop_assert!(h.names.is_empty());
            }
        }

        /// Mutating the valid example in arbitrary places never panics either.
        #[test]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn mutated_configs_never_panic(pos in 0usize..2000, byte in any::<u8>()) {
            let mut bytes = include_str!("../../examples/filter-config.json").as_bytes().to_vec();
            let i = pos % bytes.len();
            bytes[i] = byte;
            let _ = Compiled::from_json(&bytes, &mut MemHost::default());
        }
    }
}
