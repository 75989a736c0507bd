//! Change notifications from every replica (`LISTEN`), re-established
//! whenever the connection drops.

use super::*;

impl Postgres {
    /// Changes made through any replica, as they are announced. The
    /// connection is re-established whenever it drops.
    pub fn watch(self: &Arc<Self>) -> mpsc::Receiver<Change> {
        let (tx, rx) = mpsc::channel(64);
        let cfg = self.config.clone();
        tokio::spawn(async move {
            while !tx.is_closed() {
                match listen(&cfg, &tx).await {
                    // Nobody follows the changes any more.
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e.message, "change notifications interrupted; reconnecting")
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        rx
    }
}

pub(super) async fn listen(
    cfg: &tokio_postgres::Config,
    out: &mpsc::Sender<Change>,
) -> Result<(), StoreError> {
    let (client, mut conn) = cfg.connect(NoTls).await.map_err(pg_err)?;
    let (note_tx, mut note_rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if note_tx.send(n.channel().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "notification connection failed");
                    break;
                }
            }
        }
    });
    client
        .batch_execute(&format!(
            "LISTEN {EVENTS_CHANNEL}; LISTEN {TOKENS_CHANNEL};"
        ))
        .await
        .map_err(pg_err)?;
    // Whatever happened while we were not listening.
    let _ = out.send(Change::Reconnected).await;
    loop {
        // Ends when the tailer has gone (the server is stopping).
        let channel = tokio::select! {
            n = note_rx.recv() => n,
            () = out.closed() => {
                driver.abort();
                return Ok(());
            }
        };
        let Some(channel) = channel else {
            break;
        };
        let change = if channel == TOKENS_CHANNEL {
            Change::Tokens
        } else {
            Change::Events
        };
        if out.send(change).await.is_err() {
            break;
        }
    }
    driver.abort();
    Err(unavailable("notification connection closed"))
}
