//! Judging one step's sample against `spec.rollout.analysis`.

use super::{checks, Settings};
use crate::analysis::Sample;
use crate::crd::{AnalysisResult, Phase};

pub(super) enum Verdict {
    Pass,
    Wait(String),
    Fail(String),
}

pub(super) struct Judged {
    pub(super) verdict: Verdict,
    pub(super) result: Option<AnalysisResult>,
}

fn result(check: &str, value: f64, limit: f64, passed: bool) -> Option<AnalysisResult> {
    Some(AnalysisResult {
        check: check.to_owned(),
        value: round4(value),
        limit,
        passed,
    })
}

/// Judge a step's sample: the first failing check, else wait for enough requests, else pass.
pub(super) fn judge(
    s: &Settings,
    phase: Phase,
    sample: Option<Result<Sample, String>>,
    elapsed: i64,
) -> Judged {
    let overdue = elapsed >= s.max_step_seconds;
    let sample = match sample {
        Some(Ok(x)) => x,
        Some(Err(e)) if overdue => {
            return Judged {
                verdict: Verdict::Fail(format!(
                    "analysis failed for {elapsed}s (maxStepSeconds {}): {e}",
                    s.max_step_seconds
                )),
                result: result(checks::ANALYSIS, 0.0, 0.0, false),
            }
        }
        Some(Err(e)) => {
            return Judged {
                verdict: Verdict::Wait(format!("analysis unavailable, retrying: {e}")),
                result: None,
            }
        }
        None => Sample::default(),
    };
    if sample.requests < s.min_requests {
        return too_few(s, &sample, elapsed, overdue);
    }
    checked(s, phase, &sample, elapsed, overdue)
}

/// z of a one-sided 95 % bound.
const Z95: f64 = 1.645;

/// The Wilson score interval (one-sided 95 % each way) of a share: `hits` of `n`. With no
/// observation it is 0..1 (nothing is known). Wilson's, not the normal approximation's: it stays
/// inside 0..1 and is honest at the shares that matter here, near 1 with few samples (all of 20
/// agreeing is at least 0.88, not 1).
pub(crate) fn wilson(hits: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (n, p) = (n as f64, hits.min(n) as f64 / n as f64);
    let z2 = Z95 * Z95;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Fewer than `minRequests` requests: wait, or fail once the step is overdue.
fn too_few(s: &Settings, sample: &Sample, elapsed: i64, overdue: bool) -> Judged {
    let min = s.min_requests as f64;
    let value = sample.requests as f64;
    if overdue {
        return Judged {
            verdict: Verdict::Fail(format!(
                "{}: {} requests in {elapsed}s, below {} (maxStepSeconds {})",
                checks::MIN_REQUESTS,
                sample.requests,
                s.min_requests,
                s.max_step_seconds
            )),
            result: result(checks::MIN_REQUESTS, value, min, false),
        };
    }
    Judged {
        verdict: Verdict::Wait(format!(
            "waiting for requests: {} of {} seen in this step",
            sample.requests, s.min_requests
        )),
        result: result(checks::MIN_REQUESTS, value, min, false),
    }
}

/// Enough requests: the error rate, then p99 latency (served traffic) or agreement (a bake).
///
/// Agreement is judged on a confidence bound, not the raw share of compared copies that agreed:
/// it passes once the share's lower bound reaches `minAgreement`, fails once its upper bound is
/// below it, and in between (with no compared copy at all, too) waits for more copies, failing
/// only when the step is overdue. So a few lucky copies never pass a bake, and a clearly
/// disagreeing model is stopped as soon as the evidence says so.
fn checked(s: &Settings, phase: Phase, sample: &Sample, elapsed: i64, overdue: bool) -> Judged {
    let rate = sample.errors as f64 / sample.requests.max(1) as f64;
    let over = |what: &str| format!("over {} {what}", sample.requests);
    let mut judged = vec![(
        checks::ERROR_RATE,
        rate,
        s.max_error_rate,
        rate <= s.max_error_rate,
        over("requests"),
    )];
    let mut inconclusive = None;
    if phase != Phase::Baking {
        if let (Some(limit), Some(p99)) = (s.max_p99_latency_ms, sample.p99_ms) {
            judged.push((
                checks::P99_LATENCY,
                p99,
                limit,
                p99 <= limit,
                over("requests"),
            ));
        }
    } else if let Some(limit) = s.min_agreement {
        let (low, high) = wilson(sample.agreed, sample.compared);
        let seen = format!(
            "{} of {} compared copies agreed",
            sample.agreed, sample.compared
        );
        if high < limit {
            let why = format!("(95 % upper bound; {seen})");
            judged.push((checks::AGREEMENT, high, limit, false, why));
        } else if low >= limit {
            let why = format!("(95 % lower bound; {seen})");
            judged.push((checks::AGREEMENT, low, limit, true, why));
        } else {
            inconclusive = Some((low, high, limit, seen));
        }
    }
    let failed = judged.iter().find(|(_, _, _, ok, _)| !ok);
    if let Some((check, value, limit, _, why)) = failed {
        return Judged {
            verdict: Verdict::Fail(format!(
                "{check}: measured {} against a limit of {limit} {why}",
                round4(*value),
            )),
            result: result(check, *value, *limit, false),
        };
    }
    if let Some((low, high, limit, seen)) = inconclusive {
        let bounds = format!(
            "{seen}, 95 % bounds {}..{} around a limit of {limit}",
            round4(low),
            round4(high)
        );
        let verdict = if overdue {
            Verdict::Fail(format!(
                "{}: inconclusive after {elapsed}s (maxStepSeconds {}): {bounds}",
                checks::AGREEMENT,
                s.max_step_seconds
            ))
        } else {
            Verdict::Wait(format!(
                "{}: waiting for more compared copies: {bounds}",
                checks::AGREEMENT
            ))
        };
        return Judged {
            verdict,
            result: result(checks::AGREEMENT, low, limit, false),
        };
    }
    let shown = judged.last();
    Judged {
        verdict: Verdict::Pass,
        result: shown.and_then(|(c, v, l, ok, _)| result(c, *v, *l, *ok)),
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}
