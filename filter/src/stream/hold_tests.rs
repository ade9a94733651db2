//! Held requests of a sleeping variant, through the stream (native and wasm32).

use super::*;
use crate::host::MemHost;
use crate::wake::AWAKE_FOR_MS;

const EXAMPLE: &str = include_str!("../../../examples/filter-config.json");

/// The example config with variant `b` asleep and every request mirrored to the shadow.
fn asleep() -> (Rc<Compiled>, Rc<RefCell<Hub>>, MemHost) {
    let cfg = EXAMPLE
        .replace("\"percent\": 10", "\"percent\": 100")
        .replace(
            r#""weight": 20}"#,
            r#""weight": 20, "asleep": {"cluster": "mlep|wake", "authority": "op",
                "path": "/wake/default/titanic/b", "probeCluster": "mlep|titanic|b",
                "probeAuthority": "titanic-b", "timeoutMs": 1500}}"#,
        );
    let mut host = MemHost::default();
    let cfg = Compiled::from_json(cfg.as_bytes(), &mut host).unwrap();
    (Rc::new(cfg), Rc::new(RefCell::new(Hub::new())), host)
}

fn targeting(h: &mut MemHost, variant: &str) {
    let headers = [
        (":authority", "titanic.example.com"),
        (":method", "POST"),
        ("x-user-id", "u1"),
        ("x-mlep-target-variant", variant),
    ];
    h.vhost = MemHost::with_request(&headers).vhost;
    h.request = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
}

fn cluster(a: &HoldAction) -> &str {
    match a {
        HoldAction::Call(c) => &c.cluster,
        other => panic!("not a call: {other:?}"),
    }
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn a_sleeping_variants_request_is_held_until_its_probe_passes_and_keeps_its_body() {
    let (cfg, hub, mut h) = asleep();
    targeting(&mut h, "b");
    h.now = 10;
    let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
    let RequestAction::Hold(wake) = s.on_request_headers(&mut h, false) else {
        panic!("not held")
    };
    assert_eq!(wake.cluster, "mlep|wake");
    // The routing header is set before the hold: the request goes on with it.
    assert_eq!(
        h.request_header("x-mlep-variant"),
        Some(mlep_contract::routed_value(
            "b",
            "Zm9yLXRoZS1leGFtcGxlLW9ubHk"
        ))
    );
    // Envoy buffers the body; each callback reports all of it so far.
    h.request_chunk = br#"{"x": 1, "y": 2}"#.to_vec();
    assert_eq!(s.on_body(&mut h, 8, false), Flow::Pause);
    assert_eq!(s.on_body(&mut h, 16, true), Flow::Pause);
    assert_eq!(hub.borrow().queued(), 0, "no copy before the request goes");
    h.now = 400;
    let probe = s.on_call_answer(&mut h, Some(200));
    assert_eq!(cluster(&probe), "mlep|titanic|b");
    // Envoy's "no healthy upstream" while its endpoints lag: ask again.
    assert_eq!(cluster(&s.on_call_answer(&mut h, Some(503))), "mlep|wake");
    assert_eq!(
        cluster(&s.on_call_answer(&mut h, Some(200))),
        "mlep|titanic|b"
    );
    assert_eq!(s.on_call_answer(&mut h, Some(200)), HoldAction::Resume);
    let sent = hub.borrow_mut().drain();
    assert_eq!(sent.len(), 1, "the shadow copy is made once, whole");
    assert_eq!(sent[0].body, br#"{"x": 1, "y": 2}"#.to_vec());
    // A stale answer after the request went changes nothing.
    assert_eq!(s.on_call_answer(&mut h, Some(200)), HoldAction::Wait);
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn other_variants_are_not_held_and_a_woken_variant_is_not_held_for_a_second() {
    let (cfg, hub, mut h) = asleep();
    targeting(&mut h, "a");
    let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
    assert_eq!(s.on_request_headers(&mut h, true), RequestAction::Continue);

    targeting(&mut h, "b");
    h.now = 1_000;
    let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
    assert!(matches!(
        s.on_request_headers(&mut h, true),
        RequestAction::Hold(_)
    ));
    let _probe = s.on_call_answer(&mut h, Some(200));
    assert_eq!(s.on_call_answer(&mut h, Some(200)), HoldAction::Resume);

    h.now = 1_000 + AWAKE_FOR_MS - 1;
    let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
    assert_eq!(s.on_request_headers(&mut h, true), RequestAction::Continue);
    h.now = 1_000 + AWAKE_FOR_MS;
    let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
    assert!(matches!(
        s.on_request_headers(&mut h, true),
        RequestAction::Hold(_)
    ));
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn a_variant_awake_while_the_body_still_arrives_lets_the_request_go_at_its_next_chunk() {
    let (cfg, hub, mut h) = asleep();
    targeting(&mut h, "b");
    let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
    assert!(matches!(
        s.on_request_headers(&mut h, false),
        RequestAction::Hold(_)
    ));
    h.request_chunk = b"[1, 2, 3]".to_vec();
    assert_eq!(s.on_body(&mut h, 3, false), Flow::Pause);
    let _probe = s.on_call_answer(&mut h, Some(200));
    assert_eq!(s.on_call_answer(&mut h, Some(200)), HoldAction::Wait);
    assert_eq!(s.on_body(&mut h, 6, false), Flow::Continue);
    // After that the body streams as for any request: each callback is one chunk.
    h.request_chunk = b" 3]".to_vec();
    assert_eq!(s.on_body(&mut h, 3, true), Flow::Continue);
    let sent = hub.borrow_mut().drain();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].body, b"[1, 2, 3]".to_vec());
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn a_hold_that_runs_out_or_cannot_call_answers_503_and_is_counted_as_the_variants() {
    let (cfg, hub, mut h) = asleep();
    targeting(&mut h, "b");
    let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
    assert!(matches!(
        s.on_request_headers(&mut h, true),
        RequestAction::Hold(_)
    ));
    h.now = 1_500;
    let HoldAction::Reply { status, body } = s.on_call_answer(&mut h, Some(200)) else {
        panic!("no reply after the deadline")
    };
    assert_eq!(status, 503);
    assert!(body.contains("did not wake within 1500 ms"), "{body}");
    assert_eq!(s.on_body(&mut h, 0, true), Flow::Continue, "no longer held");

    let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
    assert!(matches!(
        s.on_request_headers(&mut h, true),
        RequestAction::Hold(_)
    ));
    // Refused calls are failed answers: a refused probe asks the control plane again, and
    // the third refused wake call in a row ends the hold with a 503 saying so.
    h.now = 0;
    assert!(matches!(
        s.on_call_answer(&mut h, Some(200)),
        HoldAction::Call(_)
    ));
    let HoldAction::Call(again) = s.on_call_refused(&mut h) else {
        panic!("a refused probe asks again")
    };
    assert!(again
        .headers
        .iter()
        .any(|(k, v)| k == ":path" && v.ends_with("retry=1")));
    assert!(matches!(s.on_call_refused(&mut h), HoldAction::Call(_)));
    assert!(matches!(s.on_call_refused(&mut h), HoldAction::Call(_)));
    let HoldAction::Reply { status, body } = s.on_call_refused(&mut h) else {
        panic!("three refused wake calls end the hold")
    };
    assert_eq!(status, 503);
    assert!(
        body.contains("could not be woken: the wake call got no answer"),
        "{body}"
    );
}

/// `mlep_wake_holds_total{outcome}` of the (one) sleeping variant.
fn holds(h: &MemHost, outcome: HoldOutcome) -> u64 {
    let label = format!(
        "{}{}{}",
        mlep_contract::metrics::LABEL_OUTCOME,
        mlep_contract::metrics::TAG_VALUE_SEPARATOR,
        outcome.label()
    );
    let names: Vec<&String> = h
        .names
        .iter()
        // The labels sit inside the name (`mlep_contract::metrics::stat_name`).
        .filter(|n| n.ends_with("wake_holds_total") && n.contains(&label))
        .collect();
    assert_eq!(names.len(), 1, "one counter per outcome: {names:?}");
    h.counter(names[0])
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn every_hold_is_counted_once_by_how_it_ended() {
    let (cfg, hub, mut h) = asleep();
    targeting(&mut h, "b");
    let held = |h: &mut MemHost| {
        let mut s = Stream::new(Rc::clone(&cfg), Rc::clone(&hub));
        assert!(matches!(
            s.on_request_headers(h, true),
            RequestAction::Hold(_)
        ));
        s
    };
    // Woken: the probe passed.
    let mut s = held(&mut h);
    let _probe = s.on_call_answer(&mut h, Some(200));
    assert_eq!(s.on_call_answer(&mut h, Some(200)), HoldAction::Resume);
    s.on_log(&mut h);
    // Timed out.
    h.now = 5_000;
    let mut s = held(&mut h);
    h.now = 6_500;
    assert!(matches!(
        s.on_call_answer(&mut h, Some(200)),
        HoldAction::Reply { .. }
    ));
    s.on_log(&mut h);
    // Refused: three failed wake calls in a row.
    let mut s = held(&mut h);
    for _ in 0..2 {
        assert!(matches!(s.on_call_refused(&mut h), HoldAction::Call(_)));
    }
    assert!(matches!(
        s.on_call_refused(&mut h),
        HoldAction::Reply { .. }
    ));
    // Abandoned: the stream ended while held.
    let mut s = held(&mut h);
    s.on_log(&mut h);
    s.on_log(&mut h);
    for outcome in HoldOutcome::ALL {
        assert_eq!(holds(&h, outcome), 1, "{}", outcome.label());
    }
    // Variant a never sleeps: it defines no such counter.
    assert!(!h
        .names
        .iter()
        .any(|n| n.ends_with("wake_holds_total") && n.contains("variant=.=a;")));
}
