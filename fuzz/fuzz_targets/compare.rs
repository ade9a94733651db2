//! The shadow comparator: never panics; exact mode is byte equality; JSON mode is symmetric
//! and reflexive for documents without NaN-like surprises (serde_json has no NaN).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlep_contract::CompareMode;
use mlep_filter::compare::agree;

fuzz_target!(|input: (bool, f64, &[u8], &[u8])| {
    let (json, tolerance, a, b) = input;
    let tolerance = if tolerance.is_finite() { tolerance.abs() } else { 0.0 };
    if json {
        assert_eq!(
            agree(CompareMode::Json, tolerance, a, b),
            agree(CompareMode::Json, tolerance, b, a),
            "symmetric"
        );
        assert!(agree(CompareMode::Json, tolerance, a, a), "reflexive");
    } else {
        assert_eq!(agree(CompareMode::Exact, tolerance, a, b), a == b);
    }
});
