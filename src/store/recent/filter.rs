//! The filter of the keys in `request_runs`: a scalable Bloom filter that
//! answers "certainly not there" for nearly every fresh `request_id`, and
//! how [`Recent`] keeps it, from its building at start to every key moved.

use fastbloom::BloomFilter;

use super::{Key, Recent};
use crate::domain::Id;

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

    pub(super) fn with_capacity(capacity: usize) -> Keys {
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
pub(super) enum Filter {
    /// Being built, at start; what the writer moved into `request_runs`
    /// meanwhile, to add once it is.
    Building(Vec<Key>),
    /// Every key of `request_runs` is in it.
    Ready(Keys),
    /// It could not be built: every lookup reads the runs.
    Off,
}

impl Recent {
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
}
