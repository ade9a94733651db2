//! The K8SMLEndpoints proxy-wasm filter.
//!
//! All decisions live in plain modules with no proxy-wasm dependency, tested natively and
//! on `wasm32-unknown-unknown` (wasm-bindgen-test):
//! - [`compiled`]: the configuration compiled once per `on_configure` (bucket tables, host
//!   table, metric ids);
//! - [`request`]: variant assignment (targeting, sticky key, cookie);
//! - [`stream`]: one HTTP stream's callbacks over the [`host::Host`] trait;
//! - [`shadow`]: shadow copies queued per VM and sent by the root context, with agreement;
//! - [`compare`]: response agreement (exact or JSON with tolerance);
//! - [`tally`]: per-request counter increments kept in Wasm memory, flushed from the root;
//! - [`wake`]: holding a request of a variant scaled to zero until it wakes.
//!
//! `adapter` (wasm32 only, not in test builds) is the one file that talks to proxy-wasm.
// One exception, in `adapter::send_from_root` (calling the SDK's own export).
#![deny(unsafe_code)]

pub mod capture;
pub mod compare;
pub mod compiled;
pub mod host;
pub mod request;
pub mod shadow;
pub mod stream;
pub mod tally;
pub mod wake;

// Not in test builds: the wasm32 test binaries run under wasm-bindgen-test's runner, which has no
// proxy-wasm host functions to import.
#[cfg(all(target_arch = "wasm32", not(test)))]
mod adapter;
