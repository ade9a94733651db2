//! The stream's unit tests (native and wasm32).

use super::*;
use crate::host::MemHost;
use mlep_contract::metrics::{MODEL_LATENCY_US, OVERHEAD_LATENCY_US, REQUEST_DURATION_MS};

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

const EXAMPLE: &str = include_str!("../../../examples/filter-config.json");

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
    host.reads.set(0);
    host.bulk_reads.set(0);
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
    let (cfg, _, mut h) = setup(|s| rolling_out(s).replace("{\"start\": 8000, \"end\": 9000}", ""));
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

/// `n` users (`user-<i>`), one request each (headers only); `each` sees the stream, the host
/// and how many shadow copies the request queued.
fn users(
    cfg: &Rc<Compiled>,
    hub: &Rc<RefCell<Hub>>,
    h: &mut MemHost,
    n: usize,
    mut each: impl FnMut(&Stream, &mut MemHost, usize),
) {
    for i in 0..n {
        let key = format!("user-{i}");
        request(
            h,
            &[
                (":authority", "titanic.example.com"),
                ("x-user-id", key.as_str()),
            ],
        );
        let mut s = Stream::new(Rc::clone(cfg), Rc::clone(hub));
        s.on_request_headers(h, true);
        let sent = hub.borrow_mut().drain().len();
        each(&s, h, sent);
    }
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn a_shadow_limited_to_one_variant_mirrors_only_that_variants_requests() {
    let (cfg, hub, mut h) =
        setup(|s| s.replace("\"percent\": 10", "\"percent\": 100, \"variant\": \"b\""));
    let (mut on_b, mut copies) = (0, 0);
    users(&cfg, &hub, &mut h, 200, |_, h, sent| {
        on_b += usize::from(h.request_header("x-mlep-variant") == Some(routed("b")));
        copies += sent;
    });
    assert!(on_b > 0, "some users are on b");
    assert_eq!(copies, on_b, "exactly b's requests were mirrored");
}

/// Over 1,000 requests with every one mirrored and `compare_percent` of the copies compared:
/// (copies sent, copies whose primary answer is kept for comparison).
fn mirrored_and_compared(compare_percent: &str) -> (usize, usize) {
    let (cfg, hub, mut h) = setup(|s| {
        s.replace("\"percent\": 10", "\"percent\": 100").replace(
            "\"tolerance\": 0.000001}",
            &format!("\"tolerance\": 0.000001, \"percent\": {compare_percent}}}"),
        )
    });
    let (mut copies, mut compared) = (0, 0);
    users(&cfg, &hub, &mut h, 1000, |s, _, sent| {
        compared += usize::from(s.primary.is_some());
        copies += sent;
    });
    (copies, compared)
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn a_sampled_comparison_sends_every_copy_and_compares_its_share() {
    assert_eq!(mirrored_and_compared("100"), (1000, 1000));
    let (copies, compared) = mirrored_and_compared("10");
    assert_eq!(copies, 1000, "every request is still mirrored");
    assert!(
        (60..=140).contains(&compared),
        "about 10 % compared: {compared}"
    );
    assert_eq!(mirrored_and_compared("0"), (1000, 0));
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn with_twin_routes_a_copy_not_compared_is_routed_to_envoys_mirror_not_sent() {
    let (cfg, hub, mut h) = setup(|s| {
        s.replace("\"percent\": 10", "\"percent\": 100").replace(
            "\"tolerance\": 0.000001}",
            "\"tolerance\": 0.000001, \"percent\": 10}, \"mirrorRoutes\": true",
        )
    });
    let (mut twins, mut sent, mut compared) = (0, 0, 0);
    users(&cfg, &hub, &mut h, 1000, |s, h, copies| {
        let (reads, bulk) = (h.reads.get(), h.bulk_reads.get());
        let value = h.request_header("x-mlep-variant").unwrap_or_default();
        let twin = value.ends_with(".mirror");
        // A copy the filter sends needs every header: one bulk read serves assignment too.
        // A twin's request reads only what assignment needs, one header at a time.
        if twin {
            assert_eq!((bulk, reads > 0), (0, true), "twin: one by one");
        } else {
            assert_eq!((bulk, reads), (1, 0), "compared: all at once, once");
        }
        if twin {
            assert!(
                value == mlep_contract::mirror_twin(&routed("a"))
                    || value == mlep_contract::mirror_twin(&routed("b")),
                "{value}"
            );
            assert_eq!(
                copies, 0,
                "Envoy copies a twin's request, the filter does not"
            );
        } else {
            assert_eq!(
                copies, 1,
                "a plain route's request was drawn for comparison"
            );
            assert!(s.primary.is_some(), "and its answer is kept for comparing");
        }
        twins += usize::from(twin);
        sent += copies;
        compared += usize::from(s.primary.is_some());
    });
    assert_eq!(
        twins + sent,
        1000,
        "every request copied once, by one of the two"
    );
    assert_eq!(compared, sent);
    assert!((60..=140).contains(&sent), "about 10 % compared: {sent}");
    // Envoy's shadow cluster counts every copy's outcome; the filter only what it skips.
    let events = [
        Event::Outcome {
            ep: 0,
            outcome: Outcome::Ok,
        },
        Event::Outcome {
            ep: 0,
            outcome: Outcome::Skipped,
        },
    ];
    count(&cfg, &events, &mut h);
    let outcome = |o| {
        stat(
            "mlep_shadow_requests_total",
            "shadow",
            "titanic-v2",
            &[("outcome", o)],
        )
    };
    assert_eq!(
        (h.counter(&outcome("ok")), h.counter(&outcome("skipped"))),
        (0, 1)
    );
    // A copy the host refused to send reached no cluster: the filter counts it.
    let refused = [Event::Outcome {
        ep: 0,
        outcome: Outcome::Error,
    }];
    count_unsent(&cfg, &refused, &mut h);
    assert_eq!(h.counter(&outcome("error")), 1);
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
    assert_eq!(h.sends, 1);
    hub.borrow_mut().sent(sent[0].id, 8, 42, 0);
    s.on_response_headers(&mut h, false);
    h.response_chunk = br#"{"p": 0.5}"#.to_vec();
    s.on_response_body(&mut h, 10, true);
    s.on_log(&mut h);
    let events = hub
        .borrow_mut()
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

/// What the stream records in `metric` for the user `u1` (on `a`, model `titanic-v1`, with
/// the example's 80/20 split; asserted).
fn recorded(h: &MemHost, metric: &str) -> Vec<u64> {
    assert!(mlep_contract::bucket_of("default/titanic", "u1") < 8000);
    let name = stat(metric, "a", "titanic-v1", &[]);
    h.names
        .iter()
        .position(|n| *n == name)
        .and_then(|i| h.records.get(&(i as u32)))
        .cloned()
        .unwrap_or_default()
}

/// One request of `u1` with `extra` request headers: request headers at t=100 ms, the
/// upstream's response headers (`response`) at t=`answered`, the end of the stream at t=310.
fn timed(response: &[(&str, &str)], answered: u64, extra: &[(&str, &str)]) -> MemHost {
    let (cfg, hub, mut h) = setup(|s| s.replace("\"percent\": 10", "\"percent\": 0"));
    let mut headers = vec![(":authority", "titanic.example.com"), ("x-user-id", "u1")];
    headers.extend_from_slice(extra);
    request(&mut h, &headers);
    h.response.extend(
        response
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    let mut s = Stream::new(cfg, hub);
    h.now = 100;
    s.on_request_headers(&mut h, true);
    h.now = answered;
    s.on_response_headers(&mut h, false);
    h.now = 310;
    s.on_response_body(&mut h, 0, true);
    s.on_log(&mut h);
    h
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn the_models_reported_time_is_model_latency_and_the_rest_is_overhead() {
    let h = timed(&[("server-timing", "db;dur=1, model;dur=200")], 305, &[]);
    assert_eq!(recorded(&h, REQUEST_DURATION_MS), [210]);
    assert_eq!(recorded(&h, MODEL_LATENCY_US), [200_000]);
    assert_eq!(recorded(&h, OVERHEAD_LATENCY_US), [10_000]);
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn without_a_report_the_upstream_time_is_model_latency_and_a_clients_header_is_ignored() {
    // The client sends a Server-Timing of its own: a request header, never read.
    let h = timed(&[], 305, &[("server-timing", "model;dur=1")]);
    assert_eq!(recorded(&h, MODEL_LATENCY_US), [205_000]);
    assert_eq!(recorded(&h, OVERHEAD_LATENCY_US), [5_000]);
    // A malformed report is no report.
    let h = timed(&[("server-timing", "model;dur=-3")], 305, &[]);
    assert_eq!(recorded(&h, MODEL_LATENCY_US), [205_000]);
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn a_report_longer_than_the_request_is_clamped_to_it() {
    let h = timed(&[("server-timing", "model;dur=99999999")], 305, &[]);
    assert_eq!(recorded(&h, MODEL_LATENCY_US), [210_000]);
    assert_eq!(recorded(&h, OVERHEAD_LATENCY_US), [0]);
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn a_stream_without_response_headers_records_its_duration_but_no_split() {
    let (cfg, hub, mut h) = setup(|s| s.replace("\"percent\": 10", "\"percent\": 0"));
    request(
        &mut h,
        &[(":authority", "titanic.example.com"), ("x-user-id", "u1")],
    );
    let mut s = Stream::new(cfg, hub);
    s.on_request_headers(&mut h, true);
    h.now = 50;
    s.on_log(&mut h);
    assert_eq!(recorded(&h, REQUEST_DURATION_MS), [50]);
    assert!(recorded(&h, MODEL_LATENCY_US).is_empty());
    assert!(recorded(&h, OVERHEAD_LATENCY_US).is_empty());
}

/// The example config with data capture at `percent` (and the shadow off).
fn with_capture<'a>(percent: &'a str, extra: &'a str) -> impl Fn(&str) -> String + 'a {
    move |s: &str| {
        s.replace("\"percent\": 10,", "\"percent\": 0,").replace(
            "\"shadow\": {",
            &format!(
                "\"capture\": {{\"cluster\": \"sink\", \"authority\": \"sink.local\", \"percent\": {percent}, \"maxPayloadBytes\": 16{extra}}},\n\"shadow\": {{"
            ),
        )
    }
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn a_captured_invocation_sends_request_and_response_once_the_response_ends() {
    use mlep_contract::capture as c;
    let (cfg, hub, mut h) = setup(with_capture("100", ""));
    request(
        &mut h,
        &[
            (":authority", "titanic.example.com"),
            (":method", "POST"),
            ("x-user-id", "u7"),
            ("content-type", "text/csv"),
        ],
    );
    h.response
        .push(("content-type".into(), "application/json".into()));
    h.now = 1_796_301_296_789;
    let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
    s.on_request_headers(&mut h, false);
    h.request_chunk = b"3,1,22".to_vec();
    s.on_request_body(&mut h, 6, true);
    s.on_response_headers(&mut h, false);
    assert_eq!(
        hub.borrow().captures.queued(),
        0,
        "not before the response ends"
    );
    h.response_chunk = b"[0.25]".to_vec();
    s.on_response_body(&mut h, 6, true);
    s.on_log(&mut h);
    let sent = hub.borrow_mut().captures.drain();
    assert_eq!(sent.len(), 1, "one record, not one more at on_log");
    let (ep, o) = &sent[0];
    assert_eq!(*ep, 0);
    assert_eq!(o.body, b"3,1,22[0.25]");
    let variant = if mlep_contract::bucket_of("default/titanic", "u7") < 8000 {
        ("a", "titanic-v1")
    } else {
        ("b", "titanic-v2")
    };
    let want = [
        (c::H_ENDPOINT, "titanic"),
        (c::H_VARIANT, variant.0),
        (c::H_MODEL, variant.1),
        (c::H_INPUT_LEN, "6"),
        (c::H_INPUT_TYPE, "text/csv"),
        (c::H_OUTPUT_TYPE, "application/json"),
        (c::H_STATUS, "200"),
        (c::H_TIME_MS, "1796301296789"),
        (":authority", "sink.local"),
    ];
    for (k, v) in want {
        assert_eq!(o.header(k), Some(v), "{k}");
    }
    let hash = format!(
        "{:016x}",
        mlep_contract::hash::hash_key("default/titanic", "u7")
    );
    assert_eq!(o.header(c::H_KEY_HASH), Some(hash.as_str()));
    let id = o.header(c::H_EVENT_ID).unwrap();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(h.sends, 1);
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn capture_samples_its_share_and_a_new_visitor_is_hashed_by_the_cookie_it_gets() {
    let (cfg, hub, mut h) = setup(with_capture("25", ""));
    let mut captured = 0;
    for i in 0..4000 {
        let key = format!("user-{i}");
        request(
            &mut h,
            &[(":authority", "titanic.example.com"), ("x-user-id", &key)],
        );
        let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
        s.on_request_headers(&mut h, true);
        s.on_response_headers(&mut h, true);
        s.on_log(&mut h);
        captured += hub.borrow_mut().captures.drain().len();
    }
    // 25 % of 4000 = 1000; 4 sigma of a binomial is about 110.
    assert!((890..=1110).contains(&captured), "{captured}");

    let (cfg, hub, mut h) = setup(with_capture("100", ""));
    request(&mut h, &[(":authority", "titanic.example.com")]);
    let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
    s.on_request_headers(&mut h, true);
    s.on_response_headers(&mut h, true);
    let cookie = h.response_values("set-cookie")[0].to_owned();
    let key = cookie
        .split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap();
    let sent = hub.borrow_mut().captures.drain();
    let hash = format!(
        "{:016x}",
        mlep_contract::hash::hash_key("default/titanic", &key)
    );
    assert_eq!(
        sent[0].1.header(mlep_contract::capture::H_KEY_HASH),
        Some(hash.as_str())
    );
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn large_bodies_other_types_and_streams_cut_short_are_recorded_as_skipped() {
    use mlep_contract::capture as c;
    let (cfg, hub, mut h) = setup(with_capture("100", ", \"contentTypes\": [\"text/csv\"]"));
    request(
        &mut h,
        &[
            (":authority", "titanic.example.com"),
            ("x-user-id", "u1"),
            ("content-type", "text/csv"),
        ],
    );
    h.response.push(("content-type".into(), "image/png".into()));
    let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
    s.on_request_headers(&mut h, false);
    h.request_chunk = vec![b'1'; 17];
    s.on_request_body(&mut h, 17, true);
    s.on_response_headers(&mut h, false);
    h.response_chunk = b"png".to_vec();
    s.on_response_body(&mut h, 3, true);
    let sent = hub.borrow_mut().captures.drain();
    let o = &sent[0].1;
    assert_eq!(o.header(c::H_INPUT_SKIPPED), Some("too_large"));
    assert_eq!(o.header(c::H_OUTPUT_SKIPPED), Some("content_type"));
    assert!(o.body.is_empty());

    // The client went away before the response ended: a record, its output `incomplete`.
    let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
    s.on_request_headers(&mut h, true);
    h.response = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "text/csv".into()),
    ];
    s.on_response_headers(&mut h, false);
    h.response_chunk = b"1,".to_vec();
    s.on_response_body(&mut h, 2, false);
    s.on_log(&mut h);
    let sent = hub.borrow_mut().captures.drain();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.header(c::H_OUTPUT_SKIPPED), Some("incomplete"));
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn a_full_capture_queue_drops_and_counts_without_touching_the_request() {
    let (cfg, hub, mut h) = setup(with_capture("100", ""));
    for _ in 0..crate::capture::MAX_QUEUED + 3 {
        request(
            &mut h,
            &[(":authority", "titanic.example.com"), ("x-user-id", "u1")],
        );
        let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
        assert_eq!(s.on_request_headers(&mut h, true), RequestAction::Continue);
        s.on_response_headers(&mut h, true);
        s.on_log(&mut h);
    }
    let full = mlep_contract::metrics::stat_name(
        mlep_contract::metrics::CAPTURE_RECORDS_TOTAL,
        &[
            ("endpoint", "titanic"),
            ("namespace", "default"),
            ("outcome", "queue_full"),
        ],
    );
    assert_eq!(h.counter(&full), 3);
    assert_eq!(hub.borrow().captures.queued(), crate::capture::MAX_QUEUED);
}
