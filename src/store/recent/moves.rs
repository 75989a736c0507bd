//! The move of the recent records into a run of `request_runs`: when it
//! starts, its steps (a chunk in each batch's commit, paced by the batch),
//! and the end that forgets what it moved.

use super::filter::{Filter, filter_item};
use super::{Entry, Key, Recent};

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

/// A move of records into `request_runs` under way: committed records only,
/// each with the row of `requests_recent` it was read from.
#[derive(Debug)]
pub(super) struct Move {
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
    /// The run it writes (see [`crate::store::runs`]).
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

impl Recent {
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
