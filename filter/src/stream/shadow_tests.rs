//! The shadow's body caps through the stream: what is read, what is compared, and that the
//! VM's budget holds (native and wasm32).

use super::*;
use crate::host::MemHost;
use crate::shadow::MAX_HUB_BYTES;

const EXAMPLE: &str = include_str!("../../../examples/filter-config.json");

/// Every request mirrored and compared (`json`), bodies capped at `max` bytes.
fn capped(max: usize) -> (Rc<Compiled>, Rc<RefCell<Hub>>, MemHost) {
    let cfg = EXAMPLE
        .replace("\"percent\": 10", "\"percent\": 100")
        .replace("65536", &max.to_string());
    let mut host = MemHost::default();
    let cfg = Compiled::from_json(cfg.as_bytes(), &mut host).unwrap();
    host.vhost = MemHost::with_request(&[(":authority", "titanic.example.com")]).vhost;
    host.response = vec![(":status".into(), "200".into())];
    (Rc::new(cfg), Rc::new(RefCell::new(Hub::new())), host)
}

/// A request of body `{"x": 1}` (8 bytes); its copy sent with token 42.
fn requested(cfg: &Rc<Compiled>, hub: &Rc<RefCell<Hub>>, h: &mut MemHost) -> Stream {
    let mut s = Stream::new(Rc::clone(cfg), Rc::clone(hub));
    s.on_request_headers(h, false);
    h.request_chunk = br#"{"x": 1}"#.to_vec();
    s.on_request_body(h, 8, true);
    let sent = hub.borrow_mut().drain();
    assert_eq!(sent.len(), 1, "the copy was sent");
    hub.borrow_mut().sent(sent[0].id, 8, 42, 0);
    s
}

/// The primary answers the request of `s` with `body`.
fn respond(mut s: Stream, h: &mut MemHost, body: &[u8]) {
    s.on_response_headers(h, false);
    h.response_chunk = body.to_vec();
    s.on_response_body(h, body.len(), true);
    s.on_log(h);
}

/// [`requested`], answered `primary`.
fn answered(cfg: &Rc<Compiled>, hub: &Rc<RefCell<Hub>>, h: &mut MemHost, primary: &[u8]) {
    let s = requested(cfg, hub, h);
    respond(s, h, primary);
}

/// The shadow answers token 42 with `body`, as the adapter hands it over: read only when
/// the hub asks for it.
fn shadow_answers(cfg: &Compiled, hub: &Rc<RefCell<Hub>>, h: &mut MemHost, body: &[u8]) {
    let read = hub.borrow().reads_answer(42, Some(200), body.len());
    let events = if read {
        hub.borrow_mut()
            .shadow_done(42, Some(200), body.to_vec(), 5)
    } else {
        hub.borrow_mut().shadow_unread(42, Some(200), 5)
    };
    count(cfg, &events, h);
}

/// `(ok outcomes, matches, mismatches)` of the shadow.
fn counted(h: &MemHost) -> (u64, u64, u64) {
    let stat = |metric, label: (&str, &str)| {
        let labels = [
            ("endpoint", "titanic"),
            ("namespace", "default"),
            ("variant", "shadow"),
            ("model", "titanic-v2"),
            label,
        ];
        h.counter(&mlep_contract::metrics::stat_name(metric, &labels))
    };
    (
        stat("mlep_shadow_requests_total", ("outcome", "ok")),
        stat("mlep_shadow_agreement_total", ("result", "match")),
        stat("mlep_shadow_agreement_total", ("result", "mismatch")),
    )
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn answers_within_the_cap_are_compared() {
    let (cfg, hub, mut h) = capped(8);
    answered(&cfg, &hub, &mut h, br#"{"p": 1}"#);
    shadow_answers(&cfg, &hub, &mut h, br#"{"p":1}"#);
    assert_eq!(counted(&h), (1, 1, 0));
    assert_eq!(hub.borrow().bytes(), 0);
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn a_primary_answer_over_the_cap_counts_the_shadows_outcome_but_no_agreement() {
    let (cfg, hub, mut h) = capped(8);
    answered(&cfg, &hub, &mut h, br#"{"p": 0.5}"#);
    assert!(!hub.borrow().reads_answer(42, Some(200), 7));
    shadow_answers(&cfg, &hub, &mut h, br#"{"p":1}"#);
    assert_eq!(counted(&h), (1, 0, 0));
    assert_eq!((hub.borrow().in_flight(), hub.borrow().bytes()), (0, 0));
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn a_shadow_answer_over_the_cap_is_not_read_and_counts_like_an_oversized_primary() {
    let (cfg, hub, mut h) = capped(8);
    answered(&cfg, &hub, &mut h, br#"{"p": 1}"#);
    let huge = vec![b' '; 1 << 20];
    assert!(!hub.borrow().reads_answer(42, Some(200), huge.len()));
    shadow_answers(&cfg, &hub, &mut h, &huge);
    assert_eq!(counted(&h), (1, 0, 0));
    assert_eq!((hub.borrow().in_flight(), hub.borrow().bytes()), (0, 0));
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn a_primary_answer_is_counted_against_the_vms_budget_as_it_is_collected() {
    let (cfg, hub, mut h) = capped(1024);
    // Uncompared copies (of another endpoint) hold all but 6 bytes of the budget.
    let off = CompareSpec {
        mode: CompareMode::Off,
        tolerance: 0.0,
        timeout_ms: 1000,
        max_body_bytes: 0,
    };
    let mut s = requested(&cfg, &hub, &mut h);
    let filler = vec![0; MAX_HUB_BYTES - 6];
    hub.borrow_mut().submit(1, off, vec![], filler, 0).unwrap();
    s.on_response_headers(&mut h, false);
    h.response_chunk = br#"{"p""#.to_vec();
    s.on_response_body(&mut h, 4, false);
    assert_eq!(
        hub.borrow().bytes(),
        MAX_HUB_BYTES - 2,
        "the first 4 bytes fit"
    );
    h.response_chunk = br#": 1}"#.to_vec();
    s.on_response_body(&mut h, 4, true);
    assert_eq!(
        hub.borrow().bytes(),
        MAX_HUB_BYTES - 6,
        "8 do not: collection stops and what was held is released"
    );
    s.on_log(&mut h);
    shadow_answers(&cfg, &hub, &mut h, br#"{"p": 1}"#);
    assert_eq!(counted(&h), (1, 0, 0), "the outcome, no agreement");
    assert_eq!(hub.borrow().bytes(), MAX_HUB_BYTES - 6);
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn a_cap_above_the_vms_budget_is_cut_to_it() {
    let (cfg, _, _) = capped(1024);
    let mut shadow = cfg.endpoints[0].shadow.clone().unwrap();
    assert_eq!(shadow.body_cap(), 1024);
    shadow.max_body_bytes = usize::MAX;
    assert_eq!(shadow.body_cap(), MAX_HUB_BYTES);
}
