//! The shipped dashboard and alert rules (manifests/observability/) name only metrics and
//! labels of the contract (`mlep_contract::metrics`): renaming one there fails here until the
//! queries follow. Whether the queries return data is proven on the bed
//! (tests/cluster/tests/observability.rs).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mlep_contract::metrics::{self as m, operator as op};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn read(rel: &str) -> String {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every PromQL expression of the dashboard (targets and variable queries) and the rules.
fn expressions() -> Vec<String> {
    let d: serde_json::Value =
        serde_json::from_str(&read("manifests/observability/grafana-dashboard.json"))
            .unwrap_or_else(|e| panic!("dashboard JSON: {e}"));
    let mut out: Vec<String> = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.extend(t["expr"].as_str().map(str::to_owned));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        out.extend(v["query"]["query"].as_str().map(str::to_owned));
    }
    let r: serde_json::Value =
        serde_yaml::from_str(&read("manifests/observability/alerts.rules.yaml"))
            .unwrap_or_else(|e| panic!("rules YAML: {e}"));
    for g in r["groups"].as_array().into_iter().flatten() {
        for rule in g["rules"].as_array().into_iter().flatten() {
            out.extend(rule["expr"].as_str().map(str::to_owned));
        }
    }
    out
}

/// Identifiers of `expr` outside string literals.
fn identifiers(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_string = false;
    for c in expr.chars() {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_') {
            cur.push(c);
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    out.extend((!cur.is_empty()).then_some(cur));
    out
}

/// Label names `expr` matches on (`{k="v"}`) or groups by (`by (..)`, `on (..)`, ...).
fn label_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut i = 0;
    let bytes: Vec<char> = expr.chars().collect();
    // Matchers: an identifier directly followed by =, !=, =~ or !~ inside braces.
    let mut depth = 0;
    let mut cur = String::new();
    let mut in_string = false;
    while i < bytes.len() {
        let c = bytes[i];
        if c == '"' {
            in_string = !in_string;
        } else if !in_string {
            match c {
                '{' => {
                    depth += 1;
                    cur.clear();
                }
                '}' => depth -= 1,
                '=' | '!' if depth > 0 && !cur.is_empty() => {
                    out.insert(std::mem::take(&mut cur));
                }
                c if c.is_ascii_alphanumeric() || c == '_' => cur.push(c),
                ' ' => {}
                _ => cur.clear(),
            }
        }
        i += 1;
    }
    // Grouping lists: every identifier inside the parentheses after these keywords.
    let keywords = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let text = expr.replace(['\n'], " ");
    for k in keywords {
        let mut rest = text.as_str();
        while let Some(at) = find_keyword(rest, k) {
            let after = rest[at + k.len()..].trim_start();
            if let Some(list) = after.strip_prefix('(') {
                let end = list.find(')').unwrap_or(list.len());
                out.extend(
                    list[..end]
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                );
            }
            rest = &rest[at + k.len()..];
        }
    }
    out
}

/// Where `word` stands alone in `text`.
fn find_keyword(text: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find(word) {
        let at = from + i;
        let before = text[..at].chars().last();
        let after = text[at + word.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident(before) && !ident(after) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

#[test]
fn every_mlep_metric_the_dashboard_and_rules_query_is_a_contract_name() {
    let histograms = [
        m::REQUEST_DURATION_MS,
        m::MODEL_LATENCY_US,
        m::OVERHEAD_LATENCY_US,
    ];
    let mut known: BTreeSet<String> = [
        m::REQUESTS_TOTAL,
        m::ASSIGNMENTS_TOTAL,
        m::SHADOW_REQUESTS_TOTAL,
        m::SHADOW_AGREEMENT_TOTAL,
        m::CONFIG_ERRORS_TOTAL,
        m::VM_MEMORY_BYTES,
    ]
    .iter()
    .chain(op::ALL.iter())
    .map(|s| (*s).to_owned())
    .collect();
    for h in histograms {
        for suffix in ["_bucket", "_sum", "_count"] {
            known.insert(format!("{h}{suffix}"));
        }
    }
    let mut used = BTreeSet::new();
    for e in expressions() {
        for id in identifiers(&e)
            .into_iter()
            .filter(|i| i.starts_with("mlep_"))
        {
            assert!(
                known.contains(&id),
                "{id} is not a contract metric (in {e})"
            );
            used.insert(id);
        }
    }
    // The dashboard shows each of these; a query that stops naming one fails here too.
    for needed in [
        m::REQUESTS_TOTAL.to_owned(),
        format!("{}_bucket", m::REQUEST_DURATION_MS),
        format!("{}_bucket", m::MODEL_LATENCY_US),
        format!("{}_bucket", m::OVERHEAD_LATENCY_US),
        m::SHADOW_AGREEMENT_TOTAL.to_owned(),
        op::ROLLOUT_MOVED_PERCENT.to_owned(),
        op::MODEL_DEPLOYMENT_INFO.to_owned(),
        op::ENDPOINT_CONDITION.to_owned(),
    ] {
        assert!(used.contains(&needed), "no query uses {needed}");
    }
}

#[test]
fn every_label_the_queries_match_or_group_by_is_a_contract_label_or_a_standard_one() {
    let mut known: BTreeSet<&str> = m::ALL_LABELS.into_iter().collect();
    known.extend([
        op::LABEL_TYPE,
        op::LABEL_STATUS,
        op::LABEL_FROM_MODEL,
        op::LABEL_TO_MODEL,
        op::LABEL_PHASE,
        op::LABEL_DEPLOYMENT,
    ]);
    // Prometheus's own (`le` of histograms), cAdvisor's, and the pod scrape job's target labels.
    known.extend([
        "le",
        "pod",
        "container",
        "kubernetes_namespace",
        "kubernetes_pod_name",
        // Istio's tags of Envoy's cluster stats (the native mirror's recording rules).
        "cluster_name",
        "response_code",
    ]);
    for e in expressions() {
        for l in label_names(&e) {
            assert!(
                known.contains(l.as_str()),
                "label {l} is not a contract label (in {e})"
            );
        }
    }
    // The model container matched in the CPU and memory queries is the one the operator names.
    let dashboard = read("manifests/observability/grafana-dashboard.json");
    assert!(dashboard.contains(&format!("container=\\\"{}\\\"", op::MODEL_CONTAINER)));
}

#[test]
fn the_label_parser_sees_matchers_and_groupings() {
    let l = label_names("sum by (variant, le) (rate(x{namespace=\"a\", code_class=~\"5..\"}[1m])) / ignoring(model) y");
    let want: BTreeSet<String> = ["variant", "le", "namespace", "code_class", "model"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(l, want);
}

/// Kiali's custom dashboard model (kiali/kiali `models.MonitoringDashboard`, the fields this
/// file uses), strict: an unknown or misspelled field fails.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct KialiDashboard {
    name: String,
    title: String,
    discover_on: String,
    items: Vec<KialiItem>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KialiItem {
    chart: KialiChart,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct KialiChart {
    name: String,
    unit: String,
    #[serde(default)]
    unit_scale: Option<f64>,
    spans: u8,
    metric_name: String,
    data_type: KialiDataType,
    aggregations: Vec<KialiAggregation>,
}

#[derive(serde::Deserialize, PartialEq, Debug)]
#[serde(rename_all = "lowercase")]
enum KialiDataType {
    Raw,
    Rate,
    Histogram,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct KialiAggregation {
    label: String,
    display_name: String,
}

#[test]
fn the_kiali_dashboard_has_kialis_shape_and_names_contract_metrics_and_labels() {
    let dashboards: Vec<KialiDashboard> =
        serde_yaml::from_str(&read("manifests/observability/kiali-dashboard.yaml"))
            .unwrap_or_else(|e| panic!("kiali-dashboard.yaml: {e}"));
    assert_eq!(dashboards.len(), 1);
    let d = &dashboards[0];
    assert_eq!(d.discover_on, m::REQUESTS_TOTAL);
    assert!(!d.items.is_empty());
    for item in &d.items {
        let c = &item.chart;
        let metric_ok = match c.data_type {
            KialiDataType::Histogram => c.metric_name == m::REQUEST_DURATION_MS,
            _ => [
                m::REQUESTS_TOTAL,
                m::ASSIGNMENTS_TOTAL,
                m::SHADOW_AGREEMENT_TOTAL,
            ]
            .contains(&c.metric_name.as_str()),
        };
        assert!(metric_ok, "{} ({:?})", c.metric_name, c.data_type);
        assert!((1..=12).contains(&c.spans), "spans {}", c.spans);
        for a in &c.aggregations {
            assert!(
                m::ALL_LABELS.contains(&a.label.as_str()),
                "label {}",
                a.label
            );
        }
    }
}

#[test]
fn the_istio_telemetry_tags_read_the_contracts_headers() {
    let t: serde_json::Value =
        serde_yaml::from_str(&read("manifests/observability/istio-telemetry.yaml"))
            .unwrap_or_else(|e| panic!("istio-telemetry.yaml: {e}"));
    assert_eq!(t["kind"], "Telemetry");
    let overrides = t["spec"]["metrics"][0]["overrides"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(overrides.len(), 2);
    for o in overrides {
        let tags = &o["tagOverrides"];
        assert_eq!(
            tags["mlep_variant"]["value"],
            format!("request.headers['{}']", m::VARIANT_HEADER)
        );
        assert_eq!(
            tags["mlep_model"]["value"],
            format!("response.headers['{}']", m::MODEL_HEADER)
        );
    }
}
