//! The connection limit: a slot per open connection, the connections still
//! in their handshake (the oldest makes room for a new one at the limit),
//! and the log of what is shed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::observe::{CONNECTIONS_OPEN, CONNECTIONS_SHED};

/// Shed connections are logged at most once per this interval, with a count.
pub const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The open connections: a slot each, and which are still in their handshake.
pub(super) struct Connections {
    /// One permit per connection that may be open.
    pub(super) slots: Arc<Semaphore>,
    /// Connections still in their handshake, oldest (lowest id) first, with
    /// the token that drops one to make room.
    pub(super) handshaking: Mutex<BTreeMap<u64, CancellationToken>>,
}

impl Connections {
    /// Drops the oldest connection still in its handshake; false if none is.
    pub(super) fn evict_oldest_handshake(&self) -> bool {
        let oldest = self
            .handshaking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_first();
        oldest.map(|(_, evict)| evict.cancel()).is_some()
    }

    fn handshake_over(&self, id: u64) {
        self.handshaking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }
}

/// A connection's hold on its slot; dropping it frees the slot.
pub(super) struct Slot {
    pub(super) connections: Arc<Connections>,
    pub(super) id: u64,
    pub(super) _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.handshake_over(self.id);
        metrics::gauge!(CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// Whether a connection has completed its handshake.
pub(super) struct Handshake {
    pub(super) done: AtomicBool,
    pub(super) connections: Arc<Connections>,
    pub(super) id: u64,
}

impl Handshake {
    pub(super) fn complete(&self) {
        self.done.store(true, Ordering::Release);
        self.connections.handshake_over(self.id);
    }

    pub(super) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// Counts what has been shed and logs it at most once per
/// [`SHED_LOG_INTERVAL`] (the first at once).
pub(super) struct ShedLog {
    pub(super) max_connections: usize,
    pub(super) unlogged: u64,
    pub(super) total: u64,
    pub(super) last: Option<Instant>,
}

impl ShedLog {
    pub(super) fn shed(&mut self) {
        metrics::counter!(CONNECTIONS_SHED).increment(1);
        self.unlogged += 1;
        self.total += 1;
        if self.last.is_none_or(|t| t.elapsed() >= SHED_LOG_INTERVAL) {
            self.flush();
        }
    }

    pub(super) fn flush(&mut self) {
        if self.unlogged == 0 {
            return;
        }
        tracing::warn!(
            shed = self.unlogged,
            shed_total = self.total,
            max_connections = self.max_connections,
            "connection limit reached: connections shed (the oldest still in their handshake, \
             else the newest)"
        );
        self.unlogged = 0;
        self.last = Some(Instant::now());
    }
}
