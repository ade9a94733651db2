//! Which record goes in which file, when a file is due, and what the memory bound refuses or
//! gives up. Pure: no I/O, and the clock is a parameter (`now`, milliseconds on any monotonic
//! scale); the writer ([`crate::writer`]) does the puts and reports back.
//!
//! A record joins the open batch of its (endpoint, variant, UTC hour of its own time). A batch
//! is sealed into a file when it holds `max_file_bytes` or its first record arrived
//! `max_file_age_ms` ago; sealed files wait for the writer, oldest first. Every byte held,
//! open or sealed, counts against `max_buffer_bytes`: a record that would go over is refused
//! ([`BufferFull`]), never queued. When a put fails the store is treated as down: one file is
//! retried at a time, after a backoff that doubles up to a cap; a file still unwritten
//! `give_up_after_ms` after it opened is given up ([`Lost`]), which frees its bytes.

use std::collections::BTreeMap;

use bytes::Bytes;
use mlep_contract::capture::{object_dir, rfc3339_ms};

const HOUR_MS: u64 = 3_600_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A batch holding this many bytes is sealed into a file.
    pub max_file_bytes: u64,
    /// A batch whose first record arrived this long ago is sealed into a file.
    pub max_file_age_ms: u64,
    /// Bytes of records held in memory, open and sealed, at most.
    pub max_buffer_bytes: u64,
    /// While the store fails, a file unwritten this long after its first record arrived is
    /// given up.
    pub give_up_after_ms: u64,
    /// The wait after the first failed put; it doubles with each further failure...
    pub backoff_initial_ms: u64,
    /// ...up to this.
    pub backoff_max_ms: u64,
}

impl Limits {
    /// The given bounds; files are given up after 10 × `max_file_age_ms` of failures, and
    /// retries wait 200 ms doubling to 5 s.
    pub fn new(max_file_bytes: u64, max_file_age_ms: u64, max_buffer_bytes: u64) -> Self {
        Self {
            max_file_bytes,
            max_file_age_ms,
            max_buffer_bytes,
            give_up_after_ms: max_file_age_ms.saturating_mul(10),
            backoff_initial_ms: 200,
            backoff_max_ms: 5_000,
        }
    }
}

/// A record refused: holding it would put the buffer over its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferFull {
    pub buffered: u64,
    pub record: u64,
    pub max: u64,
}

/// A file to write: `data` to the object at `path`.
#[derive(Clone, Debug, PartialEq)]
pub struct Put {
    pub seq: u64,
    pub path: String,
    pub data: Bytes,
}

/// A file written, or given up: whose records, how many.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub endpoint: String,
    pub records: u64,
    pub bytes: u64,
}

/// What the writer should do now.
#[derive(Debug, Default, PartialEq)]
pub struct Due {
    pub puts: Vec<Put>,
    /// Files given up (their records are lost).
    pub lost: Vec<Outcome>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    endpoint: String,
    variant: String,
    hour: u64,
}

struct Open {
    first_time_ms: u64,
    opened_at: u64,
    data: Vec<u8>,
    records: u64,
}

struct Sealed {
    endpoint: String,
    path: String,
    data: Bytes,
    records: u64,
    opened_at: u64,
    in_flight: bool,
}

impl Sealed {
    fn outcome(self) -> Outcome {
        Outcome {
            endpoint: self.endpoint,
            records: self.records,
            bytes: self.data.len() as u64,
        }
    }
}

pub struct Batcher {
    limits: Limits,
    prefix: String,
    instance: String,
    open: BTreeMap<Key, Open>,
    /// By sequence number: oldest first.
    sealed: BTreeMap<u64, Sealed>,
    buffered: u64,
    next_seq: u64,
    in_flight: usize,
    /// Failed puts since the last one that succeeded (0: the store is taken to be up).
    failures: u32,
    retry_at: u64,
}

impl Batcher {
    /// Files go under `prefix` (no trailing slash; may be empty) and are named with
    /// `instance`, which must be unique among sinks writing to the same place.
    pub fn new(limits: Limits, prefix: &str, instance: &str) -> Self {
        Self {
            limits,
            prefix: prefix.to_owned(),
            instance: instance.to_owned(),
            open: BTreeMap::new(),
            sealed: BTreeMap::new(),
            buffered: 0,
            next_seq: 1,
            in_flight: 0,
            failures: 0,
            retry_at: 0,
        }
    }

    /// Bytes held, open and sealed.
    pub fn buffered_bytes(&self) -> u64 {
        self.buffered
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.sealed.is_empty()
    }

    /// Add one record (a JSON line) of `endpoint`/`variant` with the record's own time.
    /// `Ok(true)` when it sealed a file (the writer has work now).
    pub fn push(
        &mut self,
        now: u64,
        endpoint: &str,
        variant: &str,
        time_ms: u64,
        line: &[u8],
    ) -> Result<bool, BufferFull> {
        let len = line.len() as u64;
        if self.buffered.saturating_add(len) > self.limits.max_buffer_bytes {
            return Err(BufferFull {
                buffered: self.buffered,
                record: len,
                max: self.limits.max_buffer_bytes,
            });
        }
        let key = Key {
            endpoint: endpoint.to_owned(),
            variant: variant.to_owned(),
            hour: time_ms / HOUR_MS,
        };
        let open = self.open.entry(key.clone()).or_insert_with(|| Open {
            first_time_ms: time_ms,
            opened_at: now,
            data: Vec::new(),
            records: 0,
        });
        open.data.extend_from_slice(line);
        open.records += 1;
        self.buffered += len;
        if open.data.len() as u64 >= self.limits.max_file_bytes {
            self.seal(key);
            return Ok(true);
        }
        Ok(false)
    }

    /// Seal the batches that are old enough, give up what the store cannot take, and hand
    /// out at most `slots` files to put (one at a time, after the backoff, while the store
    /// fails). Handed-out files are in flight until [`Self::written`] or [`Self::failed`].
    pub fn due(&mut self, now: u64, slots: usize) -> Due {
        let aged: Vec<Key> = self
            .open
            .iter()
            .filter(|(_, o)| now.saturating_sub(o.opened_at) >= self.limits.max_file_age_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for key in aged {
            self.seal(key);
        }
        let mut due = Due::default();
        if self.failures > 0 {
            let stale: Vec<u64> = self
                .sealed
                .iter()
                .filter(|(_, s)| {
                    !s.in_flight && now.saturating_sub(s.opened_at) >= self.limits.give_up_after_ms
                })
                .map(|(seq, _)| *seq)
                .collect();
            for seq in stale {
                if let Some(s) = self.sealed.remove(&seq) {
                    self.buffered -= s.data.len() as u64;
                    due.lost.push(s.outcome());
                }
            }
        }
        let allowed = if self.failures == 0 {
            slots
        } else if self.in_flight == 0 && now >= self.retry_at {
            slots.min(1)
        } else {
            0
        };
        for (seq, s) in self.sealed.iter_mut().filter(|(_, s)| !s.in_flight) {
            if due.puts.len() >= allowed {
                break;
            }
            s.in_flight = true;
            due.puts.push(Put {
                seq: *seq,
                path: s.path.clone(),
                data: s.data.clone(),
            });
        }
        self.in_flight += due.puts.len();
        due
    }

    /// The put of file `seq` succeeded: its bytes are freed, and the store is up.
    pub fn written(&mut self, seq: u64) -> Option<Outcome> {
        let s = self.sealed.remove(&seq)?;
        if s.in_flight {
            self.in_flight -= 1;
        }
        self.buffered -= s.data.len() as u64;
        self.failures = 0;
        Some(s.outcome())
    }

    /// The put of file `seq` failed: it stays, and the next try waits for the backoff.
    pub fn failed(&mut self, seq: u64, now: u64) {
        if let Some(s) = self.sealed.get_mut(&seq) {
            if s.in_flight {
                s.in_flight = false;
                self.in_flight -= 1;
            }
        }
        self.failures = self.failures.saturating_add(1);
        self.retry_at = now.saturating_add(self.backoff_ms());
    }

    /// The wait before the next try, after the failures so far.
    pub fn backoff_ms(&self) -> u64 {
        let doublings = self.failures.saturating_sub(1).min(32);
        self.limits
            .backoff_initial_ms
            .saturating_mul(1u64 << doublings)
            .min(self.limits.backoff_max_ms)
    }

    /// Seal every open batch (shutting down: everything is due).
    pub fn seal_all(&mut self) {
        let keys: Vec<Key> = self.open.keys().cloned().collect();
        for key in keys {
            self.seal(key);
        }
    }

    /// Give up everything still held, in flight or not (the shutdown deadline passed).
    pub fn give_up_all(&mut self) -> Vec<Outcome> {
        self.seal_all();
        self.buffered = 0;
        self.in_flight = 0;
        std::mem::take(&mut self.sealed)
            .into_values()
            .map(Sealed::outcome)
            .collect()
    }

    fn seal(&mut self, key: Key) {
        let Some(open) = self.open.remove(&key) else {
            return;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let dir = object_dir(
            &self.prefix,
            &key.endpoint,
            &key.variant,
            open.first_time_ms,
        );
        let path = format!(
            "{dir}/{}",
            file_name(open.first_time_ms, &self.instance, seq)
        );
        self.sealed.insert(
            seq,
            Sealed {
                endpoint: key.endpoint,
                path,
                data: Bytes::from(open.data),
                records: open.records,
                opened_at: open.opened_at,
                in_flight: false,
            },
        );
    }
}

/// `<yyyymmddThhmmssZ of the first record>-<instance>-<seq>.jsonl`: names sort by time within
/// an hour's directory, and sinks (instances) never collide.
pub fn file_name(first_time_ms: u64, instance: &str, seq: u64) -> String {
    let stamp: String = rfc3339_ms(first_time_ms)
        .chars()
        .take("yyyy-mm-ddThh:mm:ss".len())
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    format!("{stamp}Z-{instance}-{seq:06}.jsonl")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use proptest::prelude::*;

    // 2026-12-03T12:34:56.789Z
    const T: u64 = 1_796_301_296_789;

    fn limits(file: u64, age: u64, buffer: u64) -> Limits {
        Limits::new(file, age, buffer)
    }

    fn line(n: usize) -> Vec<u8> {
        let mut l = vec![b'x'; n - 1];
        l.push(b'\n');
        l
    }

    #[test]
    fn a_batch_becomes_a_file_when_it_reaches_the_size_bound() {
        let mut b = Batcher::new(limits(100, 60_000, 1 << 20), "p", "sink-0");
        assert_eq!(b.push(0, "e", "v", T, &line(40)), Ok(false));
        assert_eq!(b.push(1, "e", "v", T, &line(40)), Ok(false));
        assert_eq!(b.due(2, 8).puts, vec![], "not due before 100 bytes or 60 s");
        assert_eq!(b.push(3, "e", "v", T + 5, &line(40)), Ok(true));
        // The next record starts a new batch.
        assert_eq!(b.push(4, "e", "v", T + 6, &line(10)), Ok(false));
        let due = b.due(5, 8);
        assert_eq!(due.puts.len(), 1);
        let put = &due.puts[0];
        assert_eq!(put.data.len(), 120);
        assert_eq!(
            put.path,
            "p/e/v/2026/12/03/12/20261203T123456Z-sink-0-000001.jsonl"
        );
        assert_eq!(b.buffered_bytes(), 130);
        let w = b.written(put.seq).unwrap();
        assert_eq!((w.endpoint.as_str(), w.records, w.bytes), ("e", 3, 120));
        assert_eq!(b.buffered_bytes(), 10);
        assert_eq!(b.written(put.seq), None, "a file is written once");
    }

    #[test]
    fn a_batch_becomes_a_file_when_its_first_record_is_old_enough() {
        let mut b = Batcher::new(limits(1 << 20, 1_000, 1 << 20), "", "i");
        b.push(10_000, "e", "v", T, &line(10)).unwrap();
        b.push(10_500, "e", "v", T + 500, &line(10)).unwrap();
        assert!(b.due(10_999, 8).puts.is_empty());
        let due = b.due(11_000, 8);
        assert_eq!(due.puts.len(), 1);
        assert_eq!(due.puts[0].data.len(), 20);
        assert!(due.puts[0].path.starts_with("e/v/2026/12/03/12/"));
        assert!(
            b.due(11_001, 8).puts.is_empty(),
            "in flight, not handed out twice"
        );
    }

    #[test]
    fn records_of_another_hour_endpoint_or_variant_go_to_another_file() {
        let mut b = Batcher::new(limits(1 << 20, 1_000, 1 << 20), "cap", "i");
        let last_ms_of_12h = 1_796_302_799_999; // 2026-12-03T12:59:59.999Z
        b.push(0, "e", "v", last_ms_of_12h, &line(10)).unwrap();
        b.push(0, "e", "v", last_ms_of_12h + 1, &line(10)).unwrap();
        b.push(0, "e", "w", last_ms_of_12h, &line(10)).unwrap();
        b.push(0, "f", "v", last_ms_of_12h, &line(10)).unwrap();
        b.push(0, "e", "v", last_ms_of_12h - 5, &line(10)).unwrap();
        let mut paths: Vec<(String, usize)> = b
            .due(1_000, 8)
            .puts
            .into_iter()
            .map(|p| (p.path, p.data.len()))
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            vec![
                (
                    "cap/e/v/2026/12/03/12/20261203T125959Z-i-000001.jsonl".to_string(),
                    20
                ),
                (
                    "cap/e/v/2026/12/03/13/20261203T130000Z-i-000002.jsonl".to_string(),
                    10
                ),
                (
                    "cap/e/w/2026/12/03/12/20261203T125959Z-i-000003.jsonl".to_string(),
                    10
                ),
                (
                    "cap/f/v/2026/12/03/12/20261203T125959Z-i-000004.jsonl".to_string(),
                    10
                ),
            ]
        );
    }

    #[test]
    fn a_record_that_would_overflow_the_buffer_is_refused_and_written_files_free_room() {
        let mut b = Batcher::new(limits(50, 60_000, 100), "", "i");
        b.push(0, "e", "v", T, &line(60)).unwrap();
        assert_eq!(
            b.push(0, "e", "v", T, &line(41)),
            Err(BufferFull {
                buffered: 60,
                record: 41,
                max: 100
            })
        );
        assert_eq!(b.buffered_bytes(), 60, "a refused record holds nothing");
        b.push(0, "e", "v", T, &line(40)).unwrap();
        assert_eq!(b.buffered_bytes(), 100);
        let put = b.due(0, 8).puts.remove(0);
        b.failed(put.seq, 0);
        assert_eq!(b.buffered_bytes(), 100, "a failed file stays held");
        assert!(b.push(0, "e", "v", T, &line(1)).is_err());
        let put = b.due(200, 8).puts.remove(0);
        assert_eq!(put.data.len(), 60);
        b.written(put.seq).unwrap();
        assert_eq!(b.buffered_bytes(), 40, "the open batch is still held");
        assert!(b.push(0, "e", "v", T, &line(60)).is_ok());
        assert!(b.push(0, "e", "v", T, &line(1)).is_err());
    }

    #[test]
    fn while_the_store_fails_one_file_is_retried_at_a_time_after_a_doubling_backoff() {
        let mut b = Batcher::new(limits(10, 60_000, 1 << 20), "", "i");
        for _ in 0..3 {
            b.push(0, "e", "v", T, &line(10)).unwrap();
        }
        let puts = b.due(0, 8).puts;
        assert_eq!(puts.len(), 3, "a healthy store takes files in parallel");
        b.failed(puts[0].seq, 1_000);
        b.failed(puts[1].seq, 1_000);
        assert_eq!(b.backoff_ms(), 400);
        assert!(b.due(1_000, 8).puts.is_empty(), "one is still in flight");
        b.failed(puts[2].seq, 1_000);
        assert_eq!(b.backoff_ms(), 800);
        assert!(b.due(1_799, 8).puts.is_empty(), "backing off");
        let probe = b.due(1_800, 8).puts;
        assert_eq!(probe.len(), 1, "one probe at a time");
        assert_eq!(probe[0].seq, puts[0].seq, "oldest first");
        for _ in 0..10 {
            b.failed(probe[0].seq, 0);
        }
        assert_eq!(b.backoff_ms(), 5_000, "capped");
        let probe = b.due(5_000, 8).puts;
        b.written(probe[0].seq).unwrap();
        assert_eq!(b.due(5_000, 8).puts.len(), 2, "back up: the rest at once");
    }

    #[test]
    fn files_the_store_cannot_take_are_given_up_after_ten_file_ages_and_free_their_bytes() {
        let mut b = Batcher::new(limits(1 << 20, 100, 1 << 20), "", "i");
        b.push(0, "e", "v", T, &line(10)).unwrap();
        b.push(50, "e", "v", T, &line(10)).unwrap();
        b.push(50, "f", "v", T, &line(10)).unwrap();
        let puts = b.due(150, 8).puts;
        assert_eq!(puts.len(), 2);
        for p in &puts {
            b.failed(p.seq, 150);
        }
        assert!(b.due(150, 8).lost.is_empty());
        assert!(b.due(999, 0).lost.is_empty());
        let mut lost = b.due(1_050, 0).lost;
        lost.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        assert_eq!(
            lost,
            vec![
                Outcome {
                    endpoint: "e".into(),
                    records: 2,
                    bytes: 20
                },
                Outcome {
                    endpoint: "f".into(),
                    records: 1,
                    bytes: 10
                }
            ]
        );
        assert_eq!(b.buffered_bytes(), 0);
        assert!(b.is_empty());
    }

    #[test]
    fn old_files_are_not_given_up_while_the_store_works() {
        let mut b = Batcher::new(limits(1 << 20, 100, 1 << 20), "", "i");
        b.push(0, "e", "v", T, &line(10)).unwrap();
        let due = b.due(100_000, 0);
        assert!(due.lost.is_empty() && due.puts.is_empty());
        assert_eq!(b.due(100_000, 1).puts.len(), 1);
    }

    #[test]
    fn shutting_down_seals_everything_and_whatever_is_left_is_accounted() {
        let mut b = Batcher::new(limits(1 << 20, 60_000, 1 << 20), "", "i");
        b.push(0, "e", "v", T, &line(10)).unwrap();
        b.push(0, "e", "w", T, &line(10)).unwrap();
        b.seal_all();
        let puts = b.due(0, 1).puts;
        assert_eq!(puts.len(), 1);
        let left = b.give_up_all();
        assert_eq!(left.iter().map(|o| o.records).sum::<u64>(), 2);
        assert_eq!((b.buffered_bytes(), b.is_empty()), (0, true));
        assert!(b.due(0, 8).puts.is_empty());
    }

    #[test]
    fn file_names_carry_the_first_records_second_the_instance_and_the_sequence() {
        assert_eq!(
            file_name(T, "sink-7f", 42),
            "20261203T123456Z-sink-7f-000042.jsonl"
        );
        assert_eq!(
            file_name(0, "i", 1_234_567),
            "19700101T000000Z-i-1234567.jsonl"
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push { endpoint: u8, hour: u8, len: u16 },
        Tick { ms: u16, slots: u8 },
        Finish { ok: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, 0u8..3, 1u16..400).prop_map(|(endpoint, hour, len)| Op::Push {
                endpoint,
                hour,
                len
            }),
            (0u16..500, 0u8..4).prop_map(|(ms, slots)| Op::Tick { ms, slots }),
            any::<bool>().prop_map(|ok| Op::Finish { ok }),
        ]
    }

    proptest! {
        /// Whatever arrives and however the store behaves: the buffer never holds more than its
        /// bound, it holds exactly what is neither written nor given up, and every accepted
        /// record ends up written or given up exactly once.
        #[test]
        fn every_accepted_record_is_written_or_given_up_once_within_the_bound(
            ops in proptest::collection::vec(op(), 1..200)
        ) {
            let mut b = Batcher::new(limits(700, 300, 2_000), "p", "i");
            let (mut now, mut accepted, mut accepted_bytes) = (0u64, 0u64, 0u64);
            let (mut done, mut done_bytes) = (0u64, 0u64);
            let mut in_flight: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    Op::Push { endpoint, hour, len } => {
                        let l = line(usize::from(len));
                        let t = T + u64::from(hour) * HOUR_MS;
                        if b.push(now, &format!("e{endpoint}"), "v", t, &l).is_ok() {
                            accepted += 1;
                            accepted_bytes += l.len() as u64;
                        }
                    }
                    Op::Tick { ms, slots } => {
                        now += u64::from(ms);
                        let due = b.due(now, usize::from(slots));
                        for lost in due.lost {
                            done += lost.records;
                            done_bytes += lost.bytes;
                        }
                        for p in due.puts {
                            prop_assert!(!in_flight.contains(&p.seq));
                            in_flight.push(p.seq);
                        }
                    }
                    Op::Finish { ok } => {
                        if let Some(seq) = in_flight.pop() {
                            if ok {
                                let w = b.written(seq).unwrap();
                                done += w.records;
                                done_bytes += w.bytes;
                            } else {
                                b.failed(seq, now);
                            }
                        }
                    }
                }
                prop_assert!(b.buffered_bytes() <= 2_000);
                prop_assert_eq!(b.buffered_bytes(), accepted_bytes - done_bytes);
            }
            for seq in in_flight {
                let w = b.written(seq).unwrap();
                done += w.records;
            }
            done += b.give_up_all().iter().map(|o| o.records).sum::<u64>();
            prop_assert_eq!(done, accepted);
        }
    }
}
