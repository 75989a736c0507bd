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
//!
//! Here are the records and their table; `moves.rs` holds the move into
//! `request_runs`, and `filter.rs` the filter of the keys already there.

use std::collections::HashMap;

use crate::domain::Id;

mod filter;
mod moves;
#[cfg(test)]
mod tests;

use filter::Filter;
pub use filter::{FILTER_MIN_CAPACITY, Keys, filter_item};
use moves::Move;
pub use moves::{DEFAULT_MOVE_AT, MOVE_CHUNK, MOVE_MIN, Step, StepDone, move_budget};

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
}
