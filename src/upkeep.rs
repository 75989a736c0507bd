//! The writer's periodic commands, each a task of its own: expiring overdue
//! messages, and storing when tokens were last used.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::domain::{Caller, Command};
use crate::store::Store;

/// Expires overdue messages: every tick, looks for one past its deadline
/// (a read), and only then runs `ExpireDue` through the writer, which
/// expires what is due when it commits.
pub async fn expire_loop(store: Store, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.due(store.clock().now()).await {
            Ok(true) => {}
            Ok(false) => continue,
            // Asked through the writer, which logs a fault once (and may
            // expire what is due even so).
            Err(_) => {}
        }
        match store.write(Caller::Admin, Command::ExpireDue).await {
            Ok(crate::store::Outcome::Expired(n)) if n > 0 => {
                tracing::info!(expired = n, "messages expired");
            }
            Ok(_) => {}
            // The writer logs store faults once; this would log them twice a second.
            Err(crate::store::WriteError::Store(_)) => {}
            Err(e) => tracing::warn!(error = %e, "expiry check failed"),
        }
    }
}

/// How often the server stores when tokens were last used (`ListTokens`
/// shows the newest use it saw at once; another replica, or this server
/// after a crash, may see one up to this old).
pub const TOKEN_USE_STORE_INTERVAL: Duration = Duration::from_secs(60);

/// Stores token uses every [`TOKEN_USE_STORE_INTERVAL`], and once more at
/// shutdown.
pub async fn store_token_uses(store: Store, auth: Arc<Authenticator>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TOKEN_USE_STORE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let last = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        let uses = auth.uses_to_store();
        if !uses.is_empty()
            && let Err(e) = store.write(Caller::Admin, Command::TouchTokens(uses)).await
        {
            tracing::debug!(error = %e, "token uses not stored");
        }
        if last {
            return;
        }
    }
}
