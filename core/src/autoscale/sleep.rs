//! Scale to zero, the pure half. A variant with `minReplicas: 0` goes through:
//!
//! 1. **awake**: the request rate decides its replicas (at least one);
//! 2. **asleep**, once Prometheus counts no request for `scaleToZeroAfterSeconds`: status says
//!    since when, the filter configuration marks the variant, and the proxies hold its requests
//!    and ask the operator to wake it. Its pods stay [`SLEEP_GRACE_SECONDS`] longer, so every
//!    proxy has the mark before the last pod goes (a request that slips through then still
//!    finds a pod);
//! 3. **zero pods**;
//! 4. **woken**: a held request's wake call sets the Deployment to one replica and stamps
//!    [`WOKEN_AT_ANNOTATION`]; from then on at least one pod runs for [`WAKE_FLOOR_SECONDS`]
//!    (Prometheus has not counted the held request yet), and the variant is awake again once a
//!    pod is ready (the mark leaves the filter configuration).
//!
//! Nothing here guesses on missing data: without a measurement a variant neither falls asleep
//! nor leaves sleep, except by a wake-up.

use crate::events::{actions, reasons, Event, EventType};

/// How long the pods of a variant that fell asleep outlive the mark (seconds): istiod pushes a
/// configuration to the proxies within a second or two.
pub const SLEEP_GRACE_SECONDS: i64 = 10;
/// How long a woken variant keeps at least one pod (seconds), whatever Prometheus says: two
/// sync periods, long enough for the held request to be counted.
pub const WAKE_FLOOR_SECONDS: i64 = 30;
/// The Deployment annotation a wake-up stamps: when (Unix seconds).
pub const WOKEN_AT_ANNOTATION: &str = "mlep.dev/woken-at";

/// What the sleep decision of one Deployment looks at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sleeper {
    /// The request-rate autoscaler's replicas (at least one).
    pub scaled: i32,
    /// The live Deployment's replicas and ready replicas.
    pub current: i32,
    pub ready: i32,
    /// Whether no request was counted for `scaleToZeroAfterSeconds`; `None` unmeasured.
    pub idle: Option<bool>,
    /// Since when it sleeps (the last status).
    pub asleep_since: Option<i64>,
    /// The last wake-up ([`WOKEN_AT_ANNOTATION`]).
    pub woken_at: Option<i64>,
    pub now: i64,
}

/// The decision: replicas to run, the sleep to record, an Event when something changed.
#[derive(Clone, Debug, PartialEq)]
pub struct SleepStep {
    pub replicas: i32,
    pub asleep_since: Option<i64>,
    pub event: Option<Event>,
}

/// Whether a sleeping variant with `current` replicas and no recent wake-up stays at zero
/// without measuring anything (the operator then asks Prometheus nothing).
pub fn sleeping_at_zero(
    asleep_since: Option<i64>,
    current: i32,
    woken_at: Option<i64>,
    now: i64,
) -> bool {
    asleep_since.is_some() && current == 0 && !recently_woken(woken_at, now)
}

fn recently_woken(woken_at: Option<i64>, now: i64) -> bool {
    woken_at.is_some_and(|w| now - w < WAKE_FLOOR_SECONDS && w <= now + 5)
}

/// Decide one Deployment's sleep (`what` names it in Events).
pub fn decide(s: &Sleeper, what: &str, idle_seconds: i32) -> SleepStep {
    let keep = |replicas, asleep_since| SleepStep {
        replicas,
        asleep_since,
        event: None,
    };
    let woken = recently_woken(s.woken_at, s.now);
    // A wake-up is a request the metrics may not show yet (counted when it ends, scraped
    // later): no falling asleep within the idle time after it either.
    let woken_within_idle = s.woken_at.is_some_and(|w| {
        let window = i64::from(idle_seconds).max(WAKE_FLOOR_SECONDS);
        s.now - w.min(s.now) < window
    });
    match s.asleep_since {
        None if s.idle == Some(true) && !woken && !woken_within_idle => SleepStep {
            replicas: s.current,
            asleep_since: Some(s.now),
            event: Some(event(
                reasons::FELL_ASLEEP,
                format!(
                    "{what}: no request for {idle_seconds} s; the proxies hold its requests \
                     from now, its pods go in {SLEEP_GRACE_SECONDS} s"
                ),
            )),
        },
        None => keep(s.scaled, None),
        Some(since) if woken || (s.idle == Some(false) && s.ready > 0) => {
            if s.ready > 0 {
                SleepStep {
                    replicas: s.scaled,
                    asleep_since: None,
                    event: Some(event(
                        reasons::WOKE,
                        format!("{what}: awake, {} ready pod(s)", s.ready),
                    )),
                }
            } else {
                keep(s.scaled.max(1), Some(since))
            }
        }
        Some(since) if s.now - since >= SLEEP_GRACE_SECONDS => SleepStep {
            replicas: 0,
            asleep_since: Some(since),
            event: (s.current > 0).then(|| {
                event(
                    reasons::SCALED_TO_ZERO,
                    format!("{what}: {} -> 0 replicas (asleep)", s.current),
                )
            }),
        },
        Some(since) => keep(s.current, Some(since)),
    }
}

fn event(reason: &str, note: String) -> Event {
    Event::new(EventType::Normal, reason, actions::AUTOSCALE, &note)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(now: i64) -> Sleeper {
        Sleeper {
            scaled: 1,
            current: 1,
            ready: 1,
            idle: None,
            asleep_since: None,
            woken_at: None,
            now,
        }
    }

    fn reason(step: &SleepStep) -> Option<&str> {
        step.event.as_ref().map(|e| e.reason.as_str())
    }

    #[test]
    fn an_idle_variant_falls_asleep_first_and_loses_its_pods_only_after_the_grace() {
        let marked = decide(
            &Sleeper {
                idle: Some(true),
                ..at(100)
            },
            "b",
            30,
        );
        assert_eq!((marked.replicas, marked.asleep_since), (1, Some(100)));
        assert_eq!(reason(&marked), Some(reasons::FELL_ASLEEP));
        let early = Sleeper {
            idle: Some(true),
            asleep_since: Some(100),
            ..at(100 + SLEEP_GRACE_SECONDS - 1)
        };
        assert_eq!(decide(&early, "b", 30).replicas, 1);
        let late = Sleeper {
            now: 100 + SLEEP_GRACE_SECONDS,
            ..early
        };
        let zero = decide(&late, "b", 30);
        assert_eq!((zero.replicas, zero.asleep_since), (0, Some(100)));
        assert_eq!(reason(&zero), Some(reasons::SCALED_TO_ZERO));
        // Unmeasured after the grace: still going, no second Event once at zero.
        let again = decide(
            &Sleeper {
                idle: None,
                current: 0,
                ready: 0,
                ..late
            },
            "b",
            30,
        );
        assert_eq!((again.replicas, again.event), (0, None));
    }

    #[test]
    fn a_variant_without_a_measurement_or_with_requests_stays_awake() {
        for idle in [None, Some(false)] {
            let s = decide(
                &Sleeper {
                    idle,
                    scaled: 3,
                    ..at(100)
                },
                "b",
                30,
            );
            assert_eq!((s.replicas, s.asleep_since, s.event), (3, None, None));
        }
    }

    #[test]
    fn a_wake_up_keeps_one_pod_and_the_mark_until_a_pod_is_ready() {
        let waking = Sleeper {
            idle: Some(true),
            current: 1,
            ready: 0,
            asleep_since: Some(100),
            woken_at: Some(200),
            ..at(201)
        };
        let s = decide(&waking, "b", 30);
        assert_eq!((s.replicas, s.asleep_since, s.event), (1, Some(100), None));
        let ready = decide(&Sleeper { ready: 1, ..waking }, "b", 30);
        assert_eq!((ready.replicas, ready.asleep_since), (1, None));
        assert_eq!(reason(&ready), Some(reasons::WOKE));
        // Awake and still idle by Prometheus' count: not asleep again within the floor.
        let floor = Sleeper {
            asleep_since: None,
            ready: 1,
            ..waking
        };
        assert_eq!(decide(&floor, "b", 30).asleep_since, None);
        let after = Sleeper {
            now: 200 + WAKE_FLOOR_SECONDS,
            ..floor
        };
        assert_eq!(
            decide(&after, "b", 30).asleep_since,
            Some(200 + WAKE_FLOOR_SECONDS)
        );
        // With a longer idle time, the wake-up counts as the last request: still awake after
        // the floor, asleep once the idle time has passed since it.
        assert_eq!(decide(&after, "b", 300).asleep_since, None);
        let idle_after_wake = Sleeper {
            now: 200 + 300,
            ..floor
        };
        assert_eq!(decide(&idle_after_wake, "b", 300).asleep_since, Some(500));
    }

    #[test]
    fn requests_during_the_grace_wake_it_without_losing_a_pod() {
        let grace = Sleeper {
            idle: Some(false),
            asleep_since: Some(100),
            ..at(105)
        };
        let s = decide(&grace, "b", 30);
        assert_eq!((s.replicas, s.asleep_since), (1, None));
    }

    #[test]
    fn only_a_sleeping_variant_at_zero_without_a_recent_wake_skips_measuring() {
        assert!(sleeping_at_zero(Some(100), 0, None, 200));
        assert!(sleeping_at_zero(Some(100), 0, Some(150), 200));
        assert!(!sleeping_at_zero(Some(100), 0, Some(190), 200));
        assert!(!sleeping_at_zero(Some(100), 1, None, 200));
        assert!(!sleeping_at_zero(None, 0, None, 200));
    }
}
