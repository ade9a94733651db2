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
/// Gauge: the filter VM's linear memory in bytes (Wasm memory never shrinks, so this shows
/// the high-water mark), set every second by worker VMs (with several workers, the last one
/// to report).
pub const VM_MEMORY_BYTES: &str = "mlep_vm_memory_bytes";

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

/// The stat name the filter defines for `metric` with `labels`: the metric name followed by
/// `.key.value` pairs, values sanitized (see [`sanitize_label_value`]):
/// `mlep_requests_total.endpoint.titanic.namespace.default.variant.a.model.titanic-v1.code_class.2xx`.
/// Envoy shows it as `wasmcustom.<that>`; the [`stats_tags`] regexes turn each pair into a
/// Prometheus label, leaving `mlep_requests_total{endpoint="titanic",...}`.
pub fn stat_name(metric: &str, labels: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(metric.len() + labels.len() * 24);
    out.push_str(metric);
    for (k, v) in labels {
        out.push('.');
        out.push_str(k);
        out.push('.');
        out.push_str(&sanitize_label_value(v));
    }
    out
}

/// One Envoy `stats_config.stats_tags` entry (`envoy.config.metrics.v3.TagSpecifier`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsTag {
    pub tag_name: String,
    pub regex: String,
}

/// The `stats_config.stats_tags` that turn the filter's encoded stat names into Prometheus
/// labels. Envoy runs every regex over the full stat name (`wasmcustom.mlep_...`); the first
/// capture group is cut out of the name and the second becomes the tag value. The regexes
/// walk the name in `.key.value` pairs from the metric name on, so a value that happens to
/// equal a key (a variant called `model`) cannot be mistaken for one. They only match names
/// starting `wasmcustom.mlep_`, so no other Envoy stat is touched. RE2 and ECMAScript agree
/// on this syntax (no look-around, no back-references).
pub fn stats_tags() -> Vec<StatsTag> {
    ALL_LABELS
        .iter()
        .map(|key| StatsTag {
            tag_name: (*key).to_owned(),
            regex: format!(r"^wasmcustom\.mlep_[a-z_]+(?:\.[a-z_]+\.[A-Za-z0-9_-]+)*?(\.{key}\.([A-Za-z0-9_-]+))"),
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
            "mlep_requests_total.endpoint.titanic.model.m_v1_2.code_class.2xx"
        );
        assert_eq!(sanitize_label_value(""), "_");
    }

    #[test]
    fn one_stats_tag_per_label_anchored_on_the_wasm_prefix() {
        let tags = stats_tags();
        assert_eq!(tags.len(), ALL_LABELS.len());
        for t in &tags {
            assert!(t.regex.starts_with(r"^wasmcustom\.mlep_"), "{}", t.regex);
            assert!(
                t.regex.contains(&format!(r"(\.{}\.(", t.tag_name)),
                "{}",
                t.regex
            );
        }
    }

    #[test]
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

    #[test]
    fn code_classes_cover_all_statuses() {
        assert_eq!(code_class(200), "2xx");
        assert_eq!(code_class(404), "4xx");
        assert_eq!(code_class(503), "5xx");
        assert_eq!(code_class(0), "other");
        assert_eq!(code_class(99), "other");
    }
}
