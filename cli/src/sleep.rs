//! Scale to zero in local mode, the pure half. A variant with `autoscaling.minReplicas: 0`
//! runs one server; once Envoy's `mlep_requests_total` for it has not grown for
//! `scaleToZeroAfterSeconds` it falls asleep (the filter configuration marks it, so the filter
//! holds its requests and calls the wake server), its servers stop
//! `SLEEP_GRACE_SECONDS` later, and a wake call starts one again, which then stays at least
//! `WAKE_FLOOR_SECONDS`. The decisions are the cluster's own ([`sleep::decide`], on a clock of
//! seconds since the session started); this module only measures idleness from scrapes,
//! turns a decision into what the session must do, and reads wake paths.

use crate::plan::Desired;
use crate::table::{metric_sum, Sample};
use mlep_contract::metrics::{LABEL_ENDPOINT, LABEL_NAMESPACE, LABEL_VARIANT, REQUESTS_TOTAL};
use mlep_core::autoscale::sleep::{self, Sleeper, SLEEP_GRACE_SECONDS};
use mlep_core::events::reasons;
use std::collections::BTreeMap;
use std::time::Duration;

/// `(namespace, endpoint, variant)`.
pub type VariantKey = (String, String, String);

/// Longest a wake call waits for a ready server before a 504 (the operator's wait).
pub const WAKE_WAIT: Duration = Duration::from_millis(mlep_contract::wake::CONTROL_PLANE_WAIT_MS);
/// The pause of a retried wake call (`?retry=1`) when the variant is ready already, so the
/// filter's loop of wake call and probe does not spin (the operator's pause).
pub const RETRY_PAUSE: Duration = Duration::from_millis(mlep_contract::wake::RETRY_PAUSE_MS);

/// The variants of `d` that may sleep (`minReplicas: 0`), with their idle time in seconds.
pub fn sleepers(d: &Desired) -> BTreeMap<VariantKey, i32> {
    let mut out = BTreeMap::new();
    for e in &d.endpoints {
        for v in &e.endpoint.spec.variants {
            if let Some(after) = v
                .autoscaling
                .as_ref()
                .and_then(|a| a.scale_to_zero_after_seconds())
            {
                let key = (
                    e.namespace().to_owned(),
                    e.name().to_owned(),
                    v.name.clone(),
                );
                out.insert(key, after);
            }
        }
    }
    out
}

/// The requests Envoy counted for a variant (`mlep_requests_total`, every code and model).
pub fn requests_of(samples: &[Sample], key: &VariantKey) -> f64 {
    let (ns, ep, v) = key;
    metric_sum(
        samples,
        REQUESTS_TOTAL,
        &[
            (LABEL_NAMESPACE, ns),
            (LABEL_ENDPOINT, ep),
            (LABEL_VARIANT, v),
        ],
    )
}

/// One sleep-capable variant's state. Times are seconds on the session's clock.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SleepState {
    /// The last request count seen, and since when it has been that.
    seen: Option<(f64, i64)>,
    /// Since when it sleeps (the filter configuration marks it).
    pub asleep_since: Option<i64>,
    /// The last wake call that found it asleep.
    pub woken_at: Option<i64>,
    /// When the last scrape was read: idleness is judged only on the tick that read one.
    measured_at: Option<i64>,
}

impl SleepState {
    /// Whether the filter configuration marks it asleep.
    pub fn is_asleep(&self) -> bool {
        self.asleep_since.is_some()
    }

    /// Record a scrape's request count at `now`. Any change starts the idle time anew (a count
    /// that went down means Envoy was restarted: its counters start at zero).
    pub fn observe(&mut self, count: f64, now: i64) {
        if self.seen.is_none_or(|(c, _)| c != count) {
            self.seen = Some((count, now));
        }
        self.measured_at = Some(now);
    }

    /// The variant may not sleep now (a rollout runs on it, as in the cluster): its idle time
    /// starts anew, and one that sleeps is woken as if a request had asked.
    pub fn busy(&mut self, now: i64) {
        self.seen = self.seen.map(|(count, _)| (count, now));
        if self.is_asleep() {
            self.woken_at = Some(now);
        }
    }

    /// Whether no request was counted for `after` seconds; `None` without a scrape read at
    /// `now` (none yet, or the admin port did not answer this time: no guess).
    pub fn idle(&self, now: i64, after: i32) -> Option<bool> {
        if self.measured_at != Some(now) {
            return None;
        }
        self.seen
            .map(|(_, since)| now.saturating_sub(since) >= i64::from(after))
    }
}

/// A variant's servers as the decision sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Servers {
    /// The servers it runs when awake (local mode runs `minReplicas: 0` as one).
    pub wanted: u32,
    pub current: u32,
    pub ready: u32,
}

/// What the session must do for one variant, in this order: start its servers (and put them
/// into its clusters), mark or unmark it in the filter configuration, stop its servers
/// (after taking them out of its clusters); and what to say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub start: bool,
    /// `Some(true)`: mark it asleep; `Some(false)`: take the mark away.
    pub mark: Option<bool>,
    pub stop: bool,
    pub say: Option<String>,
}

/// Decide one variant (`what`: `titanic/b`) at `now`, with `sleep::decide`, and record the
/// decision in `state`. `idle_after` is its `scaleToZeroAfterSeconds`.
pub fn step(
    state: &mut SleepState,
    servers: Servers,
    idle_after: i32,
    now: i64,
    what: &str,
) -> Step {
    let count = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let decided = sleep::decide(
        &Sleeper {
            scaled: count(servers.wanted.max(1)),
            current: count(servers.current),
            ready: count(servers.ready),
            idle: state.idle(now, idle_after),
            asleep_since: state.asleep_since,
            woken_at: state.woken_at,
            now,
        },
        what,
        idle_after,
    );
    let was_asleep = state.is_asleep();
    state.asleep_since = decided.asleep_since;
    let say = decided.event.map(|e| match e.reason.as_str() {
        reasons::FELL_ASLEEP => format!(
            "{what}: no request for {idle_after} s, asleep (its requests are held and wake it; \
             its servers stop in {SLEEP_GRACE_SECONDS} s)"
        ),
        reasons::SCALED_TO_ZERO => format!("{what}: 0 servers (asleep)"),
        reasons::WOKE => format!("{what}: awake, {} server(s) ready", servers.ready),
        _ => format!("{what}: {}", e.note),
    });
    Step {
        start: decided.replicas > 0 && servers.current == 0,
        mark: match (was_asleep, state.is_asleep()) {
            (false, true) => Some(true),
            (true, false) => Some(false),
            _ => None,
        },
        stop: decided.replicas == 0 && servers.current > 0,
        say,
    }
}

/// What a wake path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WakeCall {
    pub key: VariantKey,
    /// `retry=1`: the filter asks again after a failed probe.
    pub retry: bool,
}

/// Parse the path and query of `POST /wake/<namespace>/<endpoint>/<variant>[?retry=1]`;
/// `None` for anything else.
pub fn parse_wake(path: &str, query: Option<&str>) -> Option<WakeCall> {
    let full = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let c = mlep_contract::wake::parse_wake_path(&full).ok()?;
    Some(WakeCall {
        key: (
            c.namespace.to_owned(),
            c.endpoint.to_owned(),
            c.variant.to_owned(),
        ),
        retry: c.retry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlep_core::autoscale::sleep::WAKE_FLOOR_SECONDS;

    const ONE: Servers = Servers {
        wanted: 1,
        current: 1,
        ready: 1,
    };
    const NONE: Servers = Servers {
        wanted: 1,
        current: 0,
        ready: 0,
    };

    /// A variant last seen with `count` requests at 0.
    fn seen_at_zero(count: f64) -> SleepState {
        let mut s = SleepState::default();
        s.observe(count, 0);
        s
    }

    /// One tick of the session: a scrape read `count` at `now`, then the decision.
    fn tick(s: &mut SleepState, count: f64, servers: Servers, now: i64) -> Step {
        s.observe(count, now);
        step(s, servers, 30, now, "t/b")
    }

    #[test]
    fn a_variant_without_requests_for_its_idle_time_is_marked_then_loses_its_servers_after_the_grace(
    ) {
        let mut s = seen_at_zero(5.0);
        assert_eq!(tick(&mut s, 5.0, ONE, 29), Step::default());
        let marked = tick(&mut s, 5.0, ONE, 30);
        assert_eq!((marked.mark, marked.stop), (Some(true), false));
        assert_eq!(
            marked.say.as_deref(),
            Some("t/b: no request for 30 s, asleep (its requests are held and wake it; its servers stop in 10 s)")
        );
        let grace = tick(&mut s, 5.0, ONE, 30 + SLEEP_GRACE_SECONDS - 1);
        assert_eq!(grace, Step::default());
        let zero = tick(&mut s, 5.0, ONE, 30 + SLEEP_GRACE_SECONDS);
        assert_eq!((zero.mark, zero.stop, zero.start), (None, true, false));
        assert_eq!(zero.say.as_deref(), Some("t/b: 0 servers (asleep)"));
        // At zero it stays there, quietly.
        assert_eq!(tick(&mut s, 5.0, NONE, 100), Step::default());
        assert!(s.is_asleep());
    }

    #[test]
    fn a_growing_count_keeps_it_awake_and_a_scrape_is_needed_to_judge() {
        let mut s = SleepState::default();
        assert_eq!(s.idle(1000, 30), None);
        assert_eq!(step(&mut s, ONE, 30, 1000, "t/b"), Step::default());
        s.observe(1.0, 0);
        s.observe(2.0, 25);
        s.observe(2.0, 54);
        assert_eq!(s.idle(54, 30), Some(false));
        s.observe(2.0, 55);
        assert_eq!(s.idle(55, 30), Some(true));
        // A tick whose scrape failed judges nothing: no falling asleep on an old count.
        assert_eq!(s.idle(56, 30), None);
        assert_eq!(step(&mut s, ONE, 30, 56, "t/b"), Step::default());
        // Envoy restarted: its counters start at zero again, which is a change too.
        s.observe(0.0, 57);
        s.observe(0.0, 60);
        assert_eq!(s.idle(60, 30), Some(false));
    }

    #[test]
    fn a_variant_under_rollout_does_not_fall_asleep_and_a_sleeping_one_is_woken() {
        let mut s = seen_at_zero(5.0);
        s.busy(100);
        s.observe(5.0, 100);
        assert_eq!(step(&mut s, ONE, 30, 100, "t/b"), Step::default());
        // Once the rollout is over, the idle time counts from its end.
        assert_eq!(tick(&mut s, 5.0, ONE, 129), Step::default());
        assert_eq!(tick(&mut s, 5.0, ONE, 130).mark, Some(true));
        tick(&mut s, 5.0, ONE, 140);
        assert!(s.is_asleep());
        s.busy(200);
        let start = step(&mut s, NONE, 30, 200, "t/b");
        assert!(start.start, "a rollout wakes a sleeping variant");
    }

    #[test]
    fn a_wake_starts_a_server_keeps_the_mark_until_it_is_ready_and_then_holds_the_floor() {
        let mut s = seen_at_zero(5.0);
        tick(&mut s, 5.0, ONE, 30);
        tick(&mut s, 5.0, ONE, 40);
        s.woken_at = Some(100);
        let start = step(&mut s, NONE, 30, 100, "t/b");
        assert_eq!((start.start, start.mark, start.stop), (true, None, false));
        let starting = Servers { current: 1, ..NONE };
        assert_eq!(step(&mut s, starting, 30, 100, "t/b"), Step::default());
        let woke = step(&mut s, ONE, 30, 101, "t/b");
        assert_eq!((woke.mark, woke.stop), (Some(false), false));
        assert_eq!(woke.say.as_deref(), Some("t/b: awake, 1 server(s) ready"));
        // Still no request counted: not asleep again within the floor, asleep after it.
        let floor = tick(&mut s, 5.0, ONE, 100 + WAKE_FLOOR_SECONDS - 1);
        assert_eq!(floor, Step::default());
        let again = tick(&mut s, 5.0, ONE, 100 + WAKE_FLOOR_SECONDS);
        assert_eq!(again.mark, Some(true));
    }

    #[test]
    fn a_request_during_the_grace_takes_the_mark_away_without_stopping_a_server() {
        let mut s = seen_at_zero(5.0);
        tick(&mut s, 5.0, ONE, 30);
        s.observe(6.0, 33);
        let back = tick(&mut s, 6.0, ONE, 34);
        assert_eq!(
            (back.mark, back.stop, back.start),
            (Some(false), false, false)
        );
    }

    #[test]
    fn wake_paths_name_a_variant_by_dns_labels_and_may_ask_again() {
        assert_eq!(
            parse_wake("/wake/default/titanic/b", None),
            Some(WakeCall {
                key: ("default".into(), "titanic".into(), "b".into()),
                retry: false
            })
        );
        assert_eq!(
            parse_wake("/wake/default/titanic/b", Some("x=2&retry=1")).map(|c| c.retry),
            Some(true)
        );
        for bad in [
            "/wake/default/titanic",
            "/wake/default/titanic/b/c",
            "/wake/default/Titanic/b",
            "/wake/default//b",
            "/ping",
        ] {
            assert_eq!(parse_wake(bad, None), None, "{bad}");
        }
    }

    #[test]
    fn only_variants_with_min_replicas_zero_sleep_with_their_idle_time() {
        use crate::load::{parse_into, validate, Input};
        let models = "apiVersion: mlep.dev/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec: {image: ghcr.io/k8smlendpoints/mlep-model-server:0.1.0}\n";
        let ep = "apiVersion: mlep.dev/v1alpha1\nkind: ModelEndpoint\nmetadata: {name: ep}\nspec:\n  hosts: [ep.example.com]\n  variants:\n    - {name: a, model: m, weight: 50, autoscaling: {minReplicas: 1, maxReplicas: 2, targetRequestsPerSecond: 5}}\n    - {name: b, model: m, weight: 30, autoscaling: {minReplicas: 0, maxReplicas: 2, targetRequestsPerSecond: 5}}\n    - {name: c, model: m, weight: 20, autoscaling: {minReplicas: 0, maxReplicas: 2, targetRequestsPerSecond: 5, scaleToZeroAfterSeconds: 30}}\n";
        let mut i = Input::default();
        parse_into(&mut i, std::path::Path::new("m.yaml"), models).unwrap();
        parse_into(&mut i, std::path::Path::new("e.yaml"), ep).unwrap();
        validate(&i).unwrap();
        let d = crate::plan::desired(&i).unwrap();
        let key = |v: &str| ("default".to_owned(), "ep".to_owned(), v.to_owned());
        assert_eq!(
            sleepers(&d),
            BTreeMap::from([(key("b"), 300), (key("c"), 30)])
        );
        // A sleeping variant still starts with one server.
        assert_eq!(d.endpoints[0].variants[1].replicas, 1);
    }
}
