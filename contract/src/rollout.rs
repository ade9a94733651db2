//! Rollout splits: which of a variant's buckets already moved from its model to the model it
//! is being rolled out to. A [`RolloutSplit`] travels in the filter config on the variant
//! (`variants[].rollout`); the filter precomputes it into its bucket table, so a moved user
//! costs no extra lookup on the request path.
//!
//! The moved set only grows during a rollout ([`grow`] adds the variant's lowest-numbered
//! buckets that have not moved yet; a bucket is a hash of the user key, so lowest-bucket-first
//! is a uniform sample of the variant's users), and a rollback empties it: users return to the
//! old model exactly.

use crate::allocation::{Allocation, BUCKETS};
use serde::{Deserialize, Serialize};

/// A half-open run of buckets `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn len(&self) -> u32 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The part of a variant's users served by another model while a rollout moves them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSplit {
    /// The Model the moved buckets go to (metric label `model`, value of the model header).
    pub model: String,
    /// Buckets of this variant already moved: sorted, disjoint, non-empty spans, each inside
    /// the variant's allocation.
    #[serde(default)]
    pub buckets: Vec<Span>,
}

/// Why a split does not fit its variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("span {index} [{start}, {end}) is empty, unsorted or overlaps the previous one")]
    Order { index: usize, start: u32, end: u32 },
    #[error("span {index} [{start}, {end}) includes buckets variant {variant:?} does not own")]
    NotOwned {
        index: usize,
        start: u32,
        end: u32,
        variant: String,
    },
}

/// Buckets in `spans`.
pub fn count(spans: &[Span]) -> u32 {
    spans.iter().map(Span::len).sum()
}

/// Check that `spans` are sorted, disjoint, non-empty and owned by `variant` in `allocation`.
pub fn validate(allocation: &Allocation, variant: &str, spans: &[Span]) -> Result<(), SplitError> {
    let mut after = 0u32;
    for (index, s) in spans.iter().enumerate() {
        if s.is_empty() || s.start < after || s.end > BUCKETS {
            return Err(SplitError::Order {
                index,
                start: s.start,
                end: s.end,
            });
        }
        after = s.end;
        // The allocation's ranges are sorted and contiguous: every range overlapping the span
        // must belong to the variant.
        let foreign = allocation
            .ranges
            .iter()
            .any(|r| r.start < s.end && s.start < r.end && r.variant != variant);
        let covered: u32 = allocation
            .ranges
            .iter()
            .filter(|r| r.variant == variant)
            .map(|r| r.end.min(s.end).saturating_sub(r.start.max(s.start)))
            .sum();
        if foreign || covered != s.len() {
            return Err(SplitError::NotOwned {
                index,
                start: s.start,
                end: s.end,
                variant: variant.to_owned(),
            });
        }
    }
    Ok(())
}

/// Buckets `variant` owns in `allocation`.
pub fn owned(allocation: &Allocation, variant: &str) -> Vec<Span> {
    allocation
        .ranges
        .iter()
        .filter(|r| r.variant == variant && r.end > r.start)
        .map(|r| Span {
            start: r.start,
            end: r.end,
        })
        .collect()
}

/// `a ∩ b` of two sorted, disjoint span lists.
pub fn intersect(a: &[Span], b: &[Span]) -> Vec<Span> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let start = a[i].start.max(b[j].start);
        let end = a[i].end.min(b[j].end);
        if start < end {
            push(&mut out, start, end);
        }
        if a[i].end < b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Append `[start, end)`, merging with the last span when they touch.
fn push(out: &mut Vec<Span>, start: u32, end: u32) {
    match out.last_mut() {
        Some(last) if last.end == start => last.end = end,
        _ => out.push(Span { start, end }),
    }
}

/// The moved set of `variant` after a step to `target` moved buckets: `moved` restricted to
/// what the variant still owns, plus its lowest-numbered buckets not moved yet until `target`
/// buckets have moved (or all it owns). Never removes a bucket the variant still owns, so a
/// user who moved stays moved while the share grows. Deterministic.
pub fn grow(allocation: &Allocation, variant: &str, moved: &[Span], target: u32) -> Vec<Span> {
    let own = owned(allocation, variant);
    let kept = intersect(moved, &own);
    let mut need = target.saturating_sub(count(&kept));
    let mut out: Vec<Span> = Vec::new();
    let mut k = 0;
    for o in &own {
        let mut b = o.start;
        while b < o.end {
            // Skip (and keep) the kept spans inside this owned range.
            while k < kept.len() && kept[k].end <= b {
                k += 1;
            }
            match kept.get(k) {
                Some(s) if s.start <= b => {
                    let end = s.end.min(o.end);
                    push(&mut out, b, end);
                    b = end;
                }
                next => {
                    let free_end = next.map_or(o.end, |s| s.start.min(o.end));
                    let take = need.min(free_end - b);
                    if take > 0 {
                        push(&mut out, b, b + take);
                        need -= take;
                    }
                    b = free_end;
                }
            }
        }
    }
    out
}

/// `moved` as a percent of the buckets `variant` owns (0 when it owns none), rounded down.
pub fn percent(allocation: &Allocation, variant: &str, moved: &[Span]) -> u32 {
    let own = count(&owned(allocation, variant));
    if own == 0 {
        return 0;
    }
    (u64::from(count(moved)) * 100 / u64::from(own)) as u32
}

/// Buckets to have moved for `percent` of what `variant` owns (rounded up, so any positive
/// percent of a variant with buckets moves at least one).
pub fn target_for(allocation: &Allocation, variant: &str, percent: u32) -> u32 {
    let own = u64::from(count(&owned(allocation, variant)));
    (own * u64::from(percent.min(100))).div_ceil(100) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn alloc() -> Allocation {
        // b owns two runs: [2000, 3000) and [7000, 10000).
        Allocation::initial(&[("a", 20), ("b", 10), ("c", 40), ("d", 30)])
            .unwrap()
            .rebalance(&[("a", 20), ("b", 40), ("c", 40), ("d", 0)])
            .unwrap()
    }

    fn sp(start: u32, end: u32) -> Span {
        Span { start, end }
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn growing_takes_the_lowest_unmoved_buckets_of_the_variant_across_its_runs() {
        let a = alloc();
        assert_eq!(owned(&a, "b"), vec![sp(2000, 3000), sp(7000, 10000)]);
        let m1 = grow(&a, "b", &[], target_for(&a, "b", 10));
        assert_eq!(m1, vec![sp(2000, 2400)]);
        let m2 = grow(&a, "b", &m1, target_for(&a, "b", 50));
        assert_eq!(m2, vec![sp(2000, 3000), sp(7000, 8000)]);
        assert_eq!(percent(&a, "b", &m2), 50);
        validate(&a, "b", &m2).unwrap();
        let all = grow(&a, "b", &m2, target_for(&a, "b", 100));
        assert_eq!(all, owned(&a, "b"));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn validation_names_spans_outside_the_variant_or_out_of_order() {
        let a = alloc();
        assert!(matches!(
            validate(&a, "b", &[sp(1990, 2100)]),
            Err(SplitError::NotOwned { index: 0, .. })
        ));
        assert!(matches!(
            validate(&a, "b", &[sp(7000, 7100), sp(2000, 2100)]),
            Err(SplitError::Order { index: 1, .. })
        ));
        assert!(matches!(
            validate(&a, "b", &[sp(2000, 2000)]),
            Err(SplitError::Order { index: 0, .. })
        ));
        assert!(matches!(
            validate(&a, "b", &[sp(2500, 7500)]),
            Err(SplitError::NotOwned { .. })
        ));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_weight_change_mid_rollout_keeps_moved_users_the_variant_still_owns() {
        let a = alloc();
        let moved = grow(&a, "b", &[], target_for(&a, "b", 50));
        // b shrinks to 20: it gives up its highest buckets; the moved ones it keeps stay moved.
        let smaller = a
            .rebalance(&[("a", 40), ("b", 20), ("c", 40), ("d", 0)])
            .unwrap();
        let kept = grow(&smaller, "b", &moved, 0);
        assert_eq!(kept, intersect(&moved, &owned(&smaller, "b")));
        validate(&smaller, "b", &kept).unwrap();
    }

    fn weights() -> impl Strategy<Value = (u32, u32)> {
        (1u32..=99).prop_map(|w| (w, 100 - w))
    }

    proptest! {
        /// Over any sequence of step targets, each step's moved set contains the previous one,
        /// stays inside the variant, has exactly the buckets asked for (or all the variant
        /// owns), and the moved buckets are exactly the ones a rollback returns.
        #[test]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn moves_are_monotone_and_a_rollback_returns_exactly_the_moved_buckets(
            (wa, wb) in weights(),
            steps in proptest::collection::vec(0u32..=100, 1..8),
        ) {
            let a = Allocation::initial(&[("a", wa), ("b", wb)]).unwrap();
            let mut moved: Vec<Span> = Vec::new();
            let mut asked = 0;
            for p in steps {
                let target = target_for(&a, "b", p).max(asked);
                asked = target;
                let next = grow(&a, "b", &moved, target);
                prop_assert!(validate(&a, "b", &next).is_ok());
                prop_assert_eq!(intersect(&moved, &next), moved.clone(), "a moved bucket moved back");
                prop_assert_eq!(count(&next), target.min(wb * 100));
                moved = next;
            }
            // Rollback: every bucket in the split, and only those, returns to the old model.
            let served_new: Vec<u32> = (0..BUCKETS)
                .filter(|b| moved.iter().any(|s| s.start <= *b && *b < s.end))
                .collect();
            prop_assert!(served_new.iter().all(|b| a.lookup(*b) == Some("b")));
            prop_assert_eq!(served_new.len() as u32, count(&moved));
        }
    }
}
