//! What happens when the filter's Wasm VM dies (a Rust panic traps the VM), with the
//! test-only build that panics on a marker header (`--features test-panic`; the product
//! build has no panic path). Local mode renders `failure_policy: FAIL_RELOAD` with a 100 ms
//! backoff (`mlep::envoy::render_filter_config`); these tests pin what that means in Envoy
//! 1.40, and what the alternatives do, so a change in Envoy's behaviour is noticed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test

use mlep_contract::Allocation;
use mlep_tests::*;
use std::time::Duration;

const HOST: &str = "titanic.local";
const MARKER: &str = "x-mlep-test-panic";

fn env(plugin: serde_json::Value) -> (Upstream, Env) {
    let a = Upstream::start("a");
    let alloc = Allocation::initial(&[("a", 100)]).unwrap();
    let cfg = filter_config("titanic", &[("a", 100)], &alloc);
    let env = Env::start_with(
        vec![route("titanic", &[HOST], &[(&a, 100)], None)],
        &cfg,
        panic_wasm_path(),
        plugin,
    );
    (a, env)
}

/// `(status, x-mlep-variant)` of a request.
fn get(c: &mut Client, headers: &[(&str, &str)]) -> (u16, Option<String>) {
    let r = c.get(HOST, headers);
    (r.status, r.header("x-mlep-variant").map(str::to_owned))
}

fn assigned() -> (u16, Option<String>) {
    (200, Some("a".to_owned()))
}

#[test]
fn a_dead_vm_fails_the_killing_request_and_a_fresh_vm_serves_within_a_second() {
    let (_a, env) = env(serde_json::json!({})); // local mode's own policy
    let mut c = env.client();
    assert_eq!(get(&mut c, &[("x-user-id", "u")]), assigned());
    assert_eq!(
        get(&mut c, &[("x-user-id", "u"), (MARKER, "1")]),
        (503, None),
        "the request whose callback trapped gets Envoy's 503"
    );
    let mut recovered = None;
    let start = std::time::Instant::now();
    poll_until(Duration::from_secs(5), || {
        recovered = Some(start.elapsed());
        get(&mut c, &[("x-user-id", "u")]) == assigned()
    });
    let took = recovered.unwrap();
    assert_eq!(
        get(&mut c, &[("x-user-id", "u")]),
        assigned(),
        "a fresh VM assigns again"
    );
    assert!(took < Duration::from_secs(1), "recovered after {took:?}");
    assert!(env.log().contains("panicked at"), "the panic is logged");
}

#[test]
fn without_a_policy_envoy_fails_closed_and_fail_open_passes_requests_unassigned() {
    // Envoy's default: every later request on that worker is answered 503, for good.
    let (_a, env1) = env(serde_json::json!({ "failure_policy": "FAIL_CLOSED" }));
    let mut c = env1.client();
    get(&mut c, &[(MARKER, "1")]);
    std::thread::sleep(Duration::from_millis(300)); // longer than FAIL_RELOAD's backoff
    assert_eq!(get(&mut c, &[("x-user-id", "u")]), (503, None));
    drop(env1);
    // FAIL_OPEN: later requests skip the filter: no assignment, and a client-sent
    // x-mlep-variant would reach the routes untouched.
    let (_a, env2) = env(serde_json::json!({ "failure_policy": "FAIL_OPEN" }));
    let mut c = env2.client();
    assert_eq!(get(&mut c, &[(MARKER, "1")]), (503, None));
    assert_eq!(get(&mut c, &[("x-user-id", "u")]), (200, None));
}
