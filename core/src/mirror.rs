//! Envoy's own request mirroring for the copies no one compares (issue 22).
//!
//! A copy whose answer is not compared needs no answer read and no Wasm: Envoy's native
//! `request_mirror_policies` copies the request from the router, at ~120k instructions per copy
//! against ~170k for the least a Wasm-side copy can do (docs/filter.md "Shadowing"). So wherever
//! routes can carry a mirror policy (local mode's bootstrap, the EnvoyFilter wiring's
//! `HTTP_ROUTE` patches):
//! - a shadow with `compare: Off` leaves the filter config ([`NativeMirror::take`]) and becomes
//!   one policy ([`NativeMirror::policy`]) on every route of the endpoint's virtual hosts;
//! - a shadow comparing a sample (`comparePercent` below 100) stays the filter's, which copies
//!   and compares the sample, and every header route gets a mirroring twin (the same route,
//!   matching [`mlep_contract::mirror_twin`] of its routed value, the policy at 100 %): the
//!   filter sends a copy it did not draw for comparison there, so Envoy's mirror sends it. One
//!   draw, the filter's, decides both, so no request is copied twice (Envoy's own
//!   `runtime_fraction` draw is on the stream's random id, which Wasm cannot read).
//!
//! The WasmPlugin wiring cannot patch routes, so there the filter keeps copying.
//!
//! What differs from the filter's copy (docs/filter.md "Native mirror"): Envoy streams the body,
//! so `maxBodyBytes` does not apply; the copy's timeout is the route's; outcomes are the shadow
//! cluster's own stats, not `mlep_shadow_requests_total`.

use mlep_contract::{CompareMode, ShadowConfig};
use serde_json::{json, Value};

/// Headers a copy never carries unless the shadow forwards credentials: the filter's list
/// (`filter/src/shadow.rs`).
pub const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

/// An endpoint's shadow as Envoy's mirror: the routes it is on ([`MirrorOn`]) copy `percent`
/// of their requests to `cluster`.
#[derive(Clone, Debug, PartialEq)]
pub struct NativeMirror {
    /// The shadow's Envoy cluster (the filter config's `shadow.cluster`).
    pub cluster: String,
    /// The copies' `:authority`; `None`: Envoy's default (the request's, `-shadow` appended).
    pub authority: Option<String>,
    /// Share of the requests of the routes carrying it, 0..=100.
    pub percent: f64,
    pub forward_credentials: bool,
    pub on: MirrorOn,
}

/// Which routes of an endpoint carry its [`NativeMirror`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorOn {
    /// Every route (`compare: Off`: the filter has no part in the shadow).
    EveryRoute,
    /// Only the header routes' mirroring twins, at 100 %: the filter draws, and routes the
    /// copies it does not compare to a twin.
    Twins,
}

impl NativeMirror {
    /// Take what Envoy can copy out of the filter's hands, for a shadow of every variant's
    /// traffic (a BlueGreen bake's mirror of one variant stays the filter's): a shadow that
    /// compares nothing leaves the filter config; one that compares a sample stays, and when
    /// the routes have mirroring twins for it ([`ShadowConfig::mirror_routes`], set by whoever
    /// rendered the routes) the twins get Envoy's mirror. Returns the mirror Envoy's routes must
    /// then carry.
    pub fn take(shadow: &mut Option<ShadowConfig>) -> Option<NativeMirror> {
        let s = shadow.as_mut().filter(|s| s.variant.is_none())?;
        if s.compare.mode != CompareMode::Off {
            let sampled = s.compare.percent < 100.0 && s.percent > 0.0;
            s.mirror_routes &= sampled;
            if !s.mirror_routes {
                return None;
            }
            return Some(NativeMirror {
                cluster: s.cluster.clone(),
                authority: s.authority.clone(),
                percent: 100.0,
                forward_credentials: s.forward_credentials,
                on: MirrorOn::Twins,
            });
        }
        let s = shadow.take()?;
        Some(NativeMirror {
            cluster: s.cluster,
            authority: s.authority,
            percent: s.percent,
            forward_credentials: s.forward_credentials,
            on: MirrorOn::EveryRoute,
        })
    }

    /// One `envoy.config.route.v3.RouteAction.RequestMirrorPolicy` (checked with Envoy 1.40:
    /// `request_headers_mutations` applies to the copy only, `host_rewrite_literal` sets its
    /// `:authority` without the `-shadow` suffix). The share is in millionths, so fractions of
    /// a percent survive.
    pub fn policy(&self) -> Value {
        let numerator = (self.percent.clamp(0.0, 100.0) * 10_000.0).round() as u32;
        // The routing headers carry the endpoint's route key: the copy's server has no use
        // for them, and the filter's copy drops them too.
        let mut removed = vec![
            mlep_contract::metrics::VARIANT_HEADER,
            mlep_contract::metrics::MODEL_HEADER,
        ];
        if !self.forward_credentials {
            removed.extend(CREDENTIAL_HEADERS);
        }
        let mut policy = json!({
            "cluster": self.cluster,
            "runtime_fraction": {
                "default_value": { "numerator": numerator, "denominator": "MILLION" },
            },
            "request_headers_mutations": removed
                .iter()
                .map(|h| json!({ "remove": h }))
                .collect::<Vec<_>>(),
        });
        if let Some(a) = &self.authority {
            policy["host_rewrite_literal"] = json!(a);
        }
        policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlep_contract::CompareConfig;

    fn shadow(mode: CompareMode, variant: Option<&str>) -> ShadowConfig {
        ShadowConfig {
            cluster: "outbound|80||titanic-shadow.ns.svc.cluster.local".into(),
            authority: Some("titanic-shadow.ns.svc.cluster.local".into()),
            model: "m".into(),
            percent: 12.5,
            variant: variant.map(str::to_owned),
            max_body_bytes: 65_536,
            timeout_ms: 1000,
            forward_credentials: false,
            compare: CompareConfig {
                mode,
                tolerance: 0.0,
                percent: 100.0,
            },
            mirror_routes: false,
        }
    }

    #[test]
    fn only_an_uncompared_shadow_of_every_variant_becomes_envoys_mirror() {
        for mode in [CompareMode::Exact, CompareMode::Json] {
            let mut e = Some(shadow(mode, None));
            assert_eq!(NativeMirror::take(&mut e), None, "{mode:?}");
            assert!(e.is_some(), "a compared shadow stays the filter's");
        }
        let mut bake = Some(shadow(CompareMode::Off, Some("a")));
        assert_eq!(NativeMirror::take(&mut bake), None);
        assert!(bake.is_some(), "one variant's mirror stays the filter's");

        let mut e = Some(shadow(CompareMode::Off, None));
        let m = NativeMirror::take(&mut e);
        assert_eq!(e, None, "the filter no longer copies");
        assert_eq!(
            m.map(|m| (m.cluster, m.percent)),
            Some((
                "outbound|80||titanic-shadow.ns.svc.cluster.local".into(),
                12.5
            ))
        );
    }

    #[test]
    fn a_sampled_comparison_stays_the_filters_and_its_uncompared_copies_go_to_the_twins() {
        // `mirror_routes`: whoever rendered the routes gave them twins.
        let sampled = |percent: f64, compared: f64| {
            let mut s = shadow(CompareMode::Json, None);
            s.percent = percent;
            s.compare.percent = compared;
            s.mirror_routes = true;
            Some(s)
        };
        let mut e = sampled(50.0, 10.0);
        let m = NativeMirror::take(&mut e);
        assert_eq!(
            m.map(|m| (m.on, m.percent)),
            Some((MirrorOn::Twins, 100.0)),
            "the filter draws the share; a twin copies all it is sent"
        );
        assert_eq!(e.map(|s| (s.mirror_routes, s.percent)), Some((true, 50.0)));
        for (percent, compared) in [(50.0, 100.0), (0.0, 10.0)] {
            let mut e = sampled(percent, compared);
            assert_eq!(NativeMirror::take(&mut e), None, "{percent} {compared}");
            assert_eq!(
                e.map(|s| s.mirror_routes),
                Some(false),
                "no twin to send to"
            );
        }
        let mut bake = Some(shadow(CompareMode::Json, Some("a")));
        if let Some(b) = bake.as_mut() {
            b.compare.percent = 10.0;
        }
        assert_eq!(
            NativeMirror::take(&mut bake),
            None,
            "a bake's mirror is one variant's"
        );
        let mut no_twins = sampled(50.0, 10.0);
        if let Some(s) = no_twins.as_mut() {
            s.mirror_routes = false;
        }
        assert_eq!(
            NativeMirror::take(&mut no_twins),
            None,
            "routes without twins"
        );
        assert_eq!(
            no_twins.map(|s| s.mirror_routes),
            Some(false),
            "the filter copies all"
        );
    }

    #[test]
    fn the_policy_copies_its_share_in_millionths_to_the_shadow_without_credentials() {
        let mut e = Some(shadow(CompareMode::Off, None));
        let Some(mut m) = NativeMirror::take(&mut e) else {
            panic!("not native")
        };
        let p = m.policy();
        assert_eq!(
            p["cluster"],
            "outbound|80||titanic-shadow.ns.svc.cluster.local"
        );
        assert_eq!(
            p["runtime_fraction"]["default_value"],
            json!({"numerator": 125_000, "denominator": "MILLION"})
        );
        assert_eq!(
            p["host_rewrite_literal"],
            "titanic-shadow.ns.svc.cluster.local"
        );
        let removed = |p: &Value| -> Vec<String> {
            p["request_headers_mutations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["remove"].as_str().map(str::to_owned))
                .collect()
        };
        assert_eq!(
            removed(&p),
            [
                "x-mlep-variant",
                "x-mlep-model",
                "authorization",
                "cookie",
                "proxy-authorization"
            ]
        );
        m.forward_credentials = true;
        m.percent = 100.0;
        let p = m.policy();
        assert_eq!(removed(&p), ["x-mlep-variant", "x-mlep-model"]);
        assert_eq!(
            p["runtime_fraction"]["default_value"]["numerator"],
            1_000_000
        );
    }
}
