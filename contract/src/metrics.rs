//! Names users and dashboards depend on: headers, cookies, metrics. One place, used by the
//! filter, the operator and local mode.

/// Set by the filter on the request (the routing key) and on the response.
pub const VARIANT_HEADER: &str = "x-mlep-variant";
/// Set by the filter on requests of a variant that is being rolled out: the Model that serves
/// the request (the rollout's new model for users already moved, the variant's model for the
/// others). Routes match it together with [`VARIANT_HEADER`] to pick the new model's subset;
/// a client-sent value is overwritten. (The model server's *response* header of the same name
/// carries `name:version` of the loaded model; the two never meet.)
pub const MODEL_HEADER: &str = "x-mlep-model";
/// Default header clients use to target a variant.
pub const DEFAULT_TARGET_HEADER: &str = "x-mlep-target-variant";
/// Prefix of the filter's sticky cookie; the full name is `mlep-<endpoint>`.
pub const COOKIE_PREFIX: &str = "mlep-";

/// Prometheus metric names (labels `endpoint, namespace, variant, model` plus the ones noted).
pub const REQUESTS_TOTAL: &str = "mlep_requests_total"; // + code_class
pub const REQUEST_DURATION_MS: &str = "mlep_request_duration_ms"; // histogram
pub const ASSIGNMENTS_TOTAL: &str = "mlep_assignments_total"; // + reason=sticky|target|random
pub const SHADOW_REQUESTS_TOTAL: &str = "mlep_shadow_requests_total"; // + outcome
pub const SHADOW_AGREEMENT_TOTAL: &str = "mlep_shadow_agreement_total"; // + result=match|mismatch
pub const CONFIG_ERRORS_TOTAL: &str = "mlep_config_errors_total";
/// Requests held while their variant woke from zero replicas, by what became of them (+
/// `outcome`: a [`HoldOutcome`]). Defined only for variants marked asleep.
pub const WAKE_HOLDS_TOTAL: &str = "mlep_wake_holds_total";
/// Captured invocations by what became of them (`endpoint`, `namespace`, `outcome`: a
/// [`CaptureOutcome`]).
pub const CAPTURE_RECORDS_TOTAL: &str = "mlep_capture_records_total";
/// Histogram, microseconds: the model's own time for a request, as the model server reports it
/// (`Server-Timing: model;dur=<ms>`, [`crate::latency`]), else the upstream time the proxy
/// measured (request headers to response headers). SageMaker's `ModelLatency`, in its unit.
pub const MODEL_LATENCY_US: &str = "mlep_model_latency_us";
/// Histogram, microseconds: what the proxy added, the request's whole time in the proxy
/// (request headers to end of stream) minus [`MODEL_LATENCY_US`]. SageMaker's
/// `OverheadLatency`, in its unit.
pub const OVERHEAD_LATENCY_US: &str = "mlep_overhead_latency_us";
/// The latency breakdown's histograms. Their stat names carry the labels before the unit
/// (see [`stat_name`]), so each has a raw-name prefix of its own ([`stat_prefix`]) that
/// Envoy's `histogram_bucket_settings` can give [`LATENCY_BUCKETS_US`].
pub const LATENCY_HISTOGRAMS: [&str; 2] = [MODEL_LATENCY_US, OVERHEAD_LATENCY_US];
/// Bucket upper bounds of [`LATENCY_HISTOGRAMS`], in µs: 1-2.5-5 steps from 25 µs (the
/// proxy's own overhead lives in the first buckets) to 10 s (large batches), then 30 s and
/// 60 s (SageMaker's invocation timeout). Envoy's defaults (0.5 .. 3,600,000) read as µs
/// would have nothing between 10 ms and 30 ms, or between 60 ms and 300 ms, where most
/// inference sits.
pub const LATENCY_BUCKETS_US: [f64; 20] = [
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    25_000.0,
    50_000.0,
    100_000.0,
    250_000.0,
    500_000.0,
    1_000_000.0,
    2_500_000.0,
    5_000_000.0,
    10_000_000.0,
    30_000_000.0,
    60_000_000.0,
];
/// The pod annotation with which istio-agent writes `histogram_bucket_settings` (prefix
/// matches) into a proxy's bootstrap: see [`istio_histogram_buckets`].
pub const ISTIO_HISTOGRAM_BUCKETS_ANNOTATION: &str = "sidecar.istio.io/statsHistogramBuckets";
/// Gauge: the filter VM's linear memory in bytes (Wasm memory never shrinks, so this shows
/// the high-water mark), set every second by worker VMs (with several workers, the last one
/// to report).
pub const VM_MEMORY_BYTES: &str = "mlep_vm_memory_bytes";

/// The operator's gauges of each endpoint's state, read from its status at every scrape of
/// the operator's `/metrics` (labels `namespace, endpoint` plus the ones noted). Dashboards and
/// alert rules join the filter's traffic metrics and the kubelet's cAdvisor metrics with them.
pub mod operator {
    /// `1` per status condition, like kube-state-metrics' `*_status_condition`.
    /// + `type`, `status`, `reason`.
    pub const ENDPOINT_CONDITION: &str = "mlep_endpoint_condition";
    /// Share of the rollout's variant on its new model while a rollout runs (0-100).
    /// + `variant`, `from_model`, `to_model`, `phase`.
    pub const ROLLOUT_MOVED_PERCENT: &str = "mlep_rollout_moved_percent";
    /// `1` per Deployment of a model the endpoint runs: joins cAdvisor's per-pod CPU and memory
    /// (`pod` = `<deployment>-<replicaset hash>-<suffix>`) to variant and model.
    /// + `variant`, `model`, `deployment`.
    pub const MODEL_DEPLOYMENT_INFO: &str = "mlep_model_deployment_info";
    /// `1` per endpoint whose shadow Envoy's own mirror copies (`compare: Off` through the
    /// EnvoyFilter wiring): the shipped recording rules join the shadow cluster's stats with it
    /// to count those copies as `mlep_shadow_requests_total`. + `model` (the shadow's).
    pub const SHADOW_MIRRORED_INFO: &str = "mlep_shadow_mirrored_info";

    pub const LABEL_TYPE: &str = "type";
    pub const LABEL_STATUS: &str = "status";
    pub const LABEL_FROM_MODEL: &str = "from_model";
    pub const LABEL_TO_MODEL: &str = "to_model";
    pub const LABEL_PHASE: &str = "phase";
    pub const LABEL_DEPLOYMENT: &str = "deployment";
    /// The model server's container in a model pod (cAdvisor's `container` label).
    pub const MODEL_CONTAINER: &str = "model";

    /// Every metric name above.
    pub const ALL: [&str; 4] = [
        ENDPOINT_CONDITION,
        ROLLOUT_MOVED_PERCENT,
        MODEL_DEPLOYMENT_INFO,
        SHADOW_MIRRORED_INFO,
    ];
}

/// Label keys, in the order every encoded stat name carries them.
pub const LABEL_ENDPOINT: &str = "endpoint";
pub const LABEL_NAMESPACE: &str = "namespace";
pub const LABEL_VARIANT: &str = "variant";
pub const LABEL_MODEL: &str = "model";
/// The per-metric extra label keys.
pub const LABEL_CODE_CLASS: &str = "code_class";
pub const LABEL_REASON: &str = "reason";
pub const LABEL_OUTCOME: &str = "outcome";
pub const LABEL_RESULT: &str = "result";

/// Every label key a filter stat can carry (base labels first, then the extras).
pub const ALL_LABELS: [&str; 8] = [
    LABEL_ENDPOINT,
    LABEL_NAMESPACE,
    LABEL_VARIANT,
    LABEL_MODEL,
    LABEL_CODE_CLASS,
    LABEL_REASON,
    LABEL_OUTCOME,
    LABEL_RESULT,
];

/// The `variant` label value of shadow traffic.
pub const SHADOW_VARIANT_LABEL: &str = "shadow";

/// Prefix Envoy puts in front of every stat a Wasm module defines.
pub const ENVOY_WASM_STAT_PREFIX: &str = "wasmcustom.";

/// A label value as it can travel inside an Envoy stat name: every byte outside
/// `[A-Za-z0-9_-]` becomes `_`. Envoy splits stat names on `.`, so a dot in a value would
/// break tag extraction (`model.v1.2` must become `model_v1_2`).
pub fn sanitize_label_value(value: &str) -> String {
    let s: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "_".to_owned()
    } else {
        s
    }
}

/// Every filter metric name starts with this.
pub const METRIC_PREFIX: &str = "mlep_";

/// The unit suffix of the latency histograms.
const UNIT_US: &str = "us";

/// Where [`stat_name`] inserts the labels into `metric`'s name: after [`METRIC_PREFIX`], or
/// for a latency histogram before its unit (`mlep_model_latency_` | labels | `us`).
fn label_position(metric: &str) -> usize {
    if LATENCY_HISTOGRAMS.contains(&metric) {
        metric.len().saturating_sub(UNIT_US.len())
    } else if metric.starts_with(METRIC_PREFIX) {
        METRIC_PREFIX.len()
    } else {
        0
    }
}

/// The start every raw Envoy stat name of `metric` has, whatever its labels:
/// `wasmcustom.mlep_model_latency_` for a latency histogram (what bucket settings match).
pub fn stat_prefix(metric: &str) -> String {
    let head = metric.get(..label_position(metric)).unwrap_or("");
    format!("{ENVOY_WASM_STAT_PREFIX}{head}")
}

/// Envoy `stats_config.histogram_bucket_settings` for the latency histograms: one prefix
/// match per histogram ([`stat_prefix`]; Envoy matches the raw name, before tag extraction)
/// with [`LATENCY_BUCKETS_US`]. Local mode writes these; in a mesh, the
/// [`ISTIO_HISTOGRAM_BUCKETS_ANNOTATION`] with [`istio_histogram_buckets`] makes istio-agent
/// write the same (it knows prefix matches only, hence the labels before the unit).
pub fn latency_bucket_prefixes() -> Vec<(String, &'static [f64])> {
    LATENCY_HISTOGRAMS
        .iter()
        .map(|m| (stat_prefix(m), &LATENCY_BUCKETS_US[..]))
        .collect()
}

/// The value of [`ISTIO_HISTOGRAM_BUCKETS_ANNOTATION`] for a proxy running the filter:
/// `{"wasmcustom.mlep_model_latency_":[25,...],"wasmcustom.mlep_overhead_latency_":[25,...]}`.
pub fn istio_histogram_buckets() -> String {
    let entries: serde_json::Map<String, serde_json::Value> = latency_bucket_prefixes()
        .into_iter()
        // Whole microseconds, written as integers (`25`, not `25.0`).
        .map(|(prefix, buckets)| {
            let whole: Vec<u64> = buckets.iter().map(|b| *b as u64).collect();
            (prefix, serde_json::json!(whole))
        })
        .collect();
    serde_json::Value::Object(entries).to_string()
}

/// The stat name the filter defines for `metric` with `labels`, in Istio's tag encoding: each
/// label is `key=.=value;.;`, values sanitized (see [`sanitize_label_value`]), inserted right
/// after [`METRIC_PREFIX`]:
/// `mlep_endpoint=.=titanic;.;namespace=.=default;.;variant=.=a;.;model=.=titanic-v1;.;code_class=.=2xx;.;requests_total`.
/// Envoy shows it as `wasmcustom.<that>`; the [`stats_tags`] regexes cut every `key=.=value;.;`
/// out of the name into a label, and what is left is exactly the metric name:
/// `mlep_requests_total{endpoint="titanic",...}`. (Envoy removes a tag's capture group and
/// nothing else: tags placed after the name would leave a trailing `.` that Prometheus output
/// turns into `_`; measured with Envoy 1.40.)
///
/// The latency histograms carry their labels before the unit instead
/// (`mlep_model_latency_endpoint=.=titanic;.;...;.;us`): the bare name comes out the same, and
/// every raw name of one histogram starts with the same prefix ([`stat_prefix`]), which
/// is what bucket settings select by.
pub fn stat_name(metric: &str, labels: &[(&str, &str)]) -> String {
    let (head, tail) = metric
        .split_at_checked(label_position(metric))
        .unwrap_or(("", metric));
    let mut out = String::with_capacity(metric.len() + labels.len() * 28);
    out.push_str(head);
    for (k, v) in labels {
        out.push_str(k);
        out.push_str(TAG_VALUE_SEPARATOR);
        out.push_str(&sanitize_label_value(v));
        out.push_str(TAG_FIELD_SEPARATOR);
    }
    out.push_str(tail);
    out
}

/// Istio's tag encoding inside stat names (`key=.=value;.;`): the form its bootstrap template
/// (`tools/packaging/common/envoy_bootstrap.json`) writes a regex for, per name in
/// `meshConfig.defaultConfig.extraStatTags`.
pub const TAG_VALUE_SEPARATOR: &str = "=.=";
pub const TAG_FIELD_SEPARATOR: &str = ";.;";

/// One Envoy `stats_config.stats_tags` entry (`envoy.config.metrics.v3.TagSpecifier`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsTag {
    pub tag_name: String,
    pub regex: String,
}

/// The `stats_config.stats_tags` that turn the filter's encoded stat names into Prometheus
/// labels: for each label key, the very regex Istio's bootstrap renders for an
/// `extraStatTags` entry of that name, `(key=\.=(.*?);\.;)`. Envoy cuts the first capture
/// group out of the name and takes the second as the value. Local mode writes these into its
/// bootstrap; in a mesh, `meshConfig.defaultConfig.extraStatTags: [ALL_LABELS...]` makes
/// istio-agent write the same ones (docs/operator.md, "Metrics"). Values are sanitized to
/// `[A-Za-z0-9_-]`, so one can never contain a separator or pose as another key.
pub fn stats_tags() -> Vec<StatsTag> {
    ALL_LABELS
        .iter()
        .map(|key| StatsTag {
            tag_name: (*key).to_owned(),
            regex: format!(r"({key}=\.=(.*?);\.;)"),
        })
        .collect()
}

/// A closed set of label values: each value knows its label text and its index, so a table
/// of metric ids built by iterating [`ALL`](CodeClass::ALL) is indexed by the value itself,
/// never by a position kept in step with a separate array by hand.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $value:ident => $label:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $value),+ }

        impl $name {
            /// Every value, in index order.
            pub const ALL: [$name; [$($label),+].len()] = [$($name::$value),+];
            /// How many values there are (the length of a per-value id table).
            pub const COUNT: usize = Self::ALL.len();
            /// The label value as it appears in Prometheus.
            pub const fn label(self) -> &'static str {
                match self { $($name::$value => $label),+ }
            }
            /// Position in [`Self::ALL`]: the index into a per-value id table.
            pub const fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label_values! {
    /// `mlep_requests_total{code_class}`.
    CodeClass {
        Informational => "1xx",
        Success => "2xx",
        Redirect => "3xx",
        ClientError => "4xx",
        ServerError => "5xx",
        /// No status, or one outside 100..=599.
        Other => "other",
    }
}

label_values! {
    /// `mlep_assignments_total{reason}`: why a request got its variant.
    Reason {
        Sticky => "sticky",
        Target => "target",
        Random => "random",
    }
}

label_values! {
    /// `mlep_shadow_requests_total{outcome}`.
    Outcome {
        Ok => "ok",
        Error => "error",
        Timeout => "timeout",
        Skipped => "skipped",
    }
}

label_values! {
    /// `mlep_wake_holds_total{outcome}`.
    HoldOutcome {
        /// The variant woke and the request went on to it.
        Woken => "woken",
        /// The hold's time ran out: answered 503.
        TimedOut => "timed_out",
        /// The control plane refused or failed the wake call in a row: answered 503.
        Refused => "refused",
        /// The request ended while held (the client went away).
        Abandoned => "abandoned",
    }
}

label_values! {
    /// `mlep_capture_records_total{outcome}`.
    CaptureOutcome {
        /// The sink took it (2xx).
        Sent => "sent",
        /// The VM's capture queue was full: dropped without a call.
        QueueFull => "queue_full",
        /// The sink refused it, timed out or could not be reached.
        SinkError => "sink_error",
    }
}

label_values! {
    /// `mlep_shadow_agreement_total{result}`.
    Agreement {
        Match => "match",
        Mismatch => "mismatch",
    }
}

impl CodeClass {
    /// The class of an HTTP status: `1xx`..`5xx`, anything else `other`.
    pub const fn of(status: u32) -> Self {
        match status {
            100..=199 => Self::Informational,
            200..=299 => Self::Success,
            300..=399 => Self::Redirect,
            400..=499 => Self::ClientError,
            500..=599 => Self::ServerError,
            _ => Self::Other,
        }
    }
}

impl Agreement {
    pub const fn of(matched: bool) -> Self {
        if matched {
            Self::Match
        } else {
            Self::Mismatch
        }
    }
}

/// A label value in Prometheus' text format: backslash, double quote and newline escaped.
pub fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `code_class` label of an HTTP status: `1xx`..`5xx`, anything else `other`.
pub fn code_class(status: u32) -> &'static str {
    CodeClass::of(status).label()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Apply the tag regexes the way Envoy does (a tiny pair walker standing in for the regex
    /// engine, which the Envoy integration test exercises for real).
    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn stat_names_are_pairs_with_sanitized_values() {
        let n = stat_name(
            REQUESTS_TOTAL,
            &[
                ("endpoint", "titanic"),
                ("model", "m.v1/2"),
                ("code_class", "2xx"),
            ],
        );
        assert_eq!(
            n,
            "mlep_endpoint=.=titanic;.;model=.=m_v1_2;.;code_class=.=2xx;.;requests_total"
        );
        assert_eq!(sanitize_label_value(""), "_");
    }

    /// Istio's template line is `"regex": "({{ $tag }}=\\.=(.*?);\\.;)"` (JSON-escaped):
    /// the regex we write locally must be the one istio-agent writes from `extraStatTags`.
    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn one_stats_tag_per_label_in_istios_extra_stat_tags_form() {
        let tags = stats_tags();
        assert_eq!(tags.len(), ALL_LABELS.len());
        for (t, key) in tags.iter().zip(ALL_LABELS) {
            assert_eq!(t.tag_name, key);
            let istio_json = format!(r#""({key}=\\.=(.*?);\\.;)""#);
            let istio: String = serde_json::from_str(&istio_json).unwrap();
            assert_eq!(t.regex, istio);
        }
    }

    /// Cut every `key=.=value;.;` out the way Envoy applies the tag regexes: the labels come
    /// out in order and the rest is the bare metric name.
    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn cutting_the_tags_out_leaves_the_metric_name() {
        let n = stat_name(
            SHADOW_AGREEMENT_TOTAL,
            &[("endpoint", "e"), ("variant", "model"), ("result", "match")],
        );
        let mut rest = n.clone();
        let mut found = Vec::new();
        for key in ALL_LABELS {
            let open = format!("{key}{TAG_VALUE_SEPARATOR}");
            if let Some(i) = rest.find(&open) {
                let v0 = i + open.len();
                let end = v0 + rest[v0..].find(TAG_FIELD_SEPARATOR).unwrap();
                found.push((key, rest[v0..end].to_owned()));
                rest.replace_range(i..end + TAG_FIELD_SEPARATOR.len(), "");
            }
        }
        assert_eq!(rest, SHADOW_AGREEMENT_TOTAL);
        assert_eq!(
            found,
            [
                ("endpoint", "e".to_owned()),
                ("variant", "model".to_owned()),
                ("result", "match".to_owned())
            ]
        );
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn every_label_value_sits_at_its_own_index() {
        fn check<T: Copy + PartialEq + std::fmt::Debug>(all: &[T], index: fn(T) -> usize) {
            for (i, v) in all.iter().enumerate() {
                assert_eq!(index(*v), i, "{v:?}");
            }
        }
        check(&CodeClass::ALL, CodeClass::index);
        check(&Reason::ALL, Reason::index);
        check(&Outcome::ALL, Outcome::index);
        check(&Agreement::ALL, Agreement::index);
        assert_eq!(Reason::Random.label(), "random");
        assert_eq!(Outcome::Skipped.label(), "skipped");
        assert_eq!(Agreement::of(false).label(), "mismatch");
    }

    /// The latency histograms' names are pinned (dashboards and alerts use them), their raw
    /// stat names share one prefix per histogram whatever the labels, and cutting the tags
    /// out still leaves the bare name.
    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn latency_histograms_keep_their_names_and_a_prefix_per_histogram() {
        assert_eq!(MODEL_LATENCY_US, "mlep_model_latency_us");
        assert_eq!(OVERHEAD_LATENCY_US, "mlep_overhead_latency_us");
        let n = stat_name(
            MODEL_LATENCY_US,
            &[("endpoint", "e.1"), ("variant", "a"), ("model", "m")],
        );
        assert_eq!(
            n,
            "mlep_model_latency_endpoint=.=e_1;.;variant=.=a;.;model=.=m;.;us"
        );
        let prefix = stat_prefix(MODEL_LATENCY_US);
        assert_eq!(prefix, "wasmcustom.mlep_model_latency_");
        assert!(format!("{ENVOY_WASM_STAT_PREFIX}{n}").starts_with(&prefix));
        // Neither prefix selects another metric's stats (the ms histogram keeps Envoy's buckets).
        let other = stat_name(REQUEST_DURATION_MS, &[("endpoint", "e")]);
        for (p, _) in latency_bucket_prefixes() {
            assert!(
                !format!("{ENVOY_WASM_STAT_PREFIX}{other}").starts_with(&p),
                "{p}"
            );
        }
        let bare = n
            .replace("endpoint=.=e_1;.;", "")
            .replace("variant=.=a;.;", "")
            .replace("model=.=m;.;", "");
        assert_eq!(bare, MODEL_LATENCY_US);
        assert_eq!(stat_prefix(REQUESTS_TOTAL), "wasmcustom.mlep_");
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn latency_buckets_ascend_and_the_istio_annotation_names_both_prefixes() {
        assert!(LATENCY_BUCKETS_US.windows(2).all(|w| w[0] < w[1]));
        let v: serde_json::Value = serde_json::from_str(&istio_histogram_buckets()).unwrap();
        for m in LATENCY_HISTOGRAMS {
            let b = v[stat_prefix(m)].as_array().unwrap();
            assert_eq!(b.len(), LATENCY_BUCKETS_US.len());
            assert_eq!(b[0], serde_json::json!(25));
            assert_eq!(b[19], serde_json::json!(60_000_000));
        }
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn code_classes_cover_all_statuses() {
        assert_eq!(code_class(200), "2xx");
        assert_eq!(code_class(404), "4xx");
        assert_eq!(code_class(503), "5xx");
        assert_eq!(code_class(0), "other");
        assert_eq!(code_class(99), "other");
    }
}
