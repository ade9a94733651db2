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
        value,
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
    checked(s, phase, &sample)
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
fn checked(s: &Settings, phase: Phase, sample: &Sample) -> Judged {
    let rate = sample.errors as f64 / sample.requests.max(1) as f64;
    let mut judged = vec![(
        checks::ERROR_RATE,
        rate,
        s.max_error_rate,
        rate <= s.max_error_rate,
    )];
    if phase != Phase::Baking {
        if let (Some(limit), Some(p99)) = (s.max_p99_latency_ms, sample.p99_ms) {
            judged.push((checks::P99_LATENCY, p99, limit, p99 <= limit));
        }
    } else if let Some(limit) = s.min_agreement {
        if sample.compared > 0 {
            let agreement = sample.agreed as f64 / sample.compared as f64;
            judged.push((checks::AGREEMENT, agreement, limit, agreement >= limit));
        }
    }
    let failed = judged.iter().find(|(_, _, _, ok)| !ok);
    let shown = failed.or(judged.last()).copied();
    let result = shown.and_then(|(c, v, l, ok)| result(c, v, l, ok));
    match failed {
        Some((check, value, limit, _)) => Judged {
            verdict: Verdict::Fail(format!(
                "{check}: measured {} against a limit of {} over {} requests",
                round4(*value),
                limit,
                sample.requests
            )),
            result,
        },
        None => Judged {
            verdict: Verdict::Pass,
            result,
        },
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}
