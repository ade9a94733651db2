//! Bucket allocation: which of the [`BUCKETS`] hash buckets belong to which variant.
//!
//! No function of the current weights alone can be monotone for every weight change once an
//! endpoint has three or more variants (70/20/10 -> 60/20/20 must leave the middle variant's
//! users alone, which a fixed range layout cannot). So the control plane owns the allocation:
//! [`Allocation::initial`] lays a fresh endpoint out deterministically, and
//! [`Allocation::rebalance`] derives each new allocation from the previous one, moving buckets
//! only from variants that shrink (or disappear) to variants that grow (or appear). The result
//! is persisted (resource status, rendered filter config, local state file) and the filter only
//! looks buckets up.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Size of the bucket space. One weight percent is `BUCKETS / 100` buckets.
pub const BUCKETS: u32 = 10_000;
/// Buckets per weight percent.
pub const BUCKETS_PER_PERCENT: u32 = BUCKETS / 100;

/// A half-open run of buckets `[start, end)` owned by one variant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BucketRange {
    pub variant: String,
    pub start: u32,
    pub end: u32,
}

/// The whole bucket space as sorted, contiguous, non-overlapping ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct Allocation {
    pub ranges: Vec<BucketRange>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    #[error("weights must sum to 100, got {0}")]
    WeightSum(u64),
    #[error("variant {0:?} appears more than once")]
    DuplicateVariant(String),
    #[error("weight of variant {variant:?} is {weight}, must be 0..=100")]
    WeightRange { variant: String, weight: u32 },
    #[error("range {index} [{start}, {end}) does not continue at bucket {expected} (ranges must be sorted, contiguous and cover 0..{BUCKETS})")]
    Gap {
        index: usize,
        start: u32,
        end: u32,
        expected: u32,
    },
    #[error("ranges end at bucket {0}, must cover 0..{BUCKETS}")]
    Incomplete(u32),
    #[error("range {index} names variant {variant:?}, which is not in the variant list")]
    UnknownVariant { index: usize, variant: String },
    #[error("variant {variant:?} owns {owned} buckets but its weight {weight} needs {needed}")]
    CountMismatch {
        variant: String,
        owned: u32,
        weight: u32,
        needed: u32,
    },
}

fn check_weights(weights: &[(&str, u32)]) -> Result<(), AllocationError> {
    let mut seen = std::collections::BTreeSet::new();
    let mut sum = 0u64;
    for &(name, weight) in weights {
        if !seen.insert(name) {
            return Err(AllocationError::DuplicateVariant(name.to_owned()));
        }
        if weight > 100 {
            return Err(AllocationError::WeightRange {
                variant: name.to_owned(),
                weight,
            });
        }
        sum += u64::from(weight);
    }
    if sum != 100 {
        return Err(AllocationError::WeightSum(sum));
    }
    Ok(())
}

impl Allocation {
    /// The deterministic layout of a fresh endpoint: variants in the given order, each a
    /// contiguous run of `weight * 100` buckets.
    pub fn initial(weights: &[(&str, u32)]) -> Result<Self, AllocationError> {
        check_weights(weights)?;
        let mut ranges = Vec::with_capacity(weights.len());
        let mut start = 0;
        for &(name, weight) in weights {
            let end = start + weight * BUCKETS_PER_PERCENT;
            if end > start {
                ranges.push(BucketRange {
                    variant: name.to_owned(),
                    start,
                    end,
                });
            }
            start = end;
        }
        Ok(Self { ranges })
    }

    /// Derive the allocation for `weights` from `self`, moving as few buckets as possible and
    /// only from variants that shrink or disappear to variants that grow or appear. A variant
    /// that shrinks gives up its highest-numbered buckets; growing variants take the freed
    /// buckets lowest-first, in the order given. Deterministic: same previous allocation and
    /// weights, same result. Works from any previous allocation, even one that does not cover
    /// the space (uncovered buckets count as free).
    pub fn rebalance(&self, weights: &[(&str, u32)]) -> Result<Self, AllocationError> {
        check_weights(weights)?;
        let index: BTreeMap<&str, usize> = weights
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (*n, i))
            .collect();
        // Owner of every bucket, as an index into `weights` (None = free).
        let mut owner: Vec<Option<usize>> = vec![None; BUCKETS as usize];
        for r in &self.ranges {
            let who = index.get(r.variant.as_str()).copied();
            for b in r.start.min(BUCKETS)..r.end.min(BUCKETS) {
                owner[b as usize] = who;
            }
        }
        let mut count = vec![0u32; weights.len()];
        for o in owner.iter().flatten() {
            count[*o] += 1;
        }
        // Shrinking variants free their highest buckets.
        for b in (0..BUCKETS as usize).rev() {
            if let Some(v) = owner[b] {
                if count[v] > weights[v].1 * BUCKETS_PER_PERCENT {
                    owner[b] = None;
                    count[v] -= 1;
                }
            }
        }
        // Growing variants take free buckets, lowest first, in variant order.
        let mut next_free = 0usize;
        for (v, &(_, weight)) in weights.iter().enumerate() {
            let need = weight * BUCKETS_PER_PERCENT;
            while count[v] < need {
                while owner[next_free].is_some() {
                    next_free += 1;
                }
                owner[next_free] = Some(v);
                count[v] += 1;
            }
        }
        let mut ranges: Vec<BucketRange> = Vec::new();
        for (b, o) in owner.iter().enumerate() {
            // Every bucket is owned now: the weights sum to exactly BUCKETS.
            let Some(v) = o else { continue };
            let name = weights[*v].0;
            match ranges.last_mut() {
                Some(last) if last.variant == name && last.end == b as u32 => last.end += 1,
                _ => ranges.push(BucketRange {
                    variant: name.to_owned(),
                    start: b as u32,
                    end: b as u32 + 1,
                }),
            }
        }
        Ok(Self { ranges })
    }

    /// Check that the ranges are sorted, contiguous, cover the space, name only known variants
    /// and give each variant exactly the buckets its weight needs.
    pub fn validate(&self, weights: &[(&str, u32)]) -> Result<(), AllocationError> {
        check_weights(weights)?;
        let mut expected = 0;
        let known: BTreeMap<&str, u32> = weights.iter().copied().collect();
        let mut owned: BTreeMap<&str, u32> = BTreeMap::new();
        for (index, r) in self.ranges.iter().enumerate() {
            if r.start != expected || r.end <= r.start || r.end > BUCKETS {
                return Err(AllocationError::Gap {
                    index,
                    start: r.start,
                    end: r.end,
                    expected,
                });
            }
            if !known.contains_key(r.variant.as_str()) {
                return Err(AllocationError::UnknownVariant {
                    index,
                    variant: r.variant.clone(),
                });
            }
            *owned.entry(r.variant.as_str()).or_default() += r.end - r.start;
            expected = r.end;
        }
        if expected != BUCKETS {
            return Err(AllocationError::Incomplete(expected));
        }
        for (name, weight) in known {
            let got = owned.get(name).copied().unwrap_or(0);
            let needed = weight * BUCKETS_PER_PERCENT;
            if got != needed {
                return Err(AllocationError::CountMismatch {
                    variant: name.to_owned(),
                    owned: got,
                    weight,
                    needed,
                });
            }
        }
        Ok(())
    }

    /// The variant owning `bucket` (binary search; the filter uses a precomputed table).
    pub fn lookup(&self, bucket: u32) -> Option<&str> {
        let i = self.ranges.partition_point(|r| r.end <= bucket);
        self.ranges
            .get(i)
            .filter(|r| r.start <= bucket)
            .map(|r| r.variant.as_str())
    }

    /// A dense table `bucket -> index into names`, for O(1) lookups on the request path.
    /// Call only on a validated allocation; a range naming an unknown variant maps to index 0.
    pub fn to_table(&self, names: &[&str]) -> Vec<u8> {
        let mut table = vec![0u8; BUCKETS as usize];
        for r in &self.ranges {
            let v = names.iter().position(|n| *n == r.variant).unwrap_or(0) as u8;
            for b in r.start.min(BUCKETS)..r.end.min(BUCKETS) {
                table[b as usize] = v;
            }
        }
        table
    }

    /// Buckets owned per variant.
    pub fn counts(&self) -> BTreeMap<String, u32> {
        let mut m = BTreeMap::new();
        for r in &self.ranges {
            *m.entry(r.variant.clone()).or_default() += r.end.saturating_sub(r.start);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn owners(a: &Allocation) -> Vec<String> {
        (0..BUCKETS)
            .map(|b| a.lookup(b).unwrap_or("<none>").to_owned())
            .collect()
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn initial_layout_is_contiguous_in_variant_order() {
        let a = Allocation::initial(&[("a", 80), ("b", 20)]).unwrap();
        assert_eq!(
            a.ranges,
            vec![
                BucketRange {
                    variant: "a".into(),
                    start: 0,
                    end: 8000
                },
                BucketRange {
                    variant: "b".into(),
                    start: 8000,
                    end: 10000
                },
            ]
        );
        a.validate(&[("a", 80), ("b", 20)]).unwrap();
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn weights_not_summing_to_100_are_rejected() {
        assert_eq!(
            Allocation::initial(&[("a", 80), ("b", 30)]),
            Err(AllocationError::WeightSum(110))
        );
        assert_eq!(
            Allocation::initial(&[("a", 50), ("a", 50)]),
            Err(AllocationError::DuplicateVariant("a".into()))
        );
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn middle_variant_keeps_its_users_when_weight_moves_from_first_to_last() {
        let w1 = [("a", 70), ("b", 20), ("c", 10)];
        let w2 = [("a", 60), ("b", 20), ("c", 20)];
        let a1 = Allocation::initial(&w1).unwrap();
        let a2 = a1.rebalance(&w2).unwrap();
        a2.validate(&w2).unwrap();
        let (o1, o2) = (owners(&a1), owners(&a2));
        let mut moved = 0;
        for b in 0..BUCKETS as usize {
            if o1[b] != o2[b] {
                assert_eq!((o1[b].as_str(), o2[b].as_str()), ("a", "c"), "bucket {b}");
                moved += 1;
            }
        }
        assert_eq!(moved, 1000);
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn validate_names_the_problem() {
        let w = [("a", 50), ("b", 50)];
        let mut a = Allocation::initial(&w).unwrap();
        a.ranges[1].start = 5001;
        assert!(matches!(
            a.validate(&w),
            Err(AllocationError::Gap { index: 1, .. })
        ));
        let a = Allocation::initial(&[("a", 60), ("b", 40)]).unwrap();
        assert!(matches!(
            a.validate(&w),
            Err(AllocationError::CountMismatch { .. })
        ));
        let a = Allocation::initial(&[("a", 50), ("z", 50)]).unwrap();
        assert!(matches!(
            a.validate(&w),
            Err(AllocationError::UnknownVariant { .. })
        ));
    }

    fn weights_strategy() -> impl Strategy<Value = Vec<u32>> {
        (1usize..6).prop_flat_map(|n| {
            proptest::collection::vec(0u32..100, n).prop_map(|mut v| {
                // Normalise to sum exactly 100.
                let total: u32 = v.iter().sum();
                if total == 0 {
                    v[0] = 100;
                    return v;
                }
                let mut scaled: Vec<u32> = v.iter().map(|x| x * 100 / total).collect();
                let rest = 100 - scaled.iter().sum::<u32>();
                scaled[0] += rest;
                scaled
            })
        })
    }

    const NAMES: [&str; 6] = ["v0", "v1", "v2", "v3", "v4", "v5"];

    fn named(w: &[u32]) -> Vec<(&'static str, u32)> {
        w.iter().enumerate().map(|(i, x)| (NAMES[i], *x)).collect()
    }

    proptest! {
        /// Monotonicity: across a chain of weight changes (variants may be added or removed),
        /// every bucket that changes owner moves from a variant that lost weight to one that
        /// gained weight, and exactly sum(max(0, gain)) buckets move.
        #[test]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn rebalance_moves_only_from_shrinking_to_growing(chain in proptest::collection::vec(weights_strategy(), 2..6)) {
            let mut prev_w = named(&chain[0]);
            let mut prev = Allocation::initial(&prev_w).unwrap();
            for w in &chain[1..] {
                let next_w = named(w);
                let next = prev.rebalance(&next_w).unwrap();
                prop_assert!(next.validate(&next_w).is_ok());
                let before: BTreeMap<&str, u32> = prev_w.iter().copied().collect();
                let after: BTreeMap<&str, u32> = next_w.iter().copied().collect();
                let (o1, o2) = (owners(&prev), owners(&next));
                let mut moved = 0u32;
                for b in 0..BUCKETS as usize {
                    if o1[b] != o2[b] {
                        moved += 1;
                        let from_before = before.get(o1[b].as_str()).copied().unwrap_or(0);
                        let from_after = after.get(o1[b].as_str()).copied().unwrap_or(0);
                        let to_before = before.get(o2[b].as_str()).copied().unwrap_or(0);
                        let to_after = after.get(o2[b].as_str()).copied().unwrap_or(0);
                        prop_assert!(from_after < from_before, "bucket {} left {} which did not shrink", b, o1[b]);
                        prop_assert!(to_after > to_before, "bucket {} joined {} which did not grow", b, o2[b]);
                    }
                }
                let gain: u32 = after.iter().map(|(n, w)| w.saturating_sub(before.get(n).copied().unwrap_or(0))).sum();
                prop_assert_eq!(moved, gain * BUCKETS_PER_PERCENT);
                prev = next;
                prev_w = next_w;
            }
        }

        #[test]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn rebalance_with_unchanged_weights_is_identity(w in weights_strategy()) {
            let w = named(&w);
            let a = Allocation::initial(&w).unwrap();
            prop_assert_eq!(a.rebalance(&w).unwrap(), a);
        }

        #[test]
        #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
        fn table_agrees_with_lookup(w in weights_strategy(), w2 in weights_strategy()) {
            let w = named(&w);
            let w2 = named(&w2);
            let a = Allocation::initial(&w).unwrap().rebalance(&w2).unwrap();
            let names: Vec<&str> = w2.iter().map(|(n, _)| *n).collect();
            let t = a.to_table(&names);
            for b in 0..BUCKETS {
                prop_assert_eq!(Some(names[t[b as usize] as usize]), a.lookup(b));
            }
        }
    }
}
