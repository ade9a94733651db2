//! Shadow copies and their bookkeeping, shared by all streams of one Wasm VM.
//!
//! Why a hub: a `dispatch_http_call` made from an HTTP stream's context loses its callback
//! when the stream ends first (measured: 74% delivered; the proxy-wasm Rust SDK 0.2.5 maps
//! each call token to the context that was active when it was made, `dispatcher.rs`
//! `register_callout`, and silently drops the response once that context is deleted). The
//! root context outlives streams, so streams only *queue* copies here; the root context
//! sends them from its own callbacks (its `on_tick`, which a stream runs at the end of the
//! callback that queued a copy, and `on_http_call_response`), which makes the root the
//! owner of the call and of its response. Responses and primary bodies meet here
//! by id, and the comparison runs when both have arrived. Everything is bounded: at most
//! [`MAX_PENDING`] copies in flight and [`MAX_HUB_BYTES`] of buffered bodies (request copies,
//! primary answers as the stream collects them, shadow answers); beyond that a copy is counted
//! `skipped` instead of sent, or its comparison is dropped (the outcome is still counted, no
//! agreement), as for an answer over the shadow's `maxBodyBytes`.

use crate::compare::agree;
/// The `outcome` label of `mlep_shadow_requests_total`.
pub use mlep_contract::metrics::Outcome;
use mlep_contract::CompareMode;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};

/// Where a stream finds its hub: one per Wasm VM (`Rc<RefCell<Hub>>`, a VM is one thread), or
/// one per filter config shared by Envoy's workers and its main thread, which sends the
/// copies (`Arc<Mutex<Hub>>`, the native build: `filter/native/src/filter.rs`).
pub trait SharedHub {
    fn with<R>(&self, f: impl FnOnce(&mut Hub) -> R) -> R;
}

impl SharedHub for Rc<RefCell<Hub>> {
    fn with<R>(&self, f: impl FnOnce(&mut Hub) -> R) -> R {
        f(&mut self.borrow_mut())
    }
}

impl SharedHub for Arc<Mutex<Hub>> {
    /// A poisoned lock (a panic while it was held, which no hub method has) still serves: the
    /// hub's state is bookkeeping that is whole between calls.
    fn with<R>(&self, f: impl FnOnce(&mut Hub) -> R) -> R {
        f(&mut self.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Most shadow copies queued or in flight per hub (a Wasm VM; a native config).
pub const MAX_PENDING: usize = mlep_contract::config::MAX_SHADOW_COPIES_IN_FLIGHT as usize;
/// Most body bytes (request copies, primary and shadow answers) held per hub (a Wasm VM; a
/// native config).
pub const MAX_HUB_BYTES: usize = mlep_contract::config::MAX_SHADOW_HUB_BYTES as usize;
/// How long after its timeout an entry waiting for the primary's body is kept.
pub const GRACE_MS: u64 = 5_000;
/// The body of the 504 Envoy answers itself when a call's timeout fires. Envoy arms that timer
/// from its event loop's cached time, so under load the answer can arrive, by our clock, well
/// before `timeoutMs` has passed since we sent the copy (seen: several copies answered at once
/// after a stall, counted `error` by the elapsed-time rule alone); this body says it was the
/// timeout whatever the clock says.
pub const ENVOY_TIMEOUT_BODY: &[u8] = b"upstream request timeout";

/// Something to count, for endpoint `ep`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Outcome { ep: usize, outcome: Outcome },
    Agreement { ep: usize, matched: bool },
}

/// A copy waiting to be sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub id: u64,
    pub ep: usize,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
struct Pending {
    ep: usize,
    compare: CompareMode,
    tolerance: f64,
    timeout_ms: u64,
    created_ms: u64,
    /// `None`: not yet known; `Some(None)`: not comparable (too big, stream gone).
    primary: Option<Option<Vec<u8>>>,
    /// The shadow's body once it answered OK.
    shadow: Option<Option<Vec<u8>>>,
    /// Largest answer (primary or shadow) compared.
    max_body_bytes: usize,
    /// Bytes of the primary's body its stream is collecting ([`Hub::hold_primary`]).
    held: usize,
    bytes: usize,
}

/// Comparison settings of an endpoint's shadow, as the hub needs them.
#[derive(Clone, Copy, Debug)]
pub struct CompareSpec {
    pub mode: CompareMode,
    pub tolerance: f64,
    pub timeout_ms: u32,
    /// Largest answer compared (the shadow's `maxBodyBytes`): a larger primary or shadow
    /// answer is not read, and the copy counts its outcome but no agreement.
    pub max_body_bytes: usize,
}

#[derive(Debug, Default)]
pub struct Hub {
    queue: VecDeque<Outgoing>,
    pending: HashMap<u64, Pending>,
    tokens: HashMap<u32, (u64, u64)>,
    next_id: u64,
    bytes: usize,
    /// Data capture records on their way to the sink (same root-owned calls).
    pub captures: crate::capture::Queue,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queue a copy; `None` (count it `skipped`) when the hub is full.
    pub fn submit(
        &mut self,
        ep: usize,
        spec: CompareSpec,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        now_ms: u64,
    ) -> Option<u64> {
        if self.pending.len() >= MAX_PENDING || self.bytes + body.len() > MAX_HUB_BYTES {
            return None;
        }
        self.next_id += 1;
        let id = self.next_id;
        self.bytes += body.len();
        self.pending.insert(
            id,
            Pending {
                ep,
                compare: spec.mode,
                tolerance: spec.tolerance,
                timeout_ms: u64::from(spec.timeout_ms),
                created_ms: now_ms,
                primary: if spec.mode == CompareMode::Off {
                    Some(None)
                } else {
                    None
                },
                shadow: None,
                max_body_bytes: spec.max_body_bytes.min(MAX_HUB_BYTES),
                held: 0,
                bytes: body.len(),
            },
        );
        self.queue.push_back(Outgoing {
            id,
            ep,
            headers,
            body,
        });
        Some(id)
    }

    /// Take every queued copy (the root context sends them).
    pub fn drain(&mut self) -> Vec<Outgoing> {
        self.queue.drain(..).collect()
    }

    /// The copy `id` was sent with call token `token` at `now_ms`; its body buffer is freed.
    pub fn sent(&mut self, id: u64, body_len: usize, token: u32, now_ms: u64) {
        self.bytes = self.bytes.saturating_sub(body_len);
        if let Some(p) = self.pending.get_mut(&id) {
            p.bytes = p.bytes.saturating_sub(body_len);
        }
        self.tokens.insert(token, (id, now_ms));
    }

    /// The copy `id` could not be sent.
    pub fn send_failed(&mut self, id: u64, body_len: usize) -> Vec<Event> {
        self.bytes = self.bytes.saturating_sub(body_len);
        match self.remove(id) {
            Some(p) => vec![Event::Outcome {
                ep: p.ep,
                outcome: Outcome::Error,
            }],
            None => vec![],
        }
    }

    /// Whether to read the body, `size` bytes, of the answer to `token` (`status`) into the
    /// VM and hand it to [`Hub::shadow_done`]; else it goes to [`Hub::shadow_unread`]. Read:
    /// Envoy's own timeout reply (to tell it apart), and the answer of a copy still compared
    /// whose body is within the shadow's `maxBodyBytes` and the VM's [`MAX_HUB_BYTES`].
    pub fn reads_answer(&self, token: u32, status: Option<u32>, size: usize) -> bool {
        if status == Some(504) && size == ENVOY_TIMEOUT_BODY.len() {
            return true;
        }
        self.tokens
            .get(&token)
            .and_then(|(id, _)| self.pending.get(id))
            .is_some_and(|p| {
                p.compare != CompareMode::Off
                    && !matches!(p.primary, Some(None))
                    && size <= p.max_body_bytes
                    && self.bytes.saturating_add(size) <= MAX_HUB_BYTES
            })
    }

    /// The shadow answered `token` (`status` `None`: no response at all) at `now_ms`, with
    /// `body` read whole.
    /// A copy's answer: its body is read (`read`, the host's copy) only if
    /// [`Self::reads_answer`] says the comparison needs it, else the outcome counts unread.
    pub fn answer(
        &mut self,
        token: u32,
        status: Option<u32>,
        size: usize,
        read: impl FnOnce() -> Vec<u8>,
        now_ms: u64,
    ) -> Vec<Event> {
        if self.reads_answer(token, status, size) {
            let body = read();
            self.shadow_done(token, status, body, now_ms)
        } else {
            self.shadow_unread(token, status, now_ms)
        }
    }

    pub fn shadow_done(
        &mut self,
        token: u32,
        status: Option<u32>,
        body: Vec<u8>,
        now_ms: u64,
    ) -> Vec<Event> {
        self.answered(token, status, Some(body), now_ms)
    }

    /// The shadow answered `token` and its body was not read ([`Hub::reads_answer`]): the
    /// outcome counts, the copy is not compared (as for a primary answer over the cap).
    pub fn shadow_unread(&mut self, token: u32, status: Option<u32>, now_ms: u64) -> Vec<Event> {
        self.answered(token, status, None, now_ms)
    }

    fn answered(
        &mut self,
        token: u32,
        status: Option<u32>,
        body: Option<Vec<u8>>,
        now_ms: u64,
    ) -> Vec<Event> {
        let Some((id, sent_ms)) = self.tokens.remove(&token) else {
            return vec![];
        };
        let Some(p) = self.pending.get_mut(&id) else {
            return vec![];
        };
        let outcome = if status == Some(504) && body.as_deref() == Some(ENVOY_TIMEOUT_BODY) {
            Outcome::Timeout
        } else {
            classify(status, now_ms.saturating_sub(sent_ms), p.timeout_ms)
        };
        let ep = p.ep;
        let mut events = vec![Event::Outcome { ep, outcome }];
        // Over the cap or the VM's budget, the answer is not kept: no comparison.
        let room = MAX_HUB_BYTES
            .saturating_sub(self.bytes)
            .min(p.max_body_bytes);
        let body = body.filter(|b| b.len() <= room);
        let Some(body) = body.filter(|_| outcome == Outcome::Ok) else {
            self.remove(id);
            return events;
        };
        self.bytes += body.len();
        p.bytes += body.len();
        p.shadow = Some(Some(body));
        events.extend(self.settle(id));
        events
    }

    /// Room for `len` more bytes of copy `id`'s primary answer, which its stream collects:
    /// counted against [`MAX_HUB_BYTES`] from now on. `false`: over the shadow's
    /// `maxBodyBytes` or the VM's budget, or no longer compared; the stream stops collecting
    /// and reports the primary not comparable.
    pub fn hold_primary(&mut self, id: u64, len: usize) -> bool {
        let Some(p) = self.pending.get_mut(&id) else {
            return false;
        };
        let fits = p.primary.is_none()
            && p.held.saturating_add(len) <= p.max_body_bytes
            && self.bytes.saturating_add(len) <= MAX_HUB_BYTES;
        if fits {
            p.held += len;
            p.bytes += len;
            self.bytes += len;
        }
        fits
    }

    /// The primary response of copy `id` finished, with `body` (`None`: not comparable). The
    /// bytes held for it ([`Hub::hold_primary`]) become the body's; a body over the shadow's
    /// `maxBodyBytes` or the VM's budget is not comparable.
    pub fn primary_done(&mut self, id: u64, body: Option<Vec<u8>>) -> Vec<Event> {
        let Some(p) = self.pending.get_mut(&id) else {
            return vec![];
        };
        if p.primary.is_some() {
            return vec![];
        }
        let held = std::mem::take(&mut p.held);
        p.bytes = p.bytes.saturating_sub(held);
        self.bytes = self.bytes.saturating_sub(held);
        let room = MAX_HUB_BYTES
            .saturating_sub(self.bytes)
            .min(p.max_body_bytes);
        let body = body.filter(|b| b.len() <= room);
        let len = body.as_ref().map_or(0, Vec::len);
        self.bytes += len;
        p.bytes += len;
        p.primary = Some(body);
        self.settle(id)
    }

    fn settle(&mut self, id: u64) -> Vec<Event> {
        let ready = self
            .pending
            .get(&id)
            .is_some_and(|p| p.primary.is_some() && p.shadow.is_some());
        if !ready {
            return vec![];
        }
        let Some(p) = self.remove(id) else {
            return vec![];
        };
        match (p.primary, p.shadow) {
            (Some(Some(a)), Some(Some(b))) if p.compare != CompareMode::Off => {
                vec![Event::Agreement {
                    ep: p.ep,
                    matched: agree(p.compare, p.tolerance, &a, &b),
                }]
            }
            _ => vec![],
        }
    }

    fn remove(&mut self, id: u64) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        self.bytes = self.bytes.saturating_sub(p.bytes);
        Some(p)
    }

    /// Forget entries older than their timeout plus [`GRACE_MS`]: a shadow that never
    /// answered counts `timeout`; a primary that never finished is simply dropped.
    pub fn evict(&mut self, now_ms: u64) -> Vec<Event> {
        let old: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now_ms.saturating_sub(p.created_ms) > p.timeout_ms + GRACE_MS)
            .map(|(id, _)| *id)
            .collect();
        let mut events = vec![];
        for id in old {
            if let Some(p) = self.remove(id) {
                if p.shadow.is_none() {
                    events.push(Event::Outcome {
                        ep: p.ep,
                        outcome: Outcome::Timeout,
                    });
                }
            }
            self.tokens.retain(|_, (i, _)| *i != id);
        }
        self.queue.retain(|o| self.pending.contains_key(&o.id));
        events
    }
}

/// The outcome of a shadow call: no response, or one at/after the timeout, is `timeout` when
/// the time is up, else `error`; 5xx is `error` (Envoy answers a failed connect with a local
/// 503); anything else is `ok`.
pub fn classify(status: Option<u32>, elapsed_ms: u64, timeout_ms: u64) -> Outcome {
    let timed_out = elapsed_ms + 5 >= timeout_ms;
    match status {
        None if timed_out => Outcome::Timeout,
        None => Outcome::Error,
        Some(504) if timed_out => Outcome::Timeout,
        Some(s) if (200..500).contains(&s) => Outcome::Ok,
        Some(_) => Outcome::Error,
    }
}

/// Headers of the shadow copy: the client's headers minus hop-by-hop ones, framing (the
/// host sets `content-length` for the copied body), our own routing headers (`x-mlep-model`
/// carries the route key for a rollout's moved users: no model may see it) and, unless
/// `forward_credentials`, `authorization` and `cookie`; `:authority` becomes `authority`.
pub fn shadow_headers(
    headers: Vec<(String, String)>,
    authority: &str,
    forward_credentials: bool,
) -> Vec<(String, String)> {
    const DROP: [&str; 10] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "upgrade",
        "content-length",
        mlep_contract::metrics::VARIANT_HEADER,
        mlep_contract::metrics::MODEL_HEADER,
        ":authority",
    ];
    const CREDENTIALS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];
    let is = |k: &str, names: &[&str]| names.iter().any(|n| k.eq_ignore_ascii_case(n));
    // In place, no allocation per header (the vector is the one read for assignment).
    let mut out = headers;
    out.retain(|(k, _)| !is(k, &DROP) && (forward_credentials || !is(k, &CREDENTIALS)));
    out.push((":authority".to_owned(), authority.to_owned()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mode: CompareMode) -> CompareSpec {
        CompareSpec {
            mode,
            tolerance: 0.0,
            timeout_ms: 1000,
            max_body_bytes: 64,
        }
    }

    /// One compared copy, sent with call token 7; its id.
    fn compared_copy(hub: &mut Hub) -> u64 {
        let id = hub
            .submit(0, spec(CompareMode::Exact), vec![], b"in".to_vec(), 0)
            .unwrap();
        hub.drain();
        hub.sent(id, 2, 7, 0);
        id
    }

    const OK: Event = Event::Outcome {
        ep: 0,
        outcome: Outcome::Ok,
    };

    /// Bodies of uncompared copies holding all but `left` bytes of the VM's budget.
    fn fill_leaving(hub: &mut Hub, left: usize) {
        let filler = MAX_HUB_BYTES - hub.bytes() - left;
        hub.submit(1, spec(CompareMode::Off), vec![], vec![0; filler], 0)
            .unwrap();
        assert_eq!(hub.bytes(), MAX_HUB_BYTES - left);
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_shadow_answer_over_the_cap_is_not_read_and_counts_its_outcome_but_no_agreement() {
        let mut hub = Hub::new();
        let id = compared_copy(&mut hub);
        assert!(hub.reads_answer(7, Some(200), 64), "within the cap");
        assert!(!hub.reads_answer(7, Some(200), 65), "over the cap");
        assert_eq!(hub.shadow_unread(7, Some(200), 1), vec![OK]);
        assert_eq!((hub.in_flight(), hub.bytes()), (0, 0));
        assert!(hub.primary_done(id, Some(b"x".to_vec())).is_empty());
        // A body handed over anyway is not kept either.
        let id = compared_copy(&mut hub);
        assert!(hub.primary_done(id, Some(b"x".to_vec())).is_empty());
        assert_eq!(hub.shadow_done(7, Some(200), vec![b'x'; 65], 1), vec![OK]);
        assert_eq!((hub.in_flight(), hub.bytes()), (0, 0));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn envoys_timeout_reply_is_read_whatever_the_cap() {
        let mut hub = Hub::new();
        let id = hub
            .submit(
                0,
                CompareSpec {
                    max_body_bytes: 4,
                    ..spec(CompareMode::Off)
                },
                vec![],
                vec![],
                0,
            )
            .unwrap();
        hub.sent(id, 0, 7, 0);
        assert!(hub.reads_answer(7, Some(504), ENVOY_TIMEOUT_BODY.len()));
        assert!(!hub.reads_answer(7, Some(200), 2), "not compared: not read");
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_shadow_answer_the_vms_budget_cannot_hold_drops_the_comparison() {
        let mut hub = Hub::new();
        let id = compared_copy(&mut hub);
        assert!(hub.primary_done(id, Some(b"xy".to_vec())).is_empty());
        fill_leaving(&mut hub, 1);
        assert!(
            !hub.reads_answer(7, Some(200), 2),
            "within the cap, not the budget"
        );
        assert_eq!(hub.shadow_done(7, Some(200), b"xy".to_vec(), 1), vec![OK]);
        assert_eq!(hub.in_flight(), 1, "only the filler is left");
        assert_eq!(hub.bytes(), MAX_HUB_BYTES - 3, "the filler's bytes");
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_primary_answer_the_vms_budget_cannot_hold_is_not_comparable() {
        let mut hub = Hub::new();
        let id = compared_copy(&mut hub);
        fill_leaving(&mut hub, 1);
        assert!(hub.primary_done(id, Some(b"xy".to_vec())).is_empty());
        assert!(hub.bytes() <= MAX_HUB_BYTES);
        assert!(
            !hub.reads_answer(7, Some(200), 2),
            "no comparison left to read for"
        );
        assert_eq!(hub.shadow_unread(7, Some(200), 1), vec![OK]);
        assert_eq!(hub.bytes(), MAX_HUB_BYTES - 1);
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_primary_answer_is_counted_against_the_budget_as_it_is_collected() {
        let mut hub = Hub::new();
        let id = compared_copy(&mut hub);
        assert!(hub.hold_primary(id, 40));
        assert_eq!(hub.bytes(), 40);
        assert!(!hub.hold_primary(id, 25), "40 + 25 is over the cap of 64");
        assert!(hub.hold_primary(id, 24));
        // The held bytes become the body's, not counted twice.
        assert!(hub.primary_done(id, Some(vec![b'x'; 64])).is_empty());
        assert_eq!(hub.bytes(), 64);
        assert_eq!(
            hub.shadow_done(7, Some(200), vec![b'x'; 64], 1),
            vec![
                OK,
                Event::Agreement {
                    ep: 0,
                    matched: true
                }
            ]
        );
        assert_eq!(hub.bytes(), 0);
        // Given up part way (not comparable): what was held is released.
        let id = compared_copy(&mut hub);
        assert!(hub.hold_primary(id, 30));
        fill_leaving(&mut hub, 10);
        assert!(!hub.hold_primary(id, 11), "over the VM's budget");
        assert!(hub.primary_done(id, None).is_empty());
        assert_eq!(hub.bytes(), MAX_HUB_BYTES - 40);
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn agreement_is_recorded_whichever_side_finishes_first() {
        let mut hub = Hub::new();
        let a = hub
            .submit(0, spec(CompareMode::Exact), vec![], b"in".to_vec(), 0)
            .unwrap();
        let b = hub
            .submit(0, spec(CompareMode::Exact), vec![], b"in".to_vec(), 0)
            .unwrap();
        for o in hub.drain() {
            hub.sent(o.id, o.body.len(), o.id as u32 + 100, 1);
        }
        // a: primary first; b: shadow first.
        assert!(hub.primary_done(a, Some(b"x".to_vec())).is_empty());
        assert_eq!(
            hub.shadow_done(a as u32 + 100, Some(200), b"x".to_vec(), 2),
            vec![
                Event::Outcome {
                    ep: 0,
                    outcome: Outcome::Ok
                },
                Event::Agreement {
                    ep: 0,
                    matched: true
                }
            ]
        );
        assert_eq!(
            hub.shadow_done(b as u32 + 100, Some(200), b"y".to_vec(), 2)
                .len(),
            1
        );
        assert_eq!(
            hub.primary_done(b, Some(b"x".to_vec())),
            vec![Event::Agreement {
                ep: 0,
                matched: false
            }]
        );
        assert_eq!((hub.in_flight(), hub.bytes()), (0, 0));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn a_failed_shadow_counts_an_outcome_and_no_agreement() {
        let mut hub = Hub::new();
        let a = hub
            .submit(0, spec(CompareMode::Exact), vec![], vec![], 0)
            .unwrap();
        hub.drain();
        hub.sent(a, 0, 7, 0);
        assert_eq!(
            hub.shadow_done(7, Some(503), vec![], 3),
            vec![Event::Outcome {
                ep: 0,
                outcome: Outcome::Error
            }]
        );
        assert!(hub.primary_done(a, Some(vec![])).is_empty());
        assert_eq!(hub.in_flight(), 0);
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn the_hub_is_bounded_and_evicts_stale_entries() {
        let mut hub = Hub::new();
        for _ in 0..MAX_PENDING {
            assert!(hub
                .submit(0, spec(CompareMode::Json), vec![], vec![1], 0)
                .is_some());
        }
        assert!(hub
            .submit(0, spec(CompareMode::Json), vec![], vec![1], 0)
            .is_none());
        let events = hub.evict(1000 + GRACE_MS + 1);
        assert_eq!(events.len(), MAX_PENDING);
        assert!(events.iter().all(|e| *e
            == Event::Outcome {
                ep: 0,
                outcome: Outcome::Timeout
            }));
        assert_eq!((hub.in_flight(), hub.queued(), hub.bytes()), (0, 0, 0));
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn oversized_bodies_are_refused_by_byte_budget() {
        let mut hub = Hub::new();
        assert!(hub
            .submit(
                0,
                spec(CompareMode::Off),
                vec![],
                vec![0; MAX_HUB_BYTES + 1],
                0
            )
            .is_none());
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn compare_off_settles_on_the_shadow_response_alone() {
        let mut hub = Hub::new();
        let a = hub
            .submit(0, spec(CompareMode::Off), vec![], vec![], 0)
            .unwrap();
        hub.sent(a, 0, 1, 0);
        assert!(!hub.reads_answer(1, Some(200), 0));
        assert_eq!(
            hub.shadow_done(1, Some(200), vec![], 1),
            vec![Event::Outcome {
                ep: 0,
                outcome: Outcome::Ok
            }]
        );
        assert_eq!(hub.in_flight(), 0);
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn envoys_own_timeout_reply_counts_as_timeout_whenever_it_arrives() {
        let mut hub = Hub::new();
        let a = hub
            .submit(0, spec(CompareMode::Off), vec![], vec![], 0)
            .unwrap();
        hub.sent(a, 0, 9, 100);
        assert_eq!(
            hub.shadow_done(9, Some(504), ENVOY_TIMEOUT_BODY.to_vec(), 150),
            vec![Event::Outcome {
                ep: 0,
                outcome: Outcome::Timeout
            }]
        );
        let b = hub
            .submit(0, spec(CompareMode::Off), vec![], vec![], 0)
            .unwrap();
        hub.sent(b, 0, 10, 100);
        assert_eq!(
            hub.shadow_done(10, Some(504), b"gateway says no".to_vec(), 150),
            vec![Event::Outcome {
                ep: 0,
                outcome: Outcome::Error
            }],
            "a 504 of the shadow's own, early, is its error"
        );
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn outcomes_are_classified_by_status_and_time() {
        assert_eq!(classify(Some(200), 10, 1000), Outcome::Ok);
        assert_eq!(classify(Some(404), 10, 1000), Outcome::Ok);
        assert_eq!(classify(Some(503), 10, 1000), Outcome::Error);
        assert_eq!(classify(Some(504), 1000, 1000), Outcome::Timeout);
        assert_eq!(classify(None, 1000, 1000), Outcome::Timeout);
        assert_eq!(classify(None, 3, 1000), Outcome::Error);
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    fn credentials_framing_and_routing_headers_are_dropped_from_copies() {
        let h = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let input = vec![
            h(":method", "POST"),
            h(":authority", "api"),
            h("Authorization", "Bearer x"),
            h("cookie", "a=1"),
            h("content-length", "3"),
            h("x-user-id", "u"),
            h("x-mlep-variant", "a"),
            h("x-mlep-model", "m2.Zm9yLXRoZS1leGFtcGxlLW9ubHk"),
        ];
        let out = shadow_headers(input.clone(), "shadow", false);
        assert_eq!(
            out,
            vec![
                h(":method", "POST"),
                h("x-user-id", "u"),
                h(":authority", "shadow")
            ]
        );
        let out = shadow_headers(input, "shadow", true);
        assert!(out.contains(&h("Authorization", "Bearer x")) && out.contains(&h("cookie", "a=1")));
    }
}
