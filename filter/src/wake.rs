//! Holding a request for a variant scaled to zero (`VariantConfig::asleep`,
//! `mlep_contract::wake`): ask the control plane to wake it, check that this proxy reaches its
//! servers, then let the request go, or answer 503 once the hold's time is up. Pure: the
//! stream turns each [`Step`] into host calls through the adapter.

use crate::host::MetricId;
use mlep_contract::metrics::HoldOutcome;
use mlep_contract::WakeConfig;
use std::cell::Cell;

/// How long a variant counts as awake in this VM after one of its probes succeeded: requests
/// in that window are not held (the configuration may say asleep for a few seconds after the
/// wake; under load every request must not pay two calls).
pub const AWAKE_FOR_MS: u64 = 1_000;
/// Longest a probe may take (Envoy answers at once when it has no endpoint; a server that
/// exists answers `/ping` quickly): a hung probe must not eat the whole hold.
pub const PROBE_TIMEOUT_MS: u64 = 2_000;
/// The probe's path: the SageMaker health check every model server answers.
pub const PROBE_PATH: &str = "/ping";
/// Wake calls in a row that may fail (not 200, no answer) before the request gets its 503: the
/// control plane paces only the calls it answers 200, and one that is down or refuses (an
/// unknown variant, one that does not scale to zero) answers at once; without a bound the hold
/// would loop on those answers until its deadline.
pub const MAX_WAKE_FAILURES: u32 = 3;

/// One sleeping variant's wake-up, compiled once per configuration and shared by its entries
/// (a variant and its rollout entry), with the VM's memory of its last successful probe.
#[derive(Debug)]
pub struct Wake {
    pub endpoint: String,
    pub variant: String,
    cluster: String,
    authority: String,
    path: String,
    /// `path` with `retry=1` added: what every call after the first asks.
    retry_path: String,
    probe_cluster: String,
    probe_authority: String,
    timeout_ms: u64,
    /// Until when (host clock, ms) this VM holds no request of the variant.
    awake_until: Cell<u64>,
    /// `mlep_wake_holds_total`, indexed by [`HoldOutcome::index`].
    holds: [MetricId; HoldOutcome::COUNT],
}

impl Wake {
    pub fn new(
        endpoint: &str,
        variant: &str,
        w: &WakeConfig,
        holds: [MetricId; HoldOutcome::COUNT],
    ) -> Self {
        let sep = if w.path.contains('?') { '&' } else { '?' };
        Self {
            endpoint: endpoint.to_owned(),
            variant: variant.to_owned(),
            cluster: w.cluster.clone(),
            authority: w.authority.clone(),
            path: w.path.clone(),
            retry_path: format!("{}{sep}retry=1", w.path),
            probe_cluster: w.probe_cluster.clone(),
            probe_authority: w.probe_authority.clone(),
            timeout_ms: u64::from(w.timeout_ms),
            awake_until: Cell::new(0),
            holds,
        }
    }

    /// The counter of holds that ended so.
    pub fn holds(&self, outcome: HoldOutcome) -> MetricId {
        self.holds[outcome.index()]
    }

    /// Whether a probe of this variant succeeded in this VM less than [`AWAKE_FOR_MS`] ago.
    pub fn is_awake(&self, now_ms: u64) -> bool {
        now_ms < self.awake_until.get()
    }

    fn call(&self, method: &str, cluster: &str, authority: &str, path: &str, ms: u64) -> Call {
        Call {
            cluster: cluster.to_owned(),
            headers: vec![
                (":method".to_owned(), method.to_owned()),
                (":path".to_owned(), path.to_owned()),
                (":authority".to_owned(), authority.to_owned()),
            ],
            timeout_ms: ms,
        }
    }

    /// The 503 answered when the variant did not wake in time (or cannot be asked to).
    fn reply(&self, outcome: HoldOutcome, why: &str) -> Step {
        let body = serde_json::json!({
            "error": format!(
                "variant {:?} of endpoint {:?} {why}",
                self.variant, self.endpoint
            ),
            "endpoint": self.endpoint,
            "variant": self.variant,
        });
        Step::Reply {
            status: 503,
            body: body.to_string(),
            outcome,
        }
    }
}

/// A call to dispatch from the stream's context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub cluster: String,
    /// Pseudo-headers first: `:method`, `:path`, `:authority`.
    pub headers: Vec<(String, String)>,
    pub timeout_ms: u64,
}

/// What the held request needs next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Call(Call),
    /// The variant answers through this proxy: let the request go.
    Resume,
    /// Answer locally; the request goes nowhere.
    Reply {
        status: u32,
        body: String,
        outcome: HoldOutcome,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Waking,
    Probing,
}

/// One held request: wake call, probe, again with `retry=1`, until the deadline.
#[derive(Debug)]
pub struct Hold {
    deadline_ms: u64,
    phase: Phase,
    /// Wake calls in a row that did not answer 200.
    wake_failures: u32,
}

impl Hold {
    /// Hold a request that arrived at `now_ms`: the first step is the wake call.
    pub fn start(w: &Wake, now_ms: u64) -> (Self, Call) {
        let hold = Self {
            deadline_ms: now_ms.saturating_add(w.timeout_ms),
            phase: Phase::Waking,
            wake_failures: 0,
        };
        let call = w.call("POST", &w.cluster, &w.authority, &w.path, w.timeout_ms);
        (hold, call)
    }

    /// The call in flight was answered with `status` (`None`: no answer, e.g. a reset).
    pub fn answered(&mut self, w: &Wake, status: Option<u32>, now_ms: u64) -> Step {
        let ok = status == Some(200);
        if ok && self.phase == Phase::Probing {
            w.awake_until.set(now_ms.saturating_add(AWAKE_FOR_MS));
            return Step::Resume;
        }
        let left = self.deadline_ms.saturating_sub(now_ms);
        if left == 0 {
            let why = format!("did not wake within {} ms", w.timeout_ms);
            return w.reply(HoldOutcome::TimedOut, &why);
        }
        if self.phase == Phase::Waking {
            self.wake_failures = if ok { 0 } else { self.wake_failures + 1 };
            if self.wake_failures >= MAX_WAKE_FAILURES {
                let answer = status.map_or("no answer".to_owned(), |s| format!("status {s}"));
                let why = format!("could not be woken: the wake call got {answer}");
                return w.reply(HoldOutcome::Refused, &why);
            }
        }
        if ok {
            self.phase = Phase::Probing;
            let ms = left.min(PROBE_TIMEOUT_MS);
            return Step::Call(w.call("GET", &w.probe_cluster, &w.probe_authority, PROBE_PATH, ms));
        }
        // A wake that failed, or a probe this proxy cannot pass yet (its endpoints lag the
        // wake): ask again; the control plane paces `retry=1` calls, so this is no busy loop.
        self.phase = Phase::Waking;
        Step::Call(w.call("POST", &w.cluster, &w.authority, &w.retry_path, left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wake(path: &str) -> Wake {
        Wake::new(
            "titanic",
            "b",
            &WakeConfig {
                cluster: "mlep|wake".into(),
                authority: "operator.mlep-system".into(),
                path: path.into(),
                probe_cluster: "mlep|titanic|b".into(),
                probe_authority: "titanic-b".into(),
                timeout_ms: 1_500,
            },
            [1, 2, 3, 4],
        )
    }

    fn call(step: &Step) -> (&str, &str, &str, u64) {
        let Step::Call(c) = step else {
            panic!("not a call: {step:?}")
        };
        let get = |k: &str| {
            c.headers
                .iter()
                .find(|(n, _)| n == k)
                .map_or("", |(_, v)| v.as_str())
        };
        (
            c.cluster.as_str(),
            get(":method"),
            get(":path"),
            c.timeout_ms,
        )
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_held_request_wakes_then_probes_then_resumes_and_the_variant_stays_awake_a_second() {
        let w = wake("/wake/default/titanic/b");
        let (mut h, first) = Hold::start(&w, 1_000);
        assert_eq!(
            call(&Step::Call(first)),
            ("mlep|wake", "POST", "/wake/default/titanic/b", 1_500)
        );
        let probe = h.answered(&w, Some(200), 1_200);
        assert_eq!(call(&probe), ("mlep|titanic|b", "GET", "/ping", 1_300));
        assert!(!w.is_awake(1_250));
        assert_eq!(h.answered(&w, Some(200), 1_250), Step::Resume);
        assert!(w.is_awake(1_250) && w.is_awake(2_249));
        assert!(!w.is_awake(2_250));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_failed_probe_or_wake_asks_again_with_retry_and_the_time_left() {
        let w = wake("/wake/b?x=1");
        let (mut h, _) = Hold::start(&w, 0);
        let _probe = h.answered(&w, Some(200), 100);
        // Envoy answers 503 while its endpoints lag the wake.
        let again = h.answered(&w, Some(503), 200);
        assert_eq!(
            call(&again),
            ("mlep|wake", "POST", "/wake/b?x=1&retry=1", 1_300)
        );
        // A call that failed without an answer is "not 200" too.
        let again = h.answered(&w, None, 300);
        assert_eq!(
            call(&again),
            ("mlep|wake", "POST", "/wake/b?x=1&retry=1", 1_200)
        );
        let probe = h.answered(&w, Some(200), 400);
        assert_eq!(call(&probe).0, "mlep|titanic|b");
        assert!(!w.is_awake(400), "only a passed probe marks it awake");
        assert_eq!(
            Wake::new("e", "v", &cfg("/w"), [0; 4]).retry_path,
            "/w?retry=1"
        );
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn wake_calls_failing_in_a_row_end_the_hold_with_a_503_at_once() {
        let w = wake("/wake/b");
        let (mut h, _) = Hold::start(&w, 0);
        // A failure, then a success resets the count (probes failing do not count).
        assert!(matches!(h.answered(&w, Some(502), 10), Step::Call(_)));
        assert!(matches!(h.answered(&w, Some(200), 20), Step::Call(_)));
        assert!(matches!(h.answered(&w, Some(503), 30), Step::Call(_)));
        assert!(matches!(h.answered(&w, Some(502), 40), Step::Call(_)));
        assert!(matches!(h.answered(&w, None, 50), Step::Call(_)));
        match h.answered(&w, Some(404), 60) {
            Step::Reply {
                status,
                body,
                outcome,
            } => {
                assert_eq!(outcome, HoldOutcome::Refused);
                assert_eq!(status, 503);
                assert!(
                    body.contains("could not be woken: the wake call got status 404"),
                    "{body}"
                );
            }
            other => panic!("expected the 503, got {other:?}"),
        }
    }

    fn cfg(path: &str) -> WakeConfig {
        WakeConfig {
            cluster: "c".into(),
            authority: "a".into(),
            path: path.into(),
            probe_cluster: "p".into(),
            probe_authority: "pa".into(),
            timeout_ms: 10,
        }
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn once_the_time_is_up_the_request_gets_a_503_naming_endpoint_and_variant() {
        let w = wake("/wake");
        let (mut h, _) = Hold::start(&w, 0);
        let Step::Reply {
            status,
            body,
            outcome,
        } = h.answered(&w, Some(504), 1_500)
        else {
            panic!("no reply after the deadline")
        };
        assert_eq!(outcome, HoldOutcome::TimedOut);
        assert_eq!(status, 503);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(
            (v["endpoint"].as_str(), v["variant"].as_str()),
            (Some("titanic"), Some("b"))
        );
        assert_eq!(
            v["error"].as_str(),
            Some("variant \"b\" of endpoint \"titanic\" did not wake within 1500 ms")
        );
        // Even a probe that passes too late: the client has its answer already.
        let (mut h, _) = Hold::start(&w, 0);
        let _ = h.answered(&w, Some(200), 10);
        assert!(matches!(
            h.answered(&w, Some(503), 2_000),
            Step::Reply { .. }
        ));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_probe_never_waits_longer_than_its_own_cap() {
        let mut c = cfg("/w");
        c.timeout_ms = 60_000;
        let w = Wake::new("e", "v", &c, [0; 4]);
        let (mut h, _) = Hold::start(&w, 0);
        assert_eq!(call(&h.answered(&w, Some(200), 0)).3, PROBE_TIMEOUT_MS);
    }
}
