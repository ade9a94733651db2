//! The filter configuration's unit tests.

use super::*;

/// A float in a config (a shadow's tolerance) reads back as the f64 written: serde_json's
/// `float_roundtrip` (fuzz/fuzz_targets/filter_config.rs found `1e-60` -> `1.0000000000000001e-60`).
#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn config_floats_round_trip_exactly() {
    for text in ["1e-60", "0.1", "1e-6", "123456.789e-3"] {
        let v: f64 = serde_json::from_str(text).unwrap_or(f64::NAN);
        let again: f64 = serde_json::to_string(&v)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(f64::NAN);
        assert_eq!(v.to_bits(), again.to_bits(), "{text}");
    }
}

fn example() -> &'static str {
    include_str!("../../../examples/filter-config.json")
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn documented_example_config_is_valid() {
    let cfg = FilterConfig::from_json(example().as_bytes()).unwrap();
    assert_eq!(cfg.endpoints[0].variants.len(), 2);
    assert_eq!(cfg.endpoints[0].cookie_name(), "mlep-titanic");
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn config_round_trips_through_json() {
    let cfg = FilterConfig::from_json(example().as_bytes()).unwrap();
    let again = FilterConfig::from_json(&serde_json::to_vec(&cfg).unwrap()).unwrap();
    assert_eq!(cfg, again);
}

fn with(f: impl FnOnce(&mut serde_json::Value)) -> Result<FilterConfig, ConfigError> {
    let mut v: serde_json::Value = serde_json::from_str(example()).unwrap();
    f(&mut v);
    FilterConfig::from_json(&serde_json::to_vec(&v).unwrap())
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn errors_name_the_offending_field() {
    let e = with(|v| v["endpoints"][0]["variants"][1]["weight"] = 30.into()).unwrap_err();
    assert_eq!(e.field, "endpoints[0].variants");
    assert!(e.message.contains("sum to 110"), "{e}");
    let e = with(|v| v["endpoints"][0]["variants"][1]["name"] = "a".into()).unwrap_err();
    assert_eq!(e.field, "endpoints[0].variants[1].name");
    let e = with(|v| v["endpoints"][0]["variants"][1]["name"] = "B!".into()).unwrap_err();
    assert_eq!(e.field, "endpoints[0].variants[1].name");
    let e = with(|v| v["endpoints"][0]["shadow"]["percent"] = 101.into()).unwrap_err();
    assert_eq!(e.field, "endpoints[0].shadow.percent");
    let e =
        with(|v| v["endpoints"][0]["routing"]["sticky"]["header"] = "X User".into()).unwrap_err();
    assert_eq!(e.field, "endpoints[0].routing.sticky.header");
    let e = with(|v| v["version"] = 2.into()).unwrap_err();
    assert_eq!(e.field, "version");
    let e = with(|v| v["endpoints"][0]["allocation"][0]["end"] = 7000.into()).unwrap_err();
    assert_eq!(e.field, "endpoints[0].allocation");
    let e = with(|v| v["endpoints"][0]["virtualHosts"][0] = "a b:80".into()).unwrap_err();
    assert_eq!(e.field, "endpoints[0].virtualHosts[0]");
    let e = with(|v| v["endpoints"][0]["virtualHosts"] = serde_json::json!([])).unwrap_err();
    assert_eq!(e.field, "endpoints[0].virtualHosts");
    with(|v| v["endpoints"][0]["virtualHosts"][0] = "*.example.com:80".into()).unwrap();
    let e = with(|v| v["endpoints"][0]["routeKey"] = "short".into()).unwrap_err();
    assert_eq!(e.field, "endpoints[0].routeKey");
    let e = with(|v| v["endpoints"][0]["routeKey"] = "a.b-c_d-e-f-g-h-i-j".into()).unwrap_err();
    assert_eq!(
        e.field, "endpoints[0].routeKey",
        "a `.` would make the routed value ambiguous"
    );
    let e = with(|v| {
        v["endpoints"][0]["variants"][1]["rollout"] =
            serde_json::json!({"model": "titanic-v3", "buckets": [{"start": 7999, "end": 9000}]})
    })
    .unwrap_err();
    assert_eq!(e.field, "endpoints[0].variants[1].rollout.buckets");
    assert!(e.message.contains("does not own"), "{e}");
    let e = with(|v| {
        v["endpoints"][0]["variants"][1]["rollout"] = serde_json::json!({"model": "titanic-v2"})
    })
    .unwrap_err();
    assert_eq!(e.field, "endpoints[0].variants[1].rollout.model");
    let ok = with(|v| {
        v["endpoints"][0]["variants"][1]["rollout"] =
            serde_json::json!({"model": "titanic-v3", "buckets": [{"start": 8000, "end": 9000}]})
    });
    assert!(ok.is_ok(), "{ok:?}");
    let e = with(|v| v["endpoints"][0]["shadow"]["variant"] = "zz".into()).unwrap_err();
    assert_eq!(e.field, "endpoints[0].shadow.variant");
    let e = with(|v| v["endpoints"][0]["shadow"]["compare"]["percent"] = (-1).into()).unwrap_err();
    assert_eq!(e.field, "endpoints[0].shadow.compare.percent");
    let e = with(|v| v["endpoints"][0]["bogus"] = 1.into()).unwrap_err();
    assert!(e.message.contains("bogus"), "{e}");
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn a_shadow_body_cap_over_the_limit_is_rejected_naming_the_field() {
    let at_limit =
        with(|v| v["endpoints"][0]["shadow"]["maxBodyBytes"] = MAX_SHADOW_BODY_BYTES.into());
    assert!(at_limit.is_ok(), "{at_limit:?}");
    let e =
        with(|v| v["endpoints"][0]["shadow"]["maxBodyBytes"] = (MAX_SHADOW_BODY_BYTES + 1).into())
            .unwrap_err();
    assert_eq!(e.field, "endpoints[0].shadow.maxBodyBytes");
    assert!(e.message.contains("over the limit of 4194304"), "{e}");
    let e = with(|v| v["endpoints"][0]["shadow"]["maxBodyBytes"] = u32::MAX.into()).unwrap_err();
    assert_eq!(e.field, "endpoints[0].shadow.maxBodyBytes");
}

/// Comparing every copy is the default and is left out of the JSON, so a config without
/// sampling is the same text as before `compare.percent` existed (and an older module
/// reads it); a sampled one carries it.
#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn compare_percent_defaults_to_every_copy_and_is_written_only_when_sampled() {
    let cfg = FilterConfig::from_json(example().as_bytes()).unwrap();
    let shadow = cfg.endpoints[0].shadow.clone().unwrap();
    assert_eq!(shadow.compare.percent, 100.0);
    let text = serde_json::to_string(&shadow.compare).unwrap();
    assert!(!text.contains("percent"), "{text}");
    let sampled = with(|v| v["endpoints"][0]["shadow"]["compare"]["percent"] = 10.into()).unwrap();
    let compare = &sampled.endpoints[0].shadow.as_ref().unwrap().compare;
    assert_eq!(compare.percent, 10.0);
    assert!(serde_json::to_string(compare)
        .unwrap()
        .contains("\"percent\":10"));
}

#[test]
#[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
fn non_json_is_rejected_with_position() {
    let e = FilterConfig::from_json(b"{\"version\": 1,\n  nope").unwrap_err();
    assert!(e.field.starts_with("line 2"), "{e}");
}

proptest::proptest! {
    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        let _ = FilterConfig::from_json(&bytes);
    }
}
