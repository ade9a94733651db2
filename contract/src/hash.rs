//! The sticky-assignment hash. Stable by contract: changing it moves every user.
//!
//! `hash_key(salt, key)` is 64-bit FNV-1a over `salt`, one `0x00` byte, then `key`, followed
//! by the MurmurHash3 `fmix64` finalizer (FNV-1a alone has weak low bits, and buckets are
//! taken modulo [`BUCKETS`](crate::BUCKETS)). `bucket_of` is that hash modulo 10,000.
//! All arithmetic is on `u64` with explicit wrapping, so 32-bit wasm and 64-bit native agree.
//!
//! The salt is the endpoint's `namespace/name`, so one user lands in independent buckets on
//! different endpoints. In Python, for anyone who wants to predict a key's bucket:
//!
//! ```text
//! def bucket(salt, key):
//!     h = 0xcbf29ce484222325
//!     for b in salt.encode() + b"\0" + key.encode():
//!         h = ((h ^ b) * 0x100000001b3) % 2**64
//!     h ^= h >> 33; h = (h * 0xff51afd7ed558ccd) % 2**64
//!     h ^= h >> 33; h = (h * 0xc4ceb9fe1a85ec53) % 2**64
//!     h ^= h >> 33
//!     return h % 10000
//! ```

use crate::allocation::BUCKETS;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline]
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

#[inline]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The 64-bit sticky hash of `key` under `salt` (see the module docs for the exact recipe).
#[inline]
pub fn hash_key(salt: &str, key: &str) -> u64 {
    let h = fnv1a(FNV_OFFSET, salt.as_bytes());
    let h = fnv1a(h, &[0]);
    fmix64(fnv1a(h, key.as_bytes()))
}

/// The bucket (0..10,000) of `key` under `salt`.
#[inline]
pub fn bucket_of(salt: &str, key: &str) -> u32 {
    // The remainder is < 10,000, so the narrowing is lossless.
    (hash_key(salt, key) % u64::from(BUCKETS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned values: if these change, every user of every endpoint moves. The same values are
    /// checked by the wasm32 run of this test suite, proving 32-bit and 64-bit agree.
    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn hash_values_are_pinned_forever() {
        assert_eq!(hash_key("", ""), fmix64(fnv1a(FNV_OFFSET, &[0])));
        assert_eq!(bucket_of("default/titanic", "user-1"), PINNED[0]);
        assert_eq!(bucket_of("default/titanic", "user-2"), PINNED[1]);
        assert_eq!(bucket_of("prod/fraud", "alice@example.com"), PINNED[2]);
    }
    /// Computed with the Python recipe in the module docs, so the docs are proven too.
    const PINNED: [u32; 3] = [3115, 4390, 7050];

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn salt_separates_endpoints() {
        let same = (0..1000)
            .filter(|i| {
                let k = format!("user-{i}");
                bucket_of("a/x", &k) == bucket_of("a/y", &k)
            })
            .count();
        // Independent buckets agree with probability 1/10,000.
        assert!(same < 5, "{same} of 1000 keys share a bucket across salts");
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn buckets_are_uniform_over_sequential_keys() {
        let mut counts = [0u32; 10];
        for i in 0..100_000 {
            counts[(bucket_of("default/titanic", &format!("user-{i}")) / 1000) as usize] += 1;
        }
        for c in counts {
            assert!(
                (9_500..=10_500).contains(&c),
                "decile count {c} is off 10,000 by > 5%"
            );
        }
    }
}
