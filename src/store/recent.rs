//! The embedded store's newest idempotency records, held in memory.
//!
//! A `request_id` is the client's UUID, random: inserting it into a B-tree
//! keyed by it dirties a random leaf page per request, and that page is
//! written twice (into the WAL at commit, into the database at the
//! checkpoint). Measured on a store of 400,000 messages, that cost sends
//! with a `request_id` a third of their throughput (docs/PERFORMANCE.md).
//!
//! So a new record is appended to `requests_recent` (in arrival order, a
//! page filled after another) and kept here, where lookups find it; once
//! enough have gathered, the writer moves them, in key order, into a run of
//! their own in `request_runs` (see [`super::runs`]), a chunk in each
//! batch's commit, so that the move only appends and costs no commit of its
//! own. Only then are they removed from `requests_recent` and from memory.
//! A crash at any point loses nothing: the records are durable in one table
//! or the other, and a run is read only once it is complete.
//!
//! A fresh id is, by far, the common case, and looking it up costs a
//! descent through each live run. So a
//! Bloom filter of every key in `request_runs` answers "certainly not there"
//! for nearly all of them (1 % false positives at its capacity). It is
//! built by a thread of its own from `request_runs` while the writer starts
//! serving (until it is ready, every lookup reads the runs); the writer
//! adds what it moves meanwhile, and the filter grows by a segment when it
//! is full (see [`Keys`]).

use std::collections::HashMap;

use fastbloom::BloomFilter;

use crate::domain::Id;

/// Records gathered before the writer moves them into `request_runs`, unless
/// configured otherwise. With those that arrive during a move, at most
/// about twice this many are held (see [`move_budget`]): at most about
/// 41 MiB of memory, the map's room for them (80 bytes a record and its
/// control byte, at most 7/8 full), plus a move's sorted keys and rows.
pub const DEFAULT_MOVE_AT: usize = 131_072;

/// Records moved into `request_runs` per commit at most (the writer adds a
/// step of the move to each batch's transaction, and a step of a merge or
/// of a merged run's removal, each at most this many records): together
/// they dirty at most twice this many pages, 8 MiB of WAL, which a batch's
/// 32 MiB at most and the 16 MiB at which the writer checkpoints leave room
/// for under the WAL's 64 MiB bound. Rows are removed from
/// `requests_recent` this many at a time (neighbours there: a handful of
/// pages).
pub const MOVE_CHUNK: usize = 1_024;

/// Records moved per request of the batch that carries them: five for
/// every four, and at least [`MOVE_MIN`]. The move is paid for as the
/// records arrive, a few in each commit, instead of in a burst of full
/// chunks that held the writer at half speed for a second out of every
/// eight (docs/PERFORMANCE.md). At five for four, a move of `M` records
/// is inserted while at most `0.8 M` more arrive, and its rows are then
/// removed [`MOVE_CHUNK`] per commit while at most `M / 8` more do (at
/// most 128 requests a batch): under `M` in all, so the next move is no
/// larger than the threshold and at most about `2 M` records are ever held.
/// (At one for one, each move was larger than the one before by what
/// arrived during its removal, without end.)
pub fn move_budget(requests: usize) -> usize {
    requests
        .saturating_add(requests.div_ceil(4))
        .clamp(MOVE_MIN, MOVE_CHUNK)
}

/// The fewest records a step of a move inserts, however small its batch.
pub const MOVE_MIN: usize = 16;

/// An idempotency record's key: the caller and the method by their
/// number in [`Recent`]'s table of names (a handful of each), and the
/// client's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    caller: u32,
    method: u32,
    request_id: Id,
}

/// What a record remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The request's fingerprint.
    pub fingerprint: [u8; 32],
    /// The resource it created or touched.
    pub resource: Id,
    /// Its row in `requests_recent`.
    pub row: i64,
}

/// A record as `request_runs` stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Who made the request.
    pub caller: &'a str,
    /// The method.
    pub method: &'a str,
    /// The client's id for it.
    pub request_id: Id,
    /// What it remembers.
    pub record: &'a Record,
}

/// The false-positive rate of the filter's first segment at capacity;
/// each next one has half its predecessor's, so that all of them together
/// stay under twice this (1 %).
const FILTER_FALSE_POSITIVES: f64 = 0.005;

/// The smallest capacity the filter is built for (about 1.4 MiB).
pub const FILTER_MIN_CAPACITY: usize = 1 << 20;

/// What the filter hashes for a key: the same for the writer and for the
/// thread that builds it.
pub fn filter_item<'a>(
    caller: &'a str,
    method: &'a str,
    request_id: &'a Id,
) -> impl std::hash::Hash + 'a {
    (caller, method, request_id.0.as_bytes())
}

/// A filter of the keys in `request_runs` that grows as they do, never
/// built again: a full segment is followed by one of twice its capacity
/// and half its false-positive rate (a scalable Bloom filter). Building it
/// again once full, from every key, took a second of a core every time
/// the keys doubled, and the writer's checkpoints waited on that reader.
#[derive(Debug)]
pub struct Keys {
    segments: Vec<Segment>,
}

#[derive(Debug)]
struct Segment {
    filter: BloomFilter,
    capacity: usize,
    keys: usize,
    false_positives: f64,
}

impl Segment {
    fn new(capacity: usize, false_positives: f64) -> Segment {
        Segment {
            filter: BloomFilter::with_false_pos(false_positives).expected_items(capacity),
            capacity,
            keys: 0,
            false_positives,
        }
    }
}

impl Keys {
    /// Empty, with room for twice `keys` (at least
    /// [`FILTER_MIN_CAPACITY`]) before it grows.
    pub fn new(keys: usize) -> Keys {
        Keys::with_capacity(keys.saturating_mul(2).max(FILTER_MIN_CAPACITY))
    }

    fn with_capacity(capacity: usize) -> Keys {
        Keys {
            segments: vec![Segment::new(capacity.max(1), FILTER_FALSE_POSITIVES)],
        }
    }

    /// Adds a key (see [`filter_item`]).
    pub fn insert(&mut self, item: &impl std::hash::Hash) {
        let next = match self.segments.last() {
            Some(last) if last.keys < last.capacity => None,
            Some(last) => Some(Segment::new(
                last.capacity.saturating_mul(2),
                last.false_positives / 2.0,
            )),
            None => Some(Segment::new(FILTER_MIN_CAPACITY, FILTER_FALSE_POSITIVES)),
        };
        if let Some(segment) = next {
            self.segments.push(segment);
        }
        if let Some(last) = self.segments.last_mut() {
            last.filter.insert(item);
            last.keys += 1;
        }
    }

    /// Whether the key may have been added: `false` means certainly not.
    pub fn contains(&self, item: &impl std::hash::Hash) -> bool {
        self.segments.iter().any(|s| s.filter.contains(item))
    }

    /// Keys added.
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.keys).sum()
    }

    /// Whether none was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What it was sized for so far.
    pub fn capacity(&self) -> usize {
        self.segments.iter().map(|s| s.capacity).sum()
    }
}

/// Which keys `request_runs` may hold.
#[derive(Debug)]
enum Filter {
    /// Being built, at start; what the writer moved into `request_runs`
    /// meanwhile, to add once it is.
    Building(Vec<Key>),
    /// Every key of `request_runs` is in it.
    Ready(Keys),
    /// It could not be built: every lookup reads the runs.
    Off,
}

/// A move of records into `request_runs` under way: committed records only,
/// each with the row of `requests_recent` it was read from.
#[derive(Debug)]
struct Move {
    /// The records being moved, in the order of `request_runs`' key.
    keys: Vec<Key>,
    /// Their rows in `requests_recent`, ascending.
    rows: Vec<i64>,
    /// How many of `keys` are in `request_runs` already.
    inserted: usize,
    /// How many of `rows` are removed already.
    removed: usize,
    /// When it started.
    started: std::time::Instant,
    /// The run it writes (see [`super::runs`]).
    run: i64,
}

impl Move {
    /// The next keys to insert, at most `budget` and at least one.
    fn next_keys(&self, budget: usize) -> &[Key] {
        let end = (self.inserted + budget.clamp(1, MOVE_CHUNK)).min(self.keys.len());
        &self.keys[self.inserted..end]
    }
}

/// The next step of a move, done inside a batch's transaction.
#[derive(Debug)]
pub enum Step<'a> {
    /// No move is under way.
    Idle,
    /// Insert these records into the move's run.
    Insert {
        /// The run.
        run: i64,
        /// The records, in key order.
        entries: Vec<Entry<'a>>,
        /// The move's first chunk.
        first: bool,
        /// Its last chunk: once it commits, the run is complete, with
        /// `records` records.
        last: bool,
        records: usize,
    },
    /// Remove these rows from `requests_recent`: every record of the move
    /// is in `request_runs`.
    Remove(&'a [i64]),
}

/// Which kind of step a committed transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDone {
    /// Nothing.
    Idle,
    /// Inserted this many of the move's keys; `completed`: the last of
    /// them, and its run (number, records) is now complete.
    Inserted {
        keys: usize,
        completed: Option<(i64, i64)>,
    },
    /// Removed a chunk of rows.
    Removed,
}

/// The records of `requests_recent`, and the batch's own additions until
/// it commits.
#[derive(Debug)]
pub struct Recent {
    /// How many gather before a move starts.
    move_at: usize,
    /// Callers' and methods' names, by number.
    names: Vec<Box<str>>,
    numbers: HashMap<Box<str>, u32>,
    records: HashMap<Key, Record>,
    /// Added by the batch not yet committed.
    pending: Vec<Key>,
    moving: Option<Move>,
    filter: Filter,
}

impl Default for Recent {
    fn default() -> Recent {
        Recent::new(DEFAULT_MOVE_AT)
    }
}

impl Recent {
    /// None held yet; a move starts once `move_at` have gathered.
    pub fn new(move_at: usize) -> Recent {
        let move_at = move_at.max(1);
        Recent {
            move_at,
            names: Vec::new(),
            numbers: HashMap::new(),
            // Room for a whole move and what arrives during it, so that
            // the map never rehashes on the writer's path.
            records: HashMap::with_capacity(move_at.saturating_mul(2).min(1 << 24)),
            pending: Vec::new(),
            moving: None,
            filter: Filter::Building(Vec::new()),
        }
    }

    /// Whether `request_runs` may hold this key: `false` only when the filter
    /// is ready and certain it does not.
    pub fn may_be_indexed(&self, caller: &str, method: &str, request_id: Id) -> bool {
        match &self.filter {
            Filter::Ready(keys) => keys.contains(&filter_item(caller, method, &request_id)),
            Filter::Building(_) | Filter::Off => true,
        }
    }

    /// The filter, built at start from `request_runs` (and whatever was
    /// moved meanwhile, added now); `None` if it could not be built.
    pub fn filter_built(&mut self, built: Option<Keys>) {
        let moved = match std::mem::replace(&mut self.filter, Filter::Off) {
            Filter::Building(moved) => moved,
            other => {
                self.filter = other;
                return;
            }
        };
        let Some(mut keys) = built else {
            return;
        };
        for k in &moved {
            keys.insert(&filter_item(
                &self.names[k.caller as usize],
                &self.names[k.method as usize],
                &k.request_id,
            ));
        }
        self.filter = Filter::Ready(keys);
    }

    /// Whether the filter is ready.
    pub fn filter_ready(&self) -> bool {
        matches!(self.filter, Filter::Ready(_))
    }

    /// The chunk [`Recent::step`] gave with this `budget` is written into
    /// `request_runs` (not yet committed): the filter takes its keys now (a key
    /// of a batch that then fails is a false positive, never a miss).
    /// Returns how many keys the chunk had.
    pub fn chunk_written(&mut self, budget: usize) -> usize {
        let Some(m) = &self.moving else { return 0 };
        if m.inserted >= m.keys.len() {
            return 0;
        }
        let chunk = m.next_keys(budget);
        match &mut self.filter {
            Filter::Building(moved) => moved.extend_from_slice(chunk),
            Filter::Ready(keys) => {
                for k in chunk {
                    keys.insert(&filter_item(
                        &self.names[k.caller as usize],
                        &self.names[k.method as usize],
                        &k.request_id,
                    ));
                }
            }
            Filter::Off => {}
        }
        chunk.len()
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn number(&mut self, name: &str) -> u32 {
        if let Some(n) = self.numbers.get(name) {
            return *n;
        }
        let n = self.names.len() as u32;
        self.names.push(name.into());
        self.numbers.insert(name.into(), n);
        n
    }

    fn key(&self, caller: &str, method: &str, request_id: Id) -> Option<Key> {
        Some(Key {
            caller: *self.numbers.get(caller)?,
            method: *self.numbers.get(method)?,
            request_id,
        })
    }

    /// The record of a request, if it is one of the recent ones.
    pub fn get(&self, caller: &str, method: &str, request_id: Id) -> Option<&Record> {
        self.records.get(&self.key(caller, method, request_id)?)
    }

    /// A record held as `requests_recent` stores it (at start).
    pub fn load(&mut self, caller: &str, method: &str, request_id: Id, record: Record) {
        let key = Key {
            caller: self.number(caller),
            method: self.number(method),
            request_id,
        };
        self.records.insert(key, record);
    }

    /// A record the current batch has written into `requests_recent`.
    pub fn insert(&mut self, caller: &str, method: &str, request_id: Id, record: Record) {
        let key = Key {
            caller: self.number(caller),
            method: self.number(method),
            request_id,
        };
        self.pending.push(key);
        self.records.insert(key, record);
    }

    /// The batch committed: its records stay.
    pub fn committed(&mut self) {
        self.pending.clear();
    }

    /// The batch did not commit: its records were never stored.
    pub fn rolled_back(&mut self) {
        for k in self.pending.drain(..) {
            self.records.remove(&k);
        }
    }

    /// Starts a move into a run of its own (numbered by `run`) once enough
    /// records have gathered. Called after a commit, so that it takes
    /// committed records only.
    pub fn start_move(&mut self, run: impl FnOnce() -> i64) {
        if self.moving.is_some() || self.records.len() < self.move_at || !self.pending.is_empty() {
            return;
        }
        let mut keys: Vec<Key> = self.records.keys().copied().collect();
        // `request_runs`' order: text compared bytewise, and a UUID's
        // lowercase hyphenated text sorts as its bytes do.
        let names = &self.names;
        keys.sort_unstable_by(|a, b| {
            (
                &names[a.caller as usize],
                &names[a.method as usize],
                a.request_id,
            )
                .cmp(&(
                    &names[b.caller as usize],
                    &names[b.method as usize],
                    b.request_id,
                ))
        });
        let mut rows: Vec<i64> = self.records.values().map(|r| r.row).collect();
        rows.sort_unstable();
        self.moving = Some(Move {
            keys,
            rows,
            inserted: 0,
            removed: 0,
            started: std::time::Instant::now(),
            run: run(),
        });
    }

    /// Whether a move is under way.
    pub fn moving(&self) -> bool {
        self.moving.is_some()
    }

    /// The move's next step: the next chunk of its records to insert into
    /// `request_runs`, in key order, or, once all are there, the next chunk of
    /// its rows to remove from `requests_recent`. A chunk to insert holds
    /// at most `budget` records (see [`move_budget`]), and at least one.
    pub fn step(&self, budget: usize) -> Step<'_> {
        let Some(m) = &self.moving else {
            return Step::Idle;
        };
        if m.inserted < m.keys.len() {
            let chunk = m.next_keys(budget);
            // A record of a move is forgotten only when the move ends.
            return Step::Insert {
                run: m.run,
                entries: chunk
                    .iter()
                    .filter_map(|k| {
                        Some(Entry {
                            caller: &self.names[k.caller as usize],
                            method: &self.names[k.method as usize],
                            request_id: k.request_id,
                            record: self.records.get(k)?,
                        })
                    })
                    .collect(),
                first: m.inserted == 0,
                last: m.inserted + chunk.len() == m.keys.len(),
                records: m.keys.len(),
            };
        }
        Step::Remove(&m.rows[m.removed..(m.removed + MOVE_CHUNK).min(m.rows.len())])
    }

    /// The step committed. Once the last of the move's rows is removed,
    /// forgets its records and returns how many were moved and how long it
    /// took.
    pub fn step_committed(&mut self, done: StepDone) -> Option<(usize, std::time::Duration)> {
        let m = self.moving.as_mut()?;
        match done {
            StepDone::Idle => return None,
            StepDone::Inserted { keys, .. } => m.inserted = (m.inserted + keys).min(m.keys.len()),
            StepDone::Removed => m.removed = (m.removed + MOVE_CHUNK).min(m.rows.len()),
        }
        if m.inserted < m.keys.len() || m.removed < m.rows.len() {
            return None;
        }
        let m = self.moving.take()?;
        let moved = m.keys.len();
        for k in m.keys {
            // Its row is gone; a record under the same key cannot have
            // been added since (a lookup found this one first).
            self.records.remove(&k);
        }
        Some((moved, m.started.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Id {
        Id(uuid::Uuid::from_u128(n))
    }

    fn record(row: i64) -> Record {
        Record {
            fingerprint: [0; 32],
            resource: id(row as u128),
            row,
        }
    }

    const SEND: &str = "SendMessage";

    #[test]
    fn a_batch_that_does_not_commit_leaves_no_record() {
        let mut r = Recent::new(10);
        r.load("iran", SEND, id(1), record(1));
        r.insert("iran", SEND, id(2), record(2));
        assert!(
            r.get("iran", SEND, id(2)).is_some(),
            "a batch sees its own records"
        );
        assert!(
            r.get("france", SEND, id(2)).is_none(),
            "scoped to the caller"
        );
        assert!(
            r.get("iran", "AcceptMessage", id(2)).is_none(),
            "and the method"
        );
        r.rolled_back();
        assert!(r.get("iran", SEND, id(2)).is_none());
        assert!(r.get("iran", SEND, id(1)).is_some());
        r.insert("iran", SEND, id(3), record(2));
        r.committed();
        r.rolled_back();
        assert!(r.get("iran", SEND, id(3)).is_some());
    }

    /// The budget of a move's step number `step`: varied, as batches vary,
    /// from none to more than a chunk.
    fn budget(step: usize) -> usize {
        (step * 389) % (MOVE_CHUNK + 200)
    }

    /// Runs the move under way to its end, as the writer would, one step
    /// per commit, with `during` called after each; returns the keys
    /// inserted and the rows removed, in order.
    fn run_move(
        r: &mut Recent,
        mut during: impl FnMut(&mut Recent, usize),
    ) -> (Vec<(String, Id)>, Vec<i64>) {
        let (mut inserted, mut removed) = (Vec::new(), Vec::new());
        let mut step = 0;
        while r.moving() {
            let b = budget(step);
            let done = match r.step(b) {
                Step::Idle => StepDone::Idle,
                Step::Insert { entries: chunk, .. } => {
                    assert!(!chunk.is_empty() && chunk.len() <= b.clamp(1, MOVE_CHUNK));
                    let n = chunk.len();
                    inserted.extend(chunk.iter().map(|e| (e.caller.to_string(), e.request_id)));
                    assert_eq!(r.chunk_written(b), n);
                    StepDone::Inserted {
                        keys: n,
                        completed: None,
                    }
                }
                Step::Remove(rows) => {
                    assert!(rows.len() <= MOVE_CHUNK);
                    removed.extend_from_slice(rows);
                    StepDone::Removed
                }
            };
            r.step_committed(done);
            during(r, step);
            step += 1;
        }
        (inserted, removed)
    }

    #[test]
    fn a_move_goes_in_key_order_and_keeps_what_came_during_it() {
        const AT: usize = 10_000;
        let mut r = Recent::new(AT);
        r.start_move(|| 1);
        assert!(!r.moving());
        // Inserted in a scrambled order, by two callers.
        for i in 0..AT as u128 {
            let n = (i * 7_919) % AT as u128;
            let caller = if n.is_multiple_of(3) {
                "united-states"
            } else {
                "iran"
            };
            r.insert(caller, SEND, id(n), record(i as i64 + 1));
        }
        r.committed();
        r.start_move(|| 1);
        assert!(r.moving());
        // A record that arrives meanwhile is not part of this move.
        let (moved, rows) = run_move(&mut r, |r, step| {
            r.insert(
                "iran",
                SEND,
                id(u128::MAX - step as u128),
                record(1_000_000 + step as i64),
            );
            r.committed();
        });
        assert_eq!(moved.len(), AT);
        assert!(moved.windows(2).all(|w| w[0] < w[1]), "in key order");
        assert_eq!(moved[0].0, "iran");
        assert_eq!(
            rows,
            (1..=AT as i64).collect::<Vec<_>>(),
            "exactly its own rows"
        );
        let inserting = (0..)
            .scan(0, |done, step| {
                (*done < AT).then(|| *done += budget(step).clamp(1, MOVE_CHUNK))
            })
            .count();
        assert_eq!(r.len(), inserting + AT.div_ceil(MOVE_CHUNK));
        assert!(r.get("iran", SEND, id(u128::MAX)).is_some());
        assert!(
            r.get("iran", SEND, id(1)).is_none(),
            "moved records are forgotten"
        );
    }

    #[test]
    fn a_move_never_takes_the_records_of_a_batch_that_has_not_committed() {
        let mut r = Recent::new(4);
        for n in 0..3 {
            r.insert("iran", SEND, id(n), record(n as i64 + 1));
        }
        r.committed();
        // The fourth arrives in a batch that then fails: no move starts
        // from it, and its row (4) may be handed out again.
        r.insert("iran", SEND, id(3), record(4));
        r.start_move(|| 1);
        assert!(!r.moving());
        r.rolled_back();
        r.start_move(|| 1);
        assert!(!r.moving());
        r.insert("iran", SEND, id(9), record(4));
        r.committed();
        r.start_move(|| 1);
        let (moved, rows) = run_move(&mut r, |_, _| {});
        assert_eq!(rows, vec![1, 2, 3, 4]);
        assert!(moved.contains(&("iran".to_string(), id(9))));
        assert!(!moved.contains(&("iran".to_string(), id(3))));
    }

    #[test]
    fn the_filter_never_misses_a_key_moved_while_it_was_built() {
        let mut r = Recent::new(8);
        assert!(
            r.may_be_indexed("iran", SEND, id(1)),
            "not built yet: ask the index"
        );
        for n in 0..8 {
            r.insert("iran", SEND, id(n), record(n as i64 + 1));
        }
        r.committed();
        // Moved while the filter is being built.
        r.start_move(|| 1);
        assert!(matches!(r.step(MOVE_CHUNK), Step::Insert { .. }));
        let n = r.chunk_written(MOVE_CHUNK);
        assert_eq!(n, 8);
        r.step_committed(StepDone::Inserted {
            keys: n,
            completed: None,
        });
        // Built from runs that hold id(100) only.
        let mut keys = Keys::new(1);
        keys.insert(&filter_item("iran", SEND, &id(100)));
        r.filter_built(Some(keys));
        assert!(r.filter_ready());
        for n in (0..8).chain([100]) {
            assert!(r.may_be_indexed("iran", SEND, id(n)), "key {n} missed");
        }
        let fresh = (1_000..11_000)
            .filter(|n| r.may_be_indexed("iran", SEND, id(*n)))
            .count();
        assert!(fresh < 300, "{fresh} of 10,000 fresh ids not filtered out");
    }

    #[test]
    fn a_full_filter_grows_and_keeps_its_false_positives_low() {
        let mut keys = Keys::with_capacity(100);
        for n in 0..10_000u128 {
            keys.insert(&filter_item("iran", SEND, &id(n)));
        }
        assert_eq!(keys.len(), 10_000);
        assert!(keys.capacity() >= 10_000, "it grew");
        for n in 0..10_000u128 {
            assert!(
                keys.contains(&filter_item("iran", SEND, &id(n))),
                "key {n} missed"
            );
        }
        let fresh = (1_000_000..1_100_000u128)
            .filter(|n| keys.contains(&filter_item("iran", SEND, &id(*n))))
            .count();
        assert!(
            fresh < 2_000,
            "{fresh} of 100,000 fresh ids not filtered out (2 % at most)"
        );
    }

    /// Batches of `j` new records each, as the writer runs them, for
    /// twenty moves: the records held never pass twice the threshold.
    #[test]
    fn under_sustained_writes_the_records_held_stay_bounded() {
        const AT: usize = 4_096;
        for j in [1usize, 25, 64, 128] {
            let mut r = Recent::new(AT);
            let (mut next, mut moves, mut most) = (0u128, 0, 0);
            while moves < 20 {
                for _ in 0..j {
                    r.insert("iran", SEND, id(next), record(next as i64 + 1));
                    next += 1;
                }
                let b = move_budget(j);
                let done = match r.step(b) {
                    Step::Idle => StepDone::Idle,
                    Step::Insert { .. } => StepDone::Inserted {
                        keys: r.chunk_written(b),
                        completed: None,
                    },
                    Step::Remove(_) => StepDone::Removed,
                };
                r.committed();
                moves += usize::from(r.step_committed(done).is_some());
                r.start_move(|| 1);
                most = most.max(r.len());
            }
            assert!(
                most <= 2 * AT + 2 * MOVE_MIN.max(j),
                "batches of {j}: {most} records held at once (threshold {AT})"
            );
        }
    }

    #[test]
    fn a_move_is_paced_by_its_batches() {
        assert_eq!(move_budget(1), MOVE_MIN);
        assert_eq!(move_budget(64), 80);
        assert_eq!(move_budget(100_000), MOVE_CHUNK);
    }

    #[test]
    fn key_order_is_the_order_of_the_stored_text() {
        let mut ids: Vec<Id> = (0..1000).map(|_| Id::new()).collect();
        ids.push(id(u128::MAX));
        ids.push(id(0));
        let mut by_text = ids.clone();
        by_text.sort_by_key(|i| i.to_string());
        ids.sort();
        assert_eq!(ids, by_text);
    }
}
