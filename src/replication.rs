//! Replicas on one PostgreSQL database: the policy for publishing what this
//! replica commits, and the tailer that follows what the others commit.
//! The embedded store has one writer, whose commits are always the feed's
//! continuation.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::Notify;

use crate::auth::Authenticator;
use crate::domain::{Reason, Rejection};
use crate::feed::Feed;
use crate::pb;
use crate::store::{Change, Committed, Publish, Store};

/// How this replica's commits reach its subscribers: straight into the
/// feed when they continue its window; otherwise (another replica wrote in
/// between) `wake` has the tailer read everything from the log in order.
pub fn publisher(feed: Arc<Feed>, wake: Arc<Notify>) -> Publish {
    Box::new(move |events| {
        if !feed.publish(events) {
            wake.notify_one();
        }
    })
}

/// How often the tailer reads the shared log even without a notification.
pub const TAIL_INTERVAL: Duration = Duration::from_secs(1);
/// How often the tailer reloads tokens even without a notification.
pub const TOKEN_RELOAD_TICKS: u32 = 3;

/// Follows a log shared by replicas: whenever this replica commits, another
/// announces a commit, or a second passes, publishes every event after the
/// feed's head, in order. Also keeps the token cache current.
pub async fn tail(
    store: Store,
    feed: Arc<Feed>,
    auth: Arc<Authenticator>,
    wake: Arc<Notify>,
    mut changes: tokio::sync::mpsc::Receiver<Change>,
) {
    let mut tick = tokio::time::interval(TAIL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    loop {
        let reload_tokens = tokio::select! {
            () = wake.notified() => false,
            c = changes.recv() => matches!(c, Some(Change::Tokens | Change::Reconnected)),
            _ = tick.tick() => {
                ticks += 1;
                ticks.is_multiple_of(TOKEN_RELOAD_TICKS)
            }
        };
        if reload_tokens {
            let seen = auth.version();
            match store.tokens().await {
                Ok(t) => auth.replace_all(t, seen),
                Err(e) => tracing::warn!(error = %e, "cannot reload tokens"),
            }
        }
        loop {
            let page = store
                .frames(crate::store::EventQuery {
                    viewer: None,
                    channel: None,
                    message: None,
                    after: feed.head(),
                    limit: crate::feed::REPLAY_PAGE,
                    max_bytes: usize::MAX,
                })
                .await;
            match page.and_then(committed) {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    let full = events.len() == crate::feed::REPLAY_PAGE;
                    // Read after the head, so always the continuation.
                    feed.publish(events);
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the shared log");
                    break;
                }
            }
        }
    }
}

/// Events read back from the shared log, decoded to learn their audience;
/// their stored encoding is what subscribers receive.
pub fn committed(frames: Vec<crate::store::Frame>) -> Result<Vec<Committed>, Rejection> {
    frames
        .into_iter()
        .map(|f| {
            let event = pb::Event::decode(&f.data[..])
                .map_err(|e| e.to_string())
                .and_then(crate::convert::event_from_pb)
                .map_err(|e| Rejection::new(Reason::INTERNAL, format!("corrupt event: {e}")))?;
            Ok(Committed {
                event,
                data: f.data,
            })
        })
        .collect()
}
