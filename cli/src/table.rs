//! The live per-variant table of `mlep local up`: Prometheus text (Envoy's
//! `/stats/prometheus`) in, rows out. Pure: rates and latency quantiles come from two scrapes
//! (the counter and histogram-bucket deltas between them), so the table shows what happens now,
//! not since start.
//!
//! Envoy fact (1.40): counters in `/stats/prometheus` are live, but histogram buckets only
//! change when Envoy flushes stats (`stats_flush_interval`, default 5 s), so latency lags the
//! request rate by up to that long; rows fall back to the since-start quantiles when the window
//! has no flushed observations.

use mlep_contract::metrics::{
    LABEL_CODE_CLASS, LABEL_ENDPOINT, LABEL_MODEL, LABEL_NAMESPACE, LABEL_OUTCOME, LABEL_RESULT,
    LABEL_VARIANT, MODEL_LATENCY_US, OVERHEAD_LATENCY_US, REQUESTS_TOTAL, REQUEST_DURATION_MS,
    SHADOW_AGREEMENT_TOTAL, SHADOW_REQUESTS_TOTAL, SHADOW_VARIANT_LABEL,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// The `variant` of the shadow's row (and the filter's `variant` label of shadow traffic).
pub const SHADOW_ROW: &str = SHADOW_VARIANT_LABEL;

/// One sample line: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    fn label(&self, k: &str) -> &str {
        self.labels.get(k).map(String::as_str).unwrap_or("")
    }
}

/// Parse the Prometheus text exposition format. Comment lines and malformed lines are skipped
/// (the table is best-effort; it never fails the command).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// Like [`sum_of`], for one of the filter's metrics under either of its names (Envoy may
/// prefix it, see `is`).
pub fn metric_sum(samples: &[Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    sum_named(samples, |name| is(name, metric), labels)
}

/// The sum of the samples of `name` whose labels include every one of `labels` (histogram
/// series are addressed as `<name>_count` etc.).
pub fn sum_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    sum_named(samples, |n| n == name, labels)
}

/// The sum of the samples whose name passes `named` and whose labels include every one of
/// `labels`.
fn sum_named(samples: &[Sample], named: impl Fn(&str) -> bool, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| named(&s.name))
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).is_some_and(|l| l == v))
        })
        .map(|s| s.value)
        .sum()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => (&line[..i], &line[i..]),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let rest = if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        loop {
            // key
            while chars
                .peek()
                .is_some_and(|(_, c)| *c == ',' || c.is_whitespace())
            {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut val = String::new();
            let mut escaped = false;
            let mut closed = false;
            for (_, c) in chars.by_ref() {
                if escaped {
                    val.push(match c {
                        'n' => '\n',
                        other => other,
                    });
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    closed = true;
                    break;
                } else {
                    val.push(c);
                }
            }
            if !closed {
                return None;
            }
            labels.insert(key.trim().to_owned(), val);
        }
        &body[end? + 1..]
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Envoy may prefix stat names (`envoy_`); accept both.
fn is(name: &str, metric: &str) -> bool {
    name == metric || name.strip_prefix("envoy_") == Some(metric)
}

/// A scrape: samples and when they were taken (seconds on any monotonic clock).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    pub at_secs: f64,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn new(at_secs: f64, text: &str) -> Self {
        Self {
            at_secs,
            samples: parse_prometheus(text),
        }
    }
}

/// What the table shows for a variant, from the configuration and the supervisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VariantInfo {
    pub endpoint: String,
    pub variant: String,
    pub model: String,
    pub weight: u32,
    pub health: Health,
}

/// How a variant's model servers are doing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Servers answering `/ping` since their last start.
    pub ready: u32,
    pub replicas: u32,
    /// Restarts of its servers after a crash, since they were started.
    pub restarts: u32,
    /// Some server crashed and waits this long (the shortest such wait) to be started again.
    pub back_off: Option<Duration>,
    /// Scaled to zero: the filter holds its requests and wakes it (`crate::sleep`).
    pub asleep: bool,
}

impl Health {
    /// `Running`, `Starting`, `Asleep` or `CrashLoopBackOff (restart in 4s)`, as kubectl
    /// would say.
    pub fn status(&self) -> String {
        match self.back_off {
            _ if self.asleep => "Asleep".into(),
            Some(d) => format!("CrashLoopBackOff (restart in {}s)", d.as_secs_f64().ceil()),
            None if self.ready < self.replicas => "Starting".into(),
            None => "Running".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub info: VariantInfo,
    /// Requests per second between the two scrapes.
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Median model latency (`mlep_model_latency_us`: the model server's own time, or the
    /// upstream time of a container that does not report it), in ms.
    pub model_p50_ms: Option<f64>,
    /// Median overhead latency (`mlep_overhead_latency_us`: what the proxy added), in ms.
    pub overhead_p50_ms: Option<f64>,
    /// Requests answered 5xx since start.
    pub errors: u64,
    /// Requests since start.
    pub total: u64,
    /// Share of compared shadow answers that matched this variant's, since start.
    pub shadow_agreement: Option<f64>,
}

fn sum_where(s: &Scrape, metric: &str, f: impl Fn(&Sample) -> bool) -> f64 {
    s.samples
        .iter()
        .filter(|x| is(&x.name, metric) && f(x))
        .map(|x| x.value)
        .sum()
}

fn of<'a>(ep: &str, v: &'a str) -> impl Fn(&Sample) -> bool + 'a {
    let ep = ep.to_owned();
    move |x: &Sample| x.label(LABEL_ENDPOINT) == ep && x.label(LABEL_VARIANT) == v
}

/// Cumulative histogram buckets `(le, count)` of a variant's `histogram`, sorted by `le`.
fn buckets(s: &Scrape, histogram: &str, ep: &str, v: &str) -> Vec<(f64, f64)> {
    let name = format!("{histogram}_bucket");
    let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for x in s
        .samples
        .iter()
        .filter(|x| is(&x.name, &name) && of(ep, v)(x))
    {
        let le = match x.label("le") {
            "+Inf" => f64::INFINITY,
            l => match l.parse::<f64>() {
                Ok(l) => l,
                Err(_) => continue,
            },
        };
        let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
        e.1 += x.value;
    }
    let mut out: Vec<(f64, f64)> = by_le.into_values().collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile of cumulative buckets, interpolating linearly inside the bucket (as
/// Prometheus' `histogram_quantile` does). `None` without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev_le = 0.0;
    let mut prev_count = 0.0;
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev_le);
            }
            let in_bucket = count - prev_count;
            let frac = if in_bucket > 0.0 {
                (rank - prev_count) / in_bucket
            } else {
                1.0
            };
            return Some(prev_le + (le - prev_le) * frac);
        }
        prev_le = le;
        prev_count = count;
    }
    Some(prev_le)
}

/// The buckets of a variant's `histogram` to take quantiles from: the window between the two
/// scrapes when it has observations, else since start.
fn latency(
    prev: Option<&Scrape>,
    cur: &Scrape,
    histogram: &str,
    ep: &str,
    v: &str,
) -> Vec<(f64, f64)> {
    let cur_b = buckets(cur, histogram, ep, v);
    let Some(p) = prev.filter(|p| cur.at_secs > p.at_secs) else {
        return cur_b;
    };
    let prev_b = buckets(p, histogram, ep, v);
    let window: Vec<(f64, f64)> = cur_b
        .iter()
        .map(|&(le, c)| {
            let before = prev_b
                .iter()
                .find(|(l, _)| l.to_bits() == le.to_bits())
                .map_or(0.0, |x| x.1);
            (le, (c - before).max(0.0))
        })
        .collect();
    if window.last().is_some_and(|x| x.1 > 0.0) {
        window
    } else {
        cur_b
    }
}

/// An endpoint's shadow Envoy mirrors itself (`compare: Off`, `mlep_core::mirror`): its copies
/// are counted by the shadow cluster, not the filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirroredShadow {
    pub namespace: String,
    pub endpoint: String,
    pub model: String,
    /// The shadow's Envoy cluster.
    pub cluster: String,
}

/// Put each mirrored shadow's copies into `scrape` under the filter's name and labels,
/// `mlep_shadow_requests_total{namespace,endpoint,variant="shadow",model,outcome}`, from the
/// shadow cluster's own stats (Envoy's default tags): `timeout` its `upstream_rq_timeout`,
/// `error` its other answers but 200..500 less the timeouts (Envoy charges a timeout as a 504
/// too: router.cc `onResponseTimeout`), `ok` every answer 200..500, as the filter counts. So
/// the table, and anything reading the filter's names, sees native copies as the filter's.
pub fn add_mirrored(scrape: &mut Scrape, mirrors: &[MirroredShadow]) {
    for m in mirrors {
        let of_cluster = |x: &Sample| x.label("envoy_cluster_name") == m.cluster;
        // Per status code: `envoy_cluster_upstream_rq{envoy_response_code="200", ...}`.
        // The filter's classes (`filter/src/shadow.rs`): an answer 200..500 is `ok`.
        let answers = |failed: bool| {
            sum_where(scrape, "cluster_upstream_rq", |x| {
                let code = x.label("envoy_response_code").parse::<u16>().unwrap_or(0);
                of_cluster(x) && code > 0 && (200..500).contains(&code) != failed
            })
        };
        let timeout = sum_where(scrape, "cluster_upstream_rq_timeout", of_cluster);
        let failed = answers(true);
        let outcomes = [
            ("ok", answers(false)),
            ("error", (failed - timeout).max(0.0)),
            ("timeout", timeout),
        ];
        for (outcome, value) in outcomes {
            let labels = [
                (LABEL_NAMESPACE, m.namespace.as_str()),
                (LABEL_ENDPOINT, &m.endpoint),
                (LABEL_VARIANT, SHADOW_ROW),
                (LABEL_MODEL, &m.model),
                (LABEL_OUTCOME, outcome),
            ];
            scrape.samples.push(Sample {
                name: SHADOW_REQUESTS_TOTAL.to_owned(),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                value,
            });
        }
    }
}

/// Rows for `variants` from the current scrape and, when there is one, the previous.
pub fn rows(prev: Option<&Scrape>, cur: &Scrape, variants: &[VariantInfo]) -> Vec<Row> {
    variants
        .iter()
        .map(|info| {
            let (ep, v) = (info.endpoint.as_str(), info.variant.as_str());
            // The shadow row counts mirrored copies; its agreement covers the whole endpoint
            // (the filter compares every mirrored answer with the primary's).
            let shadow = v == SHADOW_ROW;
            let counted = if shadow {
                SHADOW_REQUESTS_TOTAL
            } else {
                REQUESTS_TOTAL
            };
            let total = sum_where(cur, counted, of(ep, v));
            let errors = if shadow {
                sum_where(cur, counted, |x| {
                    of(ep, v)(x) && matches!(x.label(LABEL_OUTCOME), "error" | "timeout")
                })
            } else {
                sum_where(cur, counted, |x| {
                    of(ep, v)(x) && x.label(LABEL_CODE_CLASS) == "5xx"
                })
            };
            let rps = match prev {
                Some(p) if cur.at_secs > p.at_secs => {
                    let before = sum_where(p, counted, of(ep, v));
                    (total - before).max(0.0) / (cur.at_secs - p.at_secs)
                }
                _ => 0.0,
            };
            let lat = latency(prev, cur, REQUEST_DURATION_MS, ep, v);
            let ms_of_us = |h| {
                let b: Vec<(f64, f64)> = latency(prev, cur, h, ep, v)
                    .into_iter()
                    .map(|(le, c)| (le / 1000.0, c))
                    .collect();
                quantile(0.5, &b)
            };
            let agreement_of = |x: &Sample| {
                x.label(LABEL_ENDPOINT) == ep && (shadow || x.label(LABEL_VARIANT) == v)
            };
            let matched = sum_where(cur, SHADOW_AGREEMENT_TOTAL, |x| {
                agreement_of(x) && x.label(LABEL_RESULT) == "match"
            });
            let mismatched = sum_where(cur, SHADOW_AGREEMENT_TOTAL, |x| {
                agreement_of(x) && x.label(LABEL_RESULT) == "mismatch"
            });
            let compared = matched + mismatched;
            Row {
                info: info.clone(),
                rps,
                p50_ms: quantile(0.5, &lat),
                p99_ms: quantile(0.99, &lat),
                model_p50_ms: ms_of_us(MODEL_LATENCY_US),
                overhead_p50_ms: ms_of_us(OVERHEAD_LATENCY_US),
                errors: errors as u64,
                total: total as u64,
                shadow_agreement: (compared > 0.0).then(|| matched / compared),
            }
        })
        .collect()
}

/// Shadow copies sent per outcome for an endpoint, since start (`ok`, `error`, `timeout`, ...).
pub fn shadow_outcomes(cur: &Scrape, endpoint: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for x in cur
        .samples
        .iter()
        .filter(|x| is(&x.name, SHADOW_REQUESTS_TOTAL) && x.label(LABEL_ENDPOINT) == endpoint)
    {
        *out.entry(x.label(LABEL_OUTCOME).to_owned()).or_insert(0) += x.value as u64;
    }
    out
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 10.0 => format!("{v:.1}ms"),
        Some(v) => format!("{v:.0}ms"),
        None => "-".into(),
    }
}

/// A short latency: µs under a millisecond (the proxy's overhead lives there).
fn short(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 1.0 => format!("{:.0}us", v * 1000.0),
        v => ms(v),
    }
}

/// The table as text, one line per variant, with a header. `MODEL_P50` / `OVERHD_P50`: the
/// medians of the latency breakdown (the model's own time; what the proxy added).
pub fn render(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<12} {:<8} {:<20} {:>6} {:>8} {:>8} {:>8} {:>9} {:>10} {:>8} {:>8} {:>7} {:>5} {:>8}  {}\n",
        "ENDPOINT",
        "VARIANT",
        "MODEL",
        "WEIGHT",
        "REQ/S",
        "P50",
        "P99",
        "MODEL_P50",
        "OVERHD_P50",
        "REQUESTS",
        "ERRORS",
        "SHADOW",
        "READY",
        "RESTARTS",
        "STATUS"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<12} {:<8} {:<20} {:>5}% {:>8.1} {:>8} {:>8} {:>9} {:>10} {:>8} {:>8} {:>7} {:>5} {:>8}  {}\n",
            r.info.endpoint,
            r.info.variant,
            r.info.model,
            r.info.weight,
            r.rps,
            ms(r.p50_ms),
            ms(r.p99_ms),
            short(r.model_p50_ms),
            short(r.overhead_p50_ms),
            r.total,
            r.errors,
            r.shadow_agreement
                .map(|a| format!("{:.0}%", a * 100.0))
                .unwrap_or_else(|| "-".into()),
            format!("{}/{}", r.info.health.ready, r.info.health.replicas),
            r.info.health.restarts,
            r.info.health.status(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirrored_shadows_copies_read_as_the_filters_outcomes_from_its_cluster_only() {
        let c = "mlep-shadow|default|titanic";
        let text = format!(
            "envoy_cluster_upstream_rq{{envoy_response_code=\"200\",envoy_cluster_name=\"{c}\"}} 7\n\
             envoy_cluster_upstream_rq{{envoy_response_code=\"404\",envoy_cluster_name=\"{c}\"}} 1\n\
             envoy_cluster_upstream_rq{{envoy_response_code=\"503\",envoy_cluster_name=\"{c}\"}} 2\n\
             envoy_cluster_upstream_rq{{envoy_response_code=\"504\",envoy_cluster_name=\"{c}\"}} 1\n\
             envoy_cluster_upstream_rq_timeout{{envoy_cluster_name=\"{c}\"}} 1\n\
             envoy_cluster_upstream_rq{{envoy_response_code=\"200\",envoy_cluster_name=\"other\"}} 50\n"
        );
        let mut scrape = Scrape::new(1.0, &text);
        let m = MirroredShadow {
            namespace: "default".into(),
            endpoint: "titanic".into(),
            model: "m2".into(),
            cluster: c.into(),
        };
        add_mirrored(&mut scrape, &[m]);
        assert_eq!(
            shadow_outcomes(&scrape, "titanic"),
            BTreeMap::from([
                ("error".to_owned(), 2),
                ("ok".to_owned(), 8),
                ("timeout".to_owned(), 1)
            ])
        );
        let r = &rows(None, &scrape, &[info(SHADOW_ROW, "m2", 0)])[0];
        assert_eq!((r.total, r.errors), (11, 3));
    }

    fn info(v: &str, m: &str, w: u32) -> VariantInfo {
        VariantInfo {
            endpoint: "titanic".into(),
            variant: v.into(),
            model: m.into(),
            weight: w,
            health: Health {
                ready: 1,
                replicas: 1,
                ..Health::default()
            },
        }
    }

    fn text(a_ok: u64, a_5xx: u64, b_ok: u64, a_buckets: [u64; 4]) -> String {
        let l = r#"endpoint="titanic",namespace="default",variant="a",model="titanic-v1""#;
        let lb = r#"endpoint="titanic",namespace="default",variant="b",model="titanic-v2""#;
        format!(
            "# TYPE mlep_requests_total counter\n\
             mlep_requests_total{{{l},code_class=\"2xx\"}} {a_ok}\n\
             mlep_requests_total{{{l},code_class=\"5xx\"}} {a_5xx}\n\
             mlep_requests_total{{{lb},code_class=\"2xx\"}} {b_ok}\n\
             # TYPE mlep_request_duration_ms histogram\n\
             mlep_request_duration_ms_bucket{{{l},le=\"1\"}} {}\n\
             mlep_request_duration_ms_bucket{{{l},le=\"5\"}} {}\n\
             mlep_request_duration_ms_bucket{{{l},le=\"10\"}} {}\n\
             mlep_request_duration_ms_bucket{{{l},le=\"+Inf\"}} {}\n\
             mlep_shadow_agreement_total{{{l},result=\"match\"}} 9\n\
             mlep_shadow_agreement_total{{{l},result=\"mismatch\"}} 1\n\
             envoy_cluster_upstream_rq{{envoy_cluster_name=\"x\"}} 7\n",
            a_buckets[0], a_buckets[1], a_buckets[2], a_buckets[3]
        )
    }

    #[test]
    fn the_shadow_row_counts_mirrored_copies_and_endpoint_wide_agreement() {
        let t = "mlep_shadow_requests_total{endpoint=\"titanic\",variant=\"shadow\",model=\"m2\",outcome=\"ok\"} 8\n\
                 mlep_shadow_requests_total{endpoint=\"titanic\",variant=\"shadow\",model=\"m2\",outcome=\"timeout\"} 2\n\
                 mlep_shadow_agreement_total{endpoint=\"titanic\",variant=\"shadow\",model=\"m2\",result=\"match\"} 6\n\
                 mlep_shadow_agreement_total{endpoint=\"titanic\",variant=\"shadow\",model=\"m2\",result=\"mismatch\"} 2\n\
                 mlep_shadow_agreement_total{endpoint=\"other\",variant=\"shadow\",model=\"m2\",result=\"mismatch\"} 5\n";
        let r = &rows(None, &Scrape::new(0.0, t), &[info(SHADOW_ROW, "m2", 0)])[0];
        assert_eq!((r.total, r.errors, r.shadow_agreement), (10, 2, Some(0.75)));
    }

    #[test]
    fn parses_labels_with_escapes_and_special_values() {
        let s = parse_prometheus(
            "# HELP x\nfoo{a=\"q\\\"uote\",b=\"x,y\"} +Inf\nbar 2.5\nbroken{a=\"x} 1\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["a"], "q\"uote");
        assert_eq!(s[0].labels["b"], "x,y");
        assert!(s[0].value.is_infinite());
        assert_eq!((s[1].name.as_str(), s[1].value), ("bar", 2.5));
    }

    #[test]
    fn rates_come_from_the_delta_between_two_scrapes() {
        let prev = Scrape::new(10.0, &text(100, 0, 30, [50, 90, 100, 100]));
        let cur = Scrape::new(12.0, &text(300, 4, 70, [50, 90, 100, 100]));
        let rows = rows(
            Some(&prev),
            &cur,
            &[info("a", "titanic-v1", 80), info("b", "titanic-v2", 20)],
        );
        assert_eq!(rows[0].rps, 102.0);
        assert_eq!(rows[1].rps, 20.0);
        assert_eq!((rows[0].total, rows[0].errors), (304, 4));
        assert_eq!(rows[0].shadow_agreement, Some(0.9));
        assert_eq!(rows[1].shadow_agreement, None);
    }

    #[test]
    fn latency_quantiles_use_the_window_when_it_has_requests() {
        // Since start: all fast. In the window: 100 new requests, all between 5 and 10 ms.
        let prev = Scrape::new(0.0, &text(100, 0, 0, [100, 100, 100, 100]));
        let cur = Scrape::new(1.0, &text(200, 0, 0, [100, 100, 200, 200]));
        let r = &rows(Some(&prev), &cur, &[info("a", "m", 100)])[0];
        assert_eq!(r.p50_ms, Some(7.5));
        assert!(r.p99_ms.unwrap() > 9.9 && r.p99_ms.unwrap() <= 10.0);
        // No new requests: fall back to since-start.
        let r = &rows(
            Some(&cur),
            &Scrape {
                at_secs: 2.0,
                ..cur.clone()
            },
            &[info("a", "m", 100)],
        )[0];
        assert_eq!(r.rps, 0.0);
        assert_eq!(r.p50_ms, Some(1.0));
    }

    #[test]
    fn quantile_interpolates_within_buckets() {
        assert_eq!(
            quantile(0.5, &[(1.0, 0.0), (2.0, 10.0), (f64::INFINITY, 10.0)]),
            Some(1.5)
        );
        assert_eq!(
            quantile(0.99, &[(1.0, 0.0), (f64::INFINITY, 10.0)]),
            Some(1.0)
        );
        assert_eq!(quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
    }

    #[test]
    fn render_shows_one_line_per_variant() {
        let cur = Scrape::new(1.0, &text(10, 0, 5, [10, 10, 10, 10]));
        let out = render(&rows(
            None,
            &cur,
            &[info("a", "titanic-v1", 80), info("b", "titanic-v2", 20)],
        ));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].contains("titanic-v1") && lines[1].contains("80%") && lines[1].contains("90%"),
            "{out}"
        );
        assert!(
            lines[2].contains("titanic-v2") && lines[2].contains("20%"),
            "{out}"
        );
        assert!(lines[1].ends_with("1/1        0  Running"), "{out}");
    }

    /// A model that sleeps ~200 ms behind a proxy adding ~0.1 ms: the columns say which is
    /// which (model time in ms, overhead in µs), from the contract's histograms.
    #[test]
    fn the_latency_breakdown_shows_model_and_overhead_medians() {
        let l = r#"endpoint="titanic",namespace="default",variant="a",model="titanic-v1""#;
        let t = format!(
            "mlep_requests_total{{{l},code_class=\"2xx\"}} 10\n\
             mlep_model_latency_us_bucket{{{l},le=\"100000\"}} 0\n\
             mlep_model_latency_us_bucket{{{l},le=\"250000\"}} 10\n\
             mlep_model_latency_us_bucket{{{l},le=\"+Inf\"}} 10\n\
             mlep_overhead_latency_us_bucket{{{l},le=\"100\"}} 0\n\
             mlep_overhead_latency_us_bucket{{{l},le=\"250\"}} 10\n\
             mlep_overhead_latency_us_bucket{{{l},le=\"+Inf\"}} 10\n"
        );
        let rows = rows(None, &Scrape::new(1.0, &t), &[info("a", "titanic-v1", 100)]);
        assert_eq!(rows[0].model_p50_ms, Some(175.0));
        assert_eq!(rows[0].overhead_p50_ms, Some(0.175));
        let out = render(&rows);
        let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
        let cols: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
        let at = |name| cols[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(
            (at("MODEL_P50"), at("OVERHD_P50")),
            ("175ms", "175us"),
            "{out}"
        );
    }

    #[test]
    fn a_crash_looping_variant_shows_its_restarts_and_back_off() {
        let mut i = info("b", "titanic-v2", 20);
        i.health = Health {
            ready: 1,
            replicas: 2,
            restarts: 3,
            back_off: Some(Duration::from_millis(3200)),
            asleep: false,
        };
        let out = render(&rows(None, &Scrape::new(1.0, ""), &[i]));
        let cols: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            cols[12..].join(" "),
            "1/2 3 CrashLoopBackOff (restart in 4s)",
            "{out}"
        );
        let starting = Health {
            ready: 0,
            replicas: 1,
            ..Health::default()
        };
        assert_eq!(starting.status(), "Starting");
        let asleep = Health {
            asleep: true,
            ..starting
        };
        assert_eq!(asleep.status(), "Asleep");
    }

    #[test]
    fn a_metric_is_summed_by_label_under_either_of_its_names() {
        let text = "envoy_mlep_requests_total{endpoint=\"t\",variant=\"b\"} 2\n\
                    mlep_requests_total{endpoint=\"t\",variant=\"b\"} 3\n\
                    mlep_requests_total{endpoint=\"t\",variant=\"a\"} 5\n\
                    mlep_requests_total_x{endpoint=\"t\",variant=\"b\"} 7\n";
        let samples = parse_prometheus(text);
        let b = [("endpoint", "t"), ("variant", "b")];
        assert_eq!(metric_sum(&samples, "mlep_requests_total", &b), 5.0);
    }
}
