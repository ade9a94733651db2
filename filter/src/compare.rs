//! Do the primary's and the shadow's responses agree? Pure, so it is tested natively and
//! under wasm alike.

use mlep_contract::CompareMode;
use serde_json::Value;

/// `true` when `primary` and `shadow` agree under `mode`: `Exact` compares bytes; `Json`
/// parses both and compares structurally, numbers equal within `tolerance` (absolute), object
/// keys order-insensitive. Bodies that do not parse as JSON fall back to byte equality.
/// `Off` never agrees (callers do not compare when comparison is off).
///
/// In JSON mode identical bytes agree without being parsed: the same bytes parse to the same
/// value, which agrees with itself at any tolerance (the property test below checks that the
/// structural comparison says so too). A shadow that answers as the primary does, the usual
/// case, then costs a byte comparison instead of two parses.
pub fn agree(mode: CompareMode, tolerance: f64, primary: &[u8], shadow: &[u8]) -> bool {
    match mode {
        CompareMode::Off => false,
        CompareMode::Exact => primary == shadow,
        CompareMode::Json if primary == shadow => true,
        CompareMode::Json => match (
            serde_json::from_slice::<Value>(primary),
            serde_json::from_slice::<Value>(shadow),
        ) {
            (Ok(a), Ok(b)) => json_agree(&a, &b, tolerance, 0),
            _ => primary == shadow,
        },
    }
}

/// serde_json limits nesting to 128 levels when parsing; this bound keeps the walk finite anyway.
const MAX_DEPTH: usize = 256;

fn json_agree(a: &Value, b: &Value, tol: f64, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= tol,
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(p, q)| json_agree(p, q, tol, depth + 1))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_agree(v, w, tol, depth + 1)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn exact_mode_compares_bytes() {
        assert!(agree(CompareMode::Exact, 0.0, b"{\"a\":1}", b"{\"a\":1}"));
        assert!(!agree(CompareMode::Exact, 0.0, b"{\"a\":1}", b"{\"a\": 1}"));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn json_mode_tolerates_small_numeric_differences_and_key_order() {
        let p = br#"{"predictions": [0.5, 0.25], "model": "x"}"#;
        let s = br#"{"model": "x", "predictions": [0.5000001, 0.25]}"#;
        assert!(agree(CompareMode::Json, 1e-6, p, s));
        assert!(!agree(CompareMode::Json, 1e-9, p, s));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn json_mode_sees_structural_differences() {
        assert!(!agree(
            CompareMode::Json,
            1.0,
            br#"[1, 2]"#,
            br#"[1, 2, 3]"#
        ));
        assert!(!agree(
            CompareMode::Json,
            1.0,
            br#"{"a": 1}"#,
            br#"{"b": 1}"#
        ));
        assert!(!agree(
            CompareMode::Json,
            1.0,
            br#"{"a": "1"}"#,
            br#"{"a": 1}"#
        ));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn json_mode_falls_back_to_bytes_for_non_json() {
        assert!(agree(CompareMode::Json, 0.0, b"label=cat", b"label=cat"));
        assert!(!agree(CompareMode::Json, 0.0, b"label=cat", b"label=dog"));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn off_mode_never_agrees() {
        assert!(!agree(CompareMode::Off, 0.0, b"x", b"x"));
    }

    proptest! {
        #[test]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn arbitrary_bodies_never_panic_and_agree_with_themselves(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            prop_assert!(agree(CompareMode::Exact, 0.0, &body, &body));
            let _ = agree(CompareMode::Json, 0.001, &body, b"[1]");
            // Same bytes always agree, in JSON mode too (NaN cannot appear in parsed JSON),
            // and the structural comparison (which the byte fast path skips) says so as well.
            prop_assert!(agree(CompareMode::Json, 0.0, &body, &body));
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                prop_assert!(json_agree(&v, &v, 0.0, 0));
            }
        }

        #[test]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn a_json_answer_agrees_with_itself_structurally(
            numbers in proptest::collection::vec(any::<f64>().prop_filter("finite", |x| x.is_finite()), 0..16),
            labels in proptest::collection::vec("[a-z]{0,8}", 0..8),
        ) {
            let body = serde_json::json!({"predictions": numbers, "labels": labels, "nested": [{"k": numbers.first()}]}).to_string();
            let v: Value = serde_json::from_str(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(json_agree(&v, &v, 0.0, 0));
            prop_assert!(agree(CompareMode::Json, 0.0, body.as_bytes(), body.as_bytes()));
        }
    }
}
