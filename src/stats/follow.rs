//! Keeps the statistics' copy current: loads every channel and message from
//! the store, then applies each committed event in sequence order, from
//! the feed while it keeps up and from the durable log when it falls behind
//! or finds a gap, like a subscriber does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::Stats;
use super::index::Index;
use crate::domain::Subject;
use crate::feed::Feed;
use crate::store::{ChannelQuery, Committed, EventQuery, MessageQuery, Store, StoreError};

/// Records read per page while loading.
const LOAD_PAGE: usize = 1000;
/// How long to wait before trying the store again after a failure.
const RETRY: Duration = Duration::from_secs(1);
/// Messages between two progress lines while loading.
const PROGRESS_EVERY: usize = 200_000;

/// Loads the copy, then follows the log until `shutdown`.
pub async fn follow(stats: Arc<Stats>, store: Store, feed: Arc<Feed>, shutdown: CancellationToken) {
    // Listen before loading, so nothing published meanwhile is missed.
    let mut ring = feed.listen();
    let head = loop {
        match load(&stats, &store).await {
            Ok(head) => break head,
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the relay statistics; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    };
    stats.applied.send_replace(Some(head));
    let mut applied = head;
    loop {
        // Behind the feed (a gap, a lag, or events published while
        // loading): read them from the log.
        while applied < feed.head() {
            match catch_up(&stats, &store, applied).await {
                Ok(a) => applied = a,
                Err(e) => {
                    tracing::warn!(error = %e, "relay statistics cannot read the log; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
        let next = tokio::select! {
            () = shutdown.cancelled() => return,
            n = ring.recv() => n,
        };
        match next {
            Ok((seq, _)) if seq <= applied => {}
            Ok((seq, event)) if seq == applied + 1 => {
                let Some(p) = event.upgrade() else { continue };
                match crate::replication::committed(vec![p.frame.clone()]) {
                    Ok(events) => applied = apply(&stats, &events, applied).await,
                    Err(e) => {
                        tracing::warn!(error = %e, sequence = seq, "relay statistics skip an event")
                    }
                }
            }
            // A gap, or lagged: the log has it.
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// Applies events after `applied` from the log, a page at a time, up to
/// the feed's head as it was; returns the new last applied sequence.
async fn catch_up(stats: &Stats, store: &Store, mut applied: u64) -> Result<u64, StoreError> {
    loop {
        let frames = store
            .frames(EventQuery {
                viewer: None,
                channel: None,
                message: None,
                after: applied,
                through: None,
                limit: crate::feed::REPLAY_PAGE,
                max_bytes: usize::MAX,
            })
            .await?;
        if frames.is_empty() {
            return Ok(applied);
        }
        let full = frames.len() == crate::feed::REPLAY_PAGE;
        applied = apply(stats, &crate::replication::committed(frames)?, applied).await;
        if !full {
            return Ok(applied);
        }
    }
}

/// Applies events in order; returns the last sequence applied.
async fn apply(stats: &Stats, events: &[Committed], mut applied: u64) -> u64 {
    {
        let mut ix = stats.index.write().await;
        for c in events {
            if c.event.sequence != applied + 1 {
                continue;
            }
            match &c.event.subject {
                Subject::Message(m) => ix.message(m),
                Subject::Channel(ch) => {
                    ix.channel(ch);
                }
            }
            applied = c.event.sequence;
            ix.head = applied;
        }
    }
    stats.applied.send_replace(Some(applied));
    applied
}

/// Reads every channel and message into a fresh copy, which replaces the
/// old one; returns the log position it reflects at least. Messages may
/// be newer than that position (pages are read one after the other); the
/// events after it are applied again, and a copy never goes back to an
/// older version.
async fn load(stats: &Stats, store: &Store) -> Result<u64, StoreError> {
    let started = Instant::now();
    let head = store.head().await?;
    let mut ix = Index::default();
    let mut before = i64::MAX as u64;
    loop {
        let page = store
            .channels(ChannelQuery {
                viewer: None,
                party: None,
                state: None,
                before,
                limit: LOAD_PAGE,
            })
            .await?;
        for (_, c) in &page {
            ix.channel(c);
        }
        match page.last() {
            Some((seq, _)) if page.len() == LOAD_PAGE => before = *seq,
            _ => break,
        }
    }
    let mut before = i64::MAX as u64;
    loop {
        let (page, _) = store
            .messages(MessageQuery {
                viewer: None,
                channel: None,
                party: None,
                thread: None,
                state: None,
                before,
                head: Some(head),
                limit: LOAD_PAGE,
            })
            .await?;
        for (_, m) in &page {
            ix.message(m);
        }
        let n = ix.len();
        if n % PROGRESS_EVERY < page.len() && n >= PROGRESS_EVERY {
            tracing::info!(messages = n, "loading the relay statistics");
        }
        match page.last() {
            Some((seq, _)) if page.len() == LOAD_PAGE => before = *seq,
            _ => break,
        }
    }
    ix.loaded();
    ix.head = head;
    let messages = ix.len();
    *stats.index.write().await = ix;
    tracing::info!(
        messages,
        head,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "relay statistics loaded"
    );
    Ok(head)
}
