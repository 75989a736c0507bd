//! Replicas on one PostgreSQL database: the policy for publishing what this
//! replica commits, and the tailer that follows what the others commit.
//! The embedded store has one writer, whose commits are always the feed's
//! continuation.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::Notify;

use crate::auth::Authenticator;
use crate::feed::Feed;
use crate::pb;
use crate::store::{Change, Committed, Fault, Publish, Store, StoreError};

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
    changes: tokio::sync::mpsc::Receiver<Change>,
) {
    let mut waits = Waits::new(wake, changes);
    loop {
        if waits.next().await {
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
                    through: None,
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

/// What the tailer waits for: this replica's commit that did not continue
/// the feed, another replica's notification, or the tick.
struct Waits {
    wake: Arc<Notify>,
    /// `None` once the notifications have ended: the tick alone then
    /// drives the tailer (a closed channel is ready at once, every time,
    /// and waiting on it would spin).
    changes: Option<tokio::sync::mpsc::Receiver<Change>>,
    tick: tokio::time::Interval,
    ticks: u32,
}

impl Waits {
    fn new(wake: Arc<Notify>, changes: tokio::sync::mpsc::Receiver<Change>) -> Waits {
        let mut tick = tokio::time::interval(TAIL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Waits {
            wake,
            changes: Some(changes),
            tick,
            ticks: 0,
        }
    }

    /// Waits for the next reason to read the log; `true` if the tokens
    /// should be reloaded too.
    async fn next(&mut self) -> bool {
        loop {
            let change = async {
                match &mut self.changes {
                    Some(c) => c.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.wake.notified() => return false,
                c = change => match c {
                    Some(c) => return matches!(c, Change::Tokens | Change::Reconnected),
                    None => {
                        tracing::warn!("change notifications ended; following the shared log every second");
                        self.changes = None;
                    }
                },
                _ = self.tick.tick() => {
                    self.ticks += 1;
                    return self.ticks.is_multiple_of(TOKEN_RELOAD_TICKS);
                }
            }
        }
    }
}

/// Events read back from the shared log, decoded to learn their audience;
/// their stored encoding is what subscribers receive.
pub fn committed(frames: Vec<crate::store::Frame>) -> Result<Vec<Committed>, StoreError> {
    frames
        .into_iter()
        .map(|f| {
            let event = pb::Event::decode(&f.data[..])
                .map_err(|e| e.to_string())
                .and_then(crate::convert::event_from_pb)
                .map_err(|e| StoreError::new(Fault::Corrupt, format!("corrupt event: {e}")))?;
            Ok(Committed {
                event,
                data: f.data,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With its notifications ended, the tailer waits for the tick: it
    /// used to wake at once, for ever, reading the log in a busy loop.
    #[tokio::test(start_paused = true)]
    async fn with_notifications_ended_the_tailer_waits_for_the_tick() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        drop(tx);
        let mut waits = Waits::new(Arc::new(Notify::new()), rx);
        let start = tokio::time::Instant::now();
        // The interval's first tick is immediate; each later one a second on.
        for _ in 0..4 {
            waits.next().await;
        }
        assert!(
            start.elapsed() >= 3 * TAIL_INTERVAL,
            "woke four times in {:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_notification_asks_for_a_reload_and_a_commit_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let wake = Arc::new(Notify::new());
        let mut waits = Waits::new(wake.clone(), rx);
        waits.next().await; // the immediate first tick
        tx.send(Change::Tokens).await.expect("send");
        assert!(waits.next().await);
        wake.notify_one();
        assert!(!waits.next().await);
    }
}
