//! Property tests of the stream: whatever the client sends.

use super::*;
use crate::host::MemHost;
use proptest::prelude::*;

fn header() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        Just(":authority".to_owned()),
        Just("cookie".to_owned()),
        Just("x-user-id".to_owned()),
        Just("x-mlep-target-variant".to_owned()),
        Just("x-mlep-variant".to_owned()),
        Just("x-mlep-model".to_owned()),
        "[a-z-]{1,12}",
    ];
    let value = prop_oneof![
        Just("titanic.example.com".to_owned()),
        Just("TITANIC.example.com:443".to_owned()),
        Just("a".to_owned()),
        "mlep-titanic=[ -~]{0,40}",
        "\\PC{0,64}",
        any::<String>(),
    ];
    (name, value)
}

proptest! {
    /// Whatever the client sends, a stream never panics, and when it is assigned the
    /// request carries exactly one valid variant.
    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn arbitrary_headers_and_cookies_never_panic(
        headers in proptest::collection::vec(header(), 0..8),
        status in any::<String>(),
        body in proptest::collection::vec(any::<u8>(), 0..64),
        seed in any::<u64>(),
    ) {
        let mut h = MemHost { seed, ..MemHost::default() };
        let cfg = Rc::new(Compiled::from_json(include_str!("../../../examples/filter-config.json").as_bytes(), &mut h).unwrap());
        let hub = Rc::new(RefCell::new(Hub::new()));
        h.request = headers;
        h.response = vec![(":status".into(), status)];
        let len = body.len();
        h.request_chunk = body.clone();
        h.response_chunk = body;
        let mut s = Stream::new(cfg, Rc::clone(&hub));
        let action = s.on_request_headers(&mut h, false);
        s.on_request_body(&mut h, len, true);
        s.on_response_headers(&mut h, false);
        s.on_response_body(&mut h, len, true);
        s.on_log(&mut h);
        let variants: Vec<_> = h.request.iter().filter(|(k, _)| k == "x-mlep-variant").map(|(_, v)| v.clone()).collect();
        if action == RequestAction::Continue && s.assigned.is_some() {
            prop_assert_eq!(variants.len(), 1);
            prop_assert!(variants[0] == "a" || variants[0] == "b");
        }
        for o in hub.borrow_mut().drain() {
            prop_assert!(!o.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("cookie")));
        }
    }

    /// With a rollout split, whatever the client sends: an assigned request carries one
    /// variant, and on the variant being rolled out the model header is the new model
    /// exactly when the user's bucket moved (never a client's value).
    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_rollout_split_marks_exactly_the_moved_users_whatever_the_client_sends(
        headers in proptest::collection::vec(header(), 0..8),
        seed in any::<u64>(),
    ) {
        let mut h = MemHost { seed, ..MemHost::default() };
        let cfg = Rc::new(Compiled::from_json(super::tests::rolling_out(include_str!("../../../examples/filter-config.json")).as_bytes(), &mut h).unwrap());
        h.request = headers;
        let mut s = Stream::new(Rc::clone(&cfg), Rc::new(RefCell::new(Hub::new())));
        let action = s.on_request_headers(&mut h, true);
        let values = |name: &str| -> Vec<String> {
            h.request.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
        };
        if let (RequestAction::Continue, Some((_, entry))) = (action, s.assigned) {
            let variant = values("x-mlep-variant");
            prop_assert_eq!(variant.len(), 1);
            if variant[0] == "b" {
                let moved = entry >= 2; // the rollout entry follows a and b
                let model = values("x-mlep-model");
                if moved {
                    prop_assert_eq!(model, vec!["titanic-v3".to_owned()]);
                } else {
                    prop_assert!(model.is_empty(), "{:?}", model);
                }
            }
        }
    }

    /// Targeted users follow a growing rollout monotonically: once a key is served by
    /// the new model it stays there at every larger share, the share of targeted keys
    /// moved tracks the variant's, and a rollback (nothing moved) returns every one.
    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn targeted_users_who_moved_stay_moved_as_the_share_grows(
        mut steps in proptest::collection::vec(0u32..=2000, 1..6),
        first in 0u32..10_000,
    ) {
        use mlep_contract::rollout::{grow, Span};
        steps.sort_unstable();
        let alloc = mlep_contract::Allocation::initial(&[("a", 80), ("b", 20)]).unwrap();
        let keys: Vec<String> = (first..first + 300).map(|i| format!("k{i}")).collect();
        let mut moved_before = vec![false; keys.len()];
        let mut spans: Vec<Span> = Vec::new();
        for target in steps.into_iter().chain([0]) {
            // The last step is a rollback: the moved set is emptied.
            spans = if target == 0 { Vec::new() } else { grow(&alloc, "b", &spans, target) };
            let json = serde_json::to_string(&spans).unwrap();
            let cfg = super::tests::rolling_out(include_str!("../../../examples/filter-config.json"))
                .replace("[{\"start\": 8000, \"end\": 9000}]", &json);
            let cfg = Compiled::from_json(cfg.as_bytes(), &mut MemHost::default()).unwrap();
            let ep = &cfg.endpoints[0];
            let mut n_moved = 0;
            for (k, before) in keys.iter().zip(moved_before.iter_mut()) {
                let moved = ep.targeted(1, mlep_contract::bucket_of("default/titanic", k)) == 2;
                prop_assert!(moved || !*before || target == 0, "{} left the new model", k);
                prop_assert!(!moved || target > 0);
                *before = moved;
                n_moved += usize::from(moved);
            }
            if target == 2000 {
                prop_assert_eq!(n_moved, keys.len());
            }
        }
    }

    /// Arbitrary configuration bytes never panic the compiler (and define no metric
    /// unless the config is valid).
    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn arbitrary_config_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut h = MemHost::default();
        if Compiled::from_json(&bytes, &mut h).is_err() {
            prop_assert!(h.names.is_empty());
        }
    }

    /// Mutating the valid example in arbitrary places never panics either.
    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn mutated_configs_never_panic(pos in 0usize..2000, byte in any::<u8>()) {
        let mut bytes = include_str!("../../../examples/filter-config.json").as_bytes().to_vec();
        let i = pos % bytes.len();
        bytes[i] = byte;
        let _ = Compiled::from_json(&bytes, &mut MemHost::default());
    }
}
