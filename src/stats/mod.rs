//! Relay statistics (`MessageService.GetRelayStats`, DESIGN §9).
//!
//! Percentiles over an arbitrary window of send times cannot be kept as
//! running totals, and computing them from the store would read every
//! message of the window. So the server keeps a compact copy of every
//! message (its route, states and reported times; see [`index`]), built
//! from the store when it starts and kept current from the same feed of
//! committed events that subscribers follow ([`follow`]), on every replica.
//! A question is answered from that copy on a blocking thread, over the
//! channels the caller may see, once the copy has caught up with what the
//! feed had published when the question came.

mod figures;
mod follow;
mod index;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{RwLock, watch};

use crate::domain::{Caller, Id, PartyId, Reason, Rejection, Time};
use crate::pb;

pub use follow::follow;

/// How long a question waits for the copy to catch up before it is
/// refused with `STATS_NOT_READY`.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// The filters of one question (already checked against the store).
#[derive(Debug, Clone, Default)]
pub struct Question {
    /// Only this channel's messages.
    pub channel: Option<Id>,
    /// Only the messages of channels this party is on.
    pub party: Option<PartyId>,
    /// Only messages sent at or after this.
    pub since: Option<Time>,
    /// Only messages sent before this.
    pub until: Option<Time>,
}

/// The copy, and how far it has applied the log.
pub struct Stats {
    /// An asynchronous lock: the follower waits for a question being
    /// answered without holding a runtime thread.
    index: RwLock<index::Index>,
    /// The last sequence applied, once the first load is done.
    applied: watch::Sender<Option<u64>>,
    /// Questions answered at once: one per core, the rest wait their turn
    /// (each one scans and holds its durations).
    computing: tokio::sync::Semaphore,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            index: RwLock::new(index::Index::default()),
            applied: watch::Sender::new(None),
            computing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            ),
        }
    }
}

impl Stats {
    /// An empty copy, not loaded.
    pub fn new() -> Arc<Stats> {
        Arc::new(Stats::default())
    }

    /// Answers `q` for `caller`, counting at least every event up to
    /// `through`.
    pub async fn answer(
        self: &Arc<Self>,
        caller: Caller,
        q: Question,
        through: u64,
    ) -> Result<pb::RelayStats, Rejection> {
        let mut applied = self.applied.subscribe();
        let caught_up = tokio::time::timeout(
            CATCH_UP_WAIT,
            applied.wait_for(|a| a.is_some_and(|a| a >= through)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !caught_up {
            let (have, building) = match *applied.borrow() {
                Some(a) => (a, false),
                None => (0, true),
            };
            let what = if building {
                "the relay statistics are still being built since the server started".to_owned()
            } else {
                format!("the relay statistics have counted the log up to {have}, not yet {through}")
            };
            return Err(Rejection::new(
                Reason::STATS_NOT_READY,
                format!("{what}; retry shortly"),
            ));
        }
        let _turn = self
            .computing
            .acquire()
            .await
            .map_err(|_| Rejection::new(Reason::SHUTTING_DOWN, "the server is stopping"))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.compute(&caller, &q))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "relay statistics failed");
                Rejection::new(
                    Reason::INTERNAL,
                    "the relay statistics could not be computed",
                )
            })
    }

    fn compute(&self, caller: &Caller, q: &Question) -> pb::RelayStats {
        let ix = self.index.blocking_read();
        let party = |p: &PartyId| ix.by_party.get(p).copied();
        let viewer = caller.party().map(&party);
        let filter = q.party.as_ref().map(&party);
        let only = q
            .channel
            .map(|c| ix.by_channel.get(&c.0.as_u128()).copied());
        let channels = (0..ix.channels.len() as u32)
            .filter(|&c| {
                let members = &ix.channels[c as usize].members;
                let on = |p: Option<Option<u32>>| match p {
                    None => true,
                    Some(None) => false,
                    Some(Some(p)) => members.contains(&p),
                };
                on(viewer) && on(filter) && only.is_none_or(|o| o == Some(c))
            })
            .collect();
        figures::figures(
            &ix,
            &figures::Scope {
                channels,
                since: q.since.map_or(i64::MIN, |t| t.0),
                until: q.until.map_or(i64::MAX, |t| t.0),
            },
        )
    }
}
