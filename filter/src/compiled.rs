//! The configuration compiled once per `on_configure`: bucket tables, the virtual host map,
//! precomputed header strings and every metric id the request path can need.

use crate::host::{MetricId, MetricKind, MetricSink};
use crate::wake::Wake;
use mlep_contract::config::DEFAULT_COOKIE_MAX_AGE_SECONDS;
use mlep_contract::metrics::{
    self as m, stat_name, Agreement, CaptureOutcome, CodeClass, HoldOutcome, Outcome, Reason,
};
use mlep_contract::{
    mirror_twin, routed_value, CompareMode, ConfigError, FilterConfig, UnknownTarget,
};
use std::collections::HashMap;
use std::rc::Rc;

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompileError {
    #[error("invalid filter configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot define metric {name}: {reason}")]
    Metric { name: String, reason: String },
}

/// Metric ids of one variant.
#[derive(Debug, Clone)]
pub struct VariantMetrics {
    /// `mlep_requests_total`, indexed by [`CodeClass::index`].
    pub requests: [MetricId; CodeClass::COUNT],
    pub duration: MetricId,
    /// `mlep_model_latency_us` and `mlep_overhead_latency_us`.
    pub model_latency: MetricId,
    pub overhead_latency: MetricId,
    /// `mlep_assignments_total`, indexed by [`Reason::index`].
    pub assignments: [MetricId; Reason::COUNT],
}

impl VariantMetrics {
    pub fn requests(&self, class: CodeClass) -> MetricId {
        self.requests[class.index()]
    }
    pub fn assignments(&self, reason: Reason) -> MetricId {
        self.assignments[reason.index()]
    }
}

/// Where a request assigned through the bucket table goes: a variant served by one model.
/// An endpoint's first entries are its variants in config order (targeting picks among them);
/// a variant with a rollout adds one more entry, after all variants, for the users it moved.
#[derive(Debug, Clone)]
pub struct Variant {
    pub name: String,
    /// The model serving this entry (data capture records name it).
    pub model: String,
    /// The value of [`m::VARIANT_HEADER`] the routes match (`mlep_contract::routed_value`).
    pub routed: String,
    /// `routed`'s mirroring twin (`mlep_contract::mirror_twin`): the same route plus Envoy's
    /// mirror, for copies not compared when the shadow has [`Shadow::mirror_routes`].
    pub routed_twin: String,
    /// What to do with [`m::MODEL_HEADER`] (only variants with a rollout touch it).
    pub model_header: ModelHeader,
    /// Whether the endpoint's shadow (if any) samples this entry's requests.
    pub mirror: bool,
    pub metrics: VariantMetrics,
    /// On a variant being rolled out: how requests targeting it by name follow the split
    /// (see [`Endpoint::targeted`]). `None` on rollout entries and variants with no rollout.
    pub rollout: Option<TargetedRollout>,
    /// The variant is asleep: its requests are held until it wakes (`crate::wake`). Shared by
    /// the variant and its rollout entry, so the VM's "awake" memory is per variant.
    pub wake: Option<Rc<Wake>>,
}

/// What a variant being rolled out needs to send targeted requests by the rollout's share.
#[derive(Debug, Clone)]
pub struct TargetedRollout {
    /// Index of the variant's rollout entry in [`Endpoint::variants`].
    pub entry: usize,
    /// The buckets the variant owns, ascending.
    pub owned: Vec<u16>,
}

/// The model header of requests assigned to a [`Variant`] entry. A rollout's route sends a
/// request of the variant to the new model's upstream when the header carries the new model
/// with the endpoint's route key (`mlep_contract::routed_value`), so the filter sets it exactly
/// on moved users and strips it from the others. Variants with no rollout leave it alone: a
/// client-sent value cannot carry the key, so no route obeys it, and the request path stays
/// one host call shorter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelHeader {
    Untouched,
    Remove,
    Set(String),
}

#[derive(Debug, Clone)]
pub struct Shadow {
    pub cluster: String,
    pub authority: String,
    /// Sampling threshold out of 1,000,000.
    pub per_million: u64,
    /// As configured; read it through [`Shadow::body_cap`].
    pub max_body_bytes: usize,
    pub timeout_ms: u32,
    pub forward_credentials: bool,
    pub compare: CompareMode,
    pub tolerance: f64,
    /// Share of the copies compared, out of 1,000,000.
    pub compare_per_million: u64,
    /// A copy not compared goes through the variant route's mirroring twin (Envoy copies it),
    /// and the shadow's Envoy cluster counts the outcomes (`mlep_contract::ShadowConfig`).
    pub mirror_routes: bool,
    /// `mlep_shadow_requests_total`, indexed by [`Outcome::index`].
    pub outcomes: [MetricId; Outcome::COUNT],
    /// `mlep_shadow_agreement_total`, indexed by [`Agreement::index`].
    pub agreement: [MetricId; Agreement::COUNT],
}

impl Shadow {
    /// The largest body collected for this shadow (request copy, primary answer, shadow
    /// answer): `maxBodyBytes`, which the contract caps at `MAX_SHADOW_BODY_BYTES`, and
    /// defensively never more than the VM's whole budget ([`crate::shadow::MAX_HUB_BYTES`]).
    pub fn body_cap(&self) -> usize {
        self.max_body_bytes.min(crate::shadow::MAX_HUB_BYTES)
    }

    /// Whether a copy is compared: the sample is drawn per copy, so the compared ones are a
    /// uniform share of the mirrored traffic.
    pub fn draw_compared(&self, random: impl FnOnce() -> u64) -> bool {
        self.compare != CompareMode::Off
            && (self.compare_per_million >= 1_000_000
                || (self.compare_per_million > 0
                    && random() % 1_000_000 < self.compare_per_million))
    }

    /// Whether this filter counts `outcome` of a copy that reached the host: with
    /// [`Self::mirror_routes`] the shadow's Envoy cluster counts every copy it sent, so only a
    /// copy never sent (skipped; a send the host refused is counted by the caller) is the
    /// filter's.
    pub fn counts(&self, outcome: Outcome) -> bool {
        !self.mirror_routes || outcome == Outcome::Skipped
    }

    pub fn outcome(&self, outcome: Outcome) -> MetricId {
        self.outcomes[outcome.index()]
    }
    pub fn agreement(&self, result: Agreement) -> MetricId {
        self.agreement[result.index()]
    }
}

/// An endpoint's data capture (`mlep_contract::CaptureConfig`), compiled.
#[derive(Debug, Clone)]
pub struct Capture {
    pub cluster: String,
    pub authority: String,
    /// Sampling threshold out of 1,000,000.
    pub per_million: u64,
    pub request: bool,
    pub response: bool,
    pub max_payload_bytes: usize,
    pub content_types: Vec<String>,
    pub timeout_ms: u32,
    /// `mlep_capture_records_total`, indexed by [`CaptureOutcome::index`].
    pub outcomes: [MetricId; CaptureOutcome::COUNT],
}

impl Capture {
    pub fn outcome(&self, outcome: CaptureOutcome) -> MetricId {
        self.outcomes[outcome.index()]
    }
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub salt: String,
    pub variants: Vec<Variant>,
    /// `bucket -> index into variants` (see `Allocation::to_table`); buckets a rollout moved
    /// point at the variant's rollout entry.
    pub table: Vec<u8>,
    /// `None` when targeting is off.
    pub target_header: Option<String>,
    pub reject_unknown_target: bool,
    pub sticky_header: Option<String>,
    pub cookie_name: String,
    /// `; Path=/; Max-Age=<n>; HttpOnly; SameSite=Lax`
    pub cookie_attributes: String,
    /// `"validVariants":[...]` rendered once for 400 replies.
    pub valid_variants_json: String,
    pub shadow: Option<Shadow>,
    pub capture: Option<Capture>,
}

impl Endpoint {
    /// The entry serving a request that targets variant `v` by name, whose sticky key hashes
    /// to `bucket` (a keyless request passes a random bucket). With no rollout on `v`, `v`.
    /// During a rollout the request follows the split by the same share as `v`'s own users:
    /// a key in one of `v`'s buckets gets exactly what it gets untargeted; any other key
    /// stands for `v`'s owned bucket number `bucket mod owned`, and is moved iff that bucket
    /// is. Moved sets only grow while the allocation is unchanged, so a targeted user who
    /// moved stays moved as the share grows, and a rollback (no moved bucket) returns all.
    pub fn targeted(&self, v: usize, bucket: u32) -> usize {
        let Some(r) = self.variants.get(v).and_then(|x| x.rollout.as_ref()) else {
            return v;
        };
        let entry_of = |b: usize| self.table.get(b).map(|e| usize::from(*e));
        match entry_of(bucket as usize) {
            Some(e) if e == v || e == r.entry => e,
            _ => r
                .owned
                .get(bucket as usize % r.owned.len().max(1))
                .and_then(|b| entry_of(usize::from(*b)))
                .filter(|e| *e == r.entry)
                .unwrap_or(v),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Compiled {
    pub endpoints: Vec<Endpoint>,
    /// Envoy virtual host name -> endpoint index (`EndpointConfig::virtual_hosts`).
    pub virtual_hosts: HashMap<String, usize>,
}

/// One metric id per value of a label enum, in index order: `ids[v.index()]` is `v`'s.
fn per_value<const N: usize, T: Copy>(
    all: [T; N],
    mut define: impl FnMut(T) -> Result<MetricId, CompileError>,
) -> Result<[MetricId; N], CompileError> {
    let mut ids = [0; N];
    for (slot, v) in ids.iter_mut().zip(all) {
        *slot = define(v)?;
    }
    Ok(ids)
}

impl Compiled {
    /// Parse, validate and compile `bytes`, defining every metric through `sink`.
    pub fn from_json(bytes: &[u8], sink: &mut dyn MetricSink) -> Result<Self, CompileError> {
        let cfg = FilterConfig::from_json(bytes)?;
        Self::compile(&cfg, sink)
    }

    pub fn compile(cfg: &FilterConfig, sink: &mut dyn MetricSink) -> Result<Self, CompileError> {
        let mut define = |kind, name: String| {
            sink.define(kind, &name)
                .map_err(|reason| CompileError::Metric { name, reason })
        };
        let mut out = Compiled::default();
        for ep in &cfg.endpoints {
            let base = |variant: &str, model: &str| {
                vec![
                    (m::LABEL_ENDPOINT, ep.name.clone()),
                    (m::LABEL_NAMESPACE, ep.namespace.clone()),
                    (m::LABEL_VARIANT, variant.to_owned()),
                    (m::LABEL_MODEL, model.to_owned()),
                ]
            };
            let name_of = |metric: &str, labels: &[(&str, String)], extra: Option<(&str, &str)>| {
                let mut l: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                if let Some(e) = extra {
                    l.push(e);
                }
                stat_name(metric, &l)
            };
            // `asleep`: the variant is marked asleep and defines `mlep_wake_holds_total` too
            // (Envoy keeps a stat once defined, so its series outlive the mark).
            let mut variant_metrics = |variant: &str, model: &str, asleep: bool| {
                let labels = base(variant, model);
                let requests = per_value(CodeClass::ALL, |cc| {
                    define(
                        MetricKind::Counter,
                        name_of(
                            m::REQUESTS_TOTAL,
                            &labels,
                            Some((m::LABEL_CODE_CLASS, cc.label())),
                        ),
                    )
                })?;
                let duration = define(
                    MetricKind::Histogram,
                    name_of(m::REQUEST_DURATION_MS, &labels, None),
                )?;
                let model_latency = define(
                    MetricKind::Histogram,
                    name_of(m::MODEL_LATENCY_US, &labels, None),
                )?;
                let overhead_latency = define(
                    MetricKind::Histogram,
                    name_of(m::OVERHEAD_LATENCY_US, &labels, None),
                )?;
                let assignments = per_value(Reason::ALL, |r| {
                    define(
                        MetricKind::Counter,
                        name_of(
                            m::ASSIGNMENTS_TOTAL,
                            &labels,
                            Some((m::LABEL_REASON, r.label())),
                        ),
                    )
                })?;
                let holds = match asleep {
                    true => Some(per_value(HoldOutcome::ALL, |o| {
                        define(
                            MetricKind::Counter,
                            name_of(
                                m::WAKE_HOLDS_TOTAL,
                                &labels,
                                Some((m::LABEL_OUTCOME, o.label())),
                            ),
                        )
                    })?),
                    false => None,
                };
                Ok::<_, CompileError>((
                    VariantMetrics {
                        requests,
                        duration,
                        model_latency,
                        overhead_latency,
                        assignments,
                    },
                    holds,
                ))
            };
            let mut variants = Vec::with_capacity(ep.variants.len());
            for v in &ep.variants {
                let (metrics, holds) = variant_metrics(&v.name, &v.model, v.asleep.is_some())?;
                let routed = routed_value(&v.name, &ep.route_key);
                variants.push(Variant {
                    name: v.name.clone(),
                    model: v.model.clone(),
                    routed_twin: mirror_twin(&routed),
                    routed,
                    model_header: match v.rollout {
                        Some(_) => ModelHeader::Remove,
                        None => ModelHeader::Untouched,
                    },
                    mirror: ep
                        .shadow
                        .as_ref()
                        .is_some_and(|s| s.variant.as_ref().is_none_or(|only| *only == v.name)),
                    metrics,
                    rollout: None,
                    wake: match (&v.asleep, holds) {
                        (Some(w), Some(ids)) => Some(Rc::new(Wake::new(&ep.name, &v.name, w, ids))),
                        _ => None,
                    },
                });
            }
            let names: Vec<&str> = ep.variants.iter().map(|v| v.name.as_str()).collect();
            let mut table = ep.allocation.to_table(&names);
            // Rollout entries follow the variants; at most MAX_VARIANTS * 2 = 128 entries, so
            // indices fit the u8 table.
            for (j, v) in ep.variants.iter().enumerate() {
                let Some(r) = &v.rollout else { continue };
                let index = variants.len() as u8;
                let owned = (0..table.len())
                    .filter(|b| table.get(*b).is_some_and(|e| usize::from(*e) == j))
                    .filter_map(|b| u16::try_from(b).ok())
                    .collect();
                if let Some(own) = variants.get_mut(j) {
                    own.rollout = Some(TargetedRollout {
                        entry: usize::from(index),
                        owned,
                    });
                }
                let routed = routed_value(&v.name, &ep.route_key);
                variants.push(Variant {
                    name: v.name.clone(),
                    model: r.model.clone(),
                    routed_twin: mirror_twin(&routed),
                    routed,
                    model_header: ModelHeader::Set(routed_value(&r.model, &ep.route_key)),
                    mirror: ep.shadow.as_ref().is_some_and(|s| s.variant.is_none()),
                    metrics: variant_metrics(&v.name, &r.model, false)?.0,
                    rollout: None,
                    wake: variants.get(j).and_then(|own| own.wake.clone()),
                });
                for span in &r.buckets {
                    let (start, end) = (span.start as usize, span.end as usize);
                    if let Some(cells) = table.get_mut(start..end) {
                        cells.fill(index);
                    }
                }
            }
            let shadow = match &ep.shadow {
                None => None,
                Some(s) => {
                    let labels = base(m::SHADOW_VARIANT_LABEL, &s.model);
                    let outcomes = per_value(Outcome::ALL, |o| {
                        define(
                            MetricKind::Counter,
                            name_of(
                                m::SHADOW_REQUESTS_TOTAL,
                                &labels,
                                Some((m::LABEL_OUTCOME, o.label())),
                            ),
                        )
                    })?;
                    let agreement = per_value(Agreement::ALL, |r| {
                        define(
                            MetricKind::Counter,
                            name_of(
                                m::SHADOW_AGREEMENT_TOTAL,
                                &labels,
                                Some((m::LABEL_RESULT, r.label())),
                            ),
                        )
                    })?;
                    Some(Shadow {
                        cluster: s.cluster.clone(),
                        authority: s.authority.clone().unwrap_or_else(|| s.cluster.clone()),
                        // percent is validated to 0..=100, so this is 0..=1,000,000.
                        per_million: (s.percent * 10_000.0).round() as u64,
                        max_body_bytes: s.max_body_bytes as usize,
                        timeout_ms: s.timeout_ms,
                        forward_credentials: s.forward_credentials,
                        compare: s.compare.mode,
                        tolerance: s.compare.tolerance,
                        // validated to 0..=100 as well.
                        compare_per_million: (s.compare.percent * 10_000.0).round() as u64,
                        mirror_routes: s.mirror_routes,
                        outcomes,
                        agreement,
                    })
                }
            };
            let capture = match &ep.capture {
                None => None,
                Some(cc) => {
                    let labels = [
                        (m::LABEL_ENDPOINT, ep.name.as_str()),
                        (m::LABEL_NAMESPACE, ep.namespace.as_str()),
                    ];
                    let outcomes = per_value(CaptureOutcome::ALL, |o| {
                        let mut l = labels.to_vec();
                        l.push((m::LABEL_OUTCOME, o.label()));
                        define(MetricKind::Counter, stat_name(m::CAPTURE_RECORDS_TOTAL, &l))
                    })?;
                    Some(Capture {
                        cluster: cc.cluster.clone(),
                        authority: cc.authority.clone().unwrap_or_else(|| cc.cluster.clone()),
                        // percent is validated to 0..=100.
                        per_million: (cc.percent * 10_000.0).round() as u64,
                        request: cc.request,
                        response: cc.response,
                        max_payload_bytes: cc.max_payload_bytes as usize,
                        content_types: cc.content_types.clone(),
                        timeout_ms: cc.timeout_ms,
                        outcomes,
                    })
                }
            };
            let r = &ep.routing;
            let max_age = r
                .sticky
                .cookie_max_age_seconds
                .unwrap_or(DEFAULT_COOKIE_MAX_AGE_SECONDS);
            out.endpoints.push(Endpoint {
                name: ep.name.clone(),
                salt: ep.salt(),
                table,
                target_header: r.allow_targeting.then(|| r.target_header.clone()),
                reject_unknown_target: r.unknown_target == UnknownTarget::Reject,
                sticky_header: r.sticky.header.clone(),
                cookie_name: ep.cookie_name(),
                cookie_attributes: format!("; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax"),
                valid_variants_json: serde_json::to_string(&names)
                    .unwrap_or_else(|_| "[]".to_owned()),
                variants,
                shadow,
                capture,
            });
        }
        out.virtual_hosts = cfg
            .endpoints
            .iter()
            .enumerate()
            .flat_map(|(i, ep)| ep.virtual_hosts.iter().map(move |v| (v.clone(), i)))
            .collect();
        Ok(out)
    }

    /// The endpoint served on the Envoy virtual host named `vhost` (the route Envoy chose for
    /// the request, `xds.virtual_host_name`); `None`: not an endpoint's request.
    pub fn endpoint_for(&self, vhost: &str) -> Option<usize> {
        self.virtual_hosts.get(vhost).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemHost;

    pub(crate) const EXAMPLE: &str = include_str!("../../examples/filter-config.json");

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn compiling_defines_every_label_combination_up_front() {
        let mut host = MemHost::default();
        let c = Compiled::from_json(EXAMPLE.as_bytes(), &mut host).unwrap();
        // 2 variants x (6 code classes + 3 histograms + 3 reasons) + 4 outcomes + 2 results.
        assert_eq!(host.names.len(), 2 * 12 + 6);
        assert!(host.names.contains(
            &"mlep_overhead_latency_endpoint=.=titanic;.;namespace=.=default;.;variant=.=b;.;model=.=titanic-v2;.;us".to_owned()
        ));
        assert!(host.names.contains(
            &"mlep_endpoint=.=titanic;.;namespace=.=default;.;variant=.=a;.;model=.=titanic-v1;.;code_class=.=2xx;.;requests_total".to_owned()
        ));
        assert!(host.names.contains(
            &"mlep_endpoint=.=titanic;.;namespace=.=default;.;variant=.=shadow;.;model=.=titanic-v2;.;result=.=match;.;shadow_agreement_total"
                .to_owned()
        ));
        assert_eq!(c.endpoints[0].table.len(), 10_000);
        assert_eq!(c.endpoints[0].shadow.as_ref().unwrap().per_million, 100_000);
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn an_endpoint_is_known_by_its_virtual_hosts_exactly() {
        let c = Compiled::from_json(EXAMPLE.as_bytes(), &mut MemHost::default()).unwrap();
        assert_eq!(c.endpoint_for("titanic.example.com:80"), Some(0));
        assert_eq!(
            c.endpoint_for("titanic.default.svc.cluster.local:80"),
            Some(0)
        );
        // The route decides, not the name a client writes: no derived or partial matches.
        assert_eq!(c.endpoint_for("titanic.example.com"), None);
        assert_eq!(c.endpoint_for("titanic.other.svc.cluster.local:80"), None);
        assert_eq!(c.endpoint_for("Titanic.Example.com:80"), None);
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn routed_values_carry_the_route_key() {
        let c = Compiled::from_json(EXAMPLE.as_bytes(), &mut MemHost::default()).unwrap();
        assert_eq!(
            c.endpoints[0].variants[0].routed,
            "a.Zm9yLXRoZS1leGFtcGxlLW9ubHk"
        );
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn an_invalid_config_is_refused_naming_the_field() {
        let cfg = EXAMPLE.replace("\"weight\": 20", "\"weight\": 30");
        let e = Compiled::from_json(cfg.as_bytes(), &mut MemHost::default()).unwrap_err();
        assert!(e.to_string().contains("endpoints[0].variants"), "{e}");
    }
}
