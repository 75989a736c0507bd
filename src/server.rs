//! Wiring: open the store, build the services (ours, health, reflection),
//! serve until a shutdown signal, then stop cleanly.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::api::{Ctx, Pager, channel::ChannelApi, message::MessageApi, party::PartyApi};
use crate::auth::{self, Authenticator};
use crate::config::Config;
use crate::connections;
use crate::domain::{Caller, Command};
use crate::domain::{Reason, Rejection};
use crate::feed::{Feed, Follow};
use crate::pb;
use crate::store::{Change, Committed, Store};
use prost::Message as _;

/// Any startup failure, for the log.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long in-flight calls get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// TCP keepalive on accepted connections.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// HTTP/2 keepalive ping interval: dead clients are noticed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a keepalive ping may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection limit when the file-descriptor limit cannot be read
/// (the POSIX minimum of 1,024 descriptors, less the reserve).
const DEFAULT_MAX_CONNECTIONS_UNKNOWN_FD: usize = 1024 - connections::FD_RESERVE as usize;

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM received, shutting down"),
        r = tokio::signal::ctrl_c() => match r {
            Ok(()) => tracing::info!("SIGINT received, shutting down"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
        },
    }
}

/// Serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), BoxError> {
    let limits = config.limits();
    crate::codec::set_max_request_bytes(limits.request_bytes);
    if let Some(addr) = config.metrics_listen {
        crate::observe::serve_metrics(addr).await?;
    }
    let tls = tls_config(&config)?;
    let max_connections = match connections::raise_fd_limit() {
        Ok((soft, hard)) => {
            let max = connections::connection_limit(config.max_connections, soft);
            tracing::info!(soft, hard, max_connections = max, "file-descriptor limit");
            max
        }
        Err(e) => {
            let max = config
                .max_connections
                .unwrap_or(DEFAULT_MAX_CONNECTIONS_UNKNOWN_FD);
            tracing::warn!(error = %e, max_connections = max, "cannot read the file-descriptor limit");
            max
        }
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;

    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;

    let feed = Feed::new(0, config.window_bytes);
    // The writer publishes what it commits. With PostgreSQL other replicas
    // write too, and a tailer follows the shared log for their events.
    let wake = Arc::new(Notify::new());
    let (store, head) = match &config.database_url {
        None => {
            let publisher = feed.clone();
            let store = Store::open_embedded(
                &config.data_dir,
                Box::new(move |events| {
                    publisher.publish(events);
                }),
                crate::store::sqlite::Options {
                    check_events: config.startup_check_events,
                    requests_move_at: config.requests_move_at,
                },
            )?;
            tracing::info!(data_dir = %config.data_dir.display(), head = store.1, "embedded store open");
            store
        }
        Some(url) => {
            let waker = wake.clone();
            let publisher = feed.clone();
            // This replica's commits go straight to its subscribers when
            // they continue the window; otherwise (another replica wrote in
            // between) the tailer reads everything from the log in order.
            let publish = move |events| {
                if !publisher.publish(events) {
                    waker.notify_one();
                }
            };
            let store = Store::open_postgres(url, Box::new(publish)).await?;
            tracing::info!(head = store.1, "PostgreSQL store open");
            store
        }
    };
    feed.advance_head(head);
    let shutdown_token = CancellationToken::new();

    let (admin_token, admin_file) =
        auth::admin_token(config.admin_token.clone(), &config.data_dir)?;
    match admin_file {
        Some(path) if config.database_url.is_some() => tracing::warn!(
            path = %path.display(),
            "admin token file; replicas sharing a database should share one admin token: \
             set BACKCHANNEL_ADMIN_TOKEN"
        ),
        Some(path) => tracing::info!(path = %path.display(), "admin token file"),
        None => tracing::info!("admin token from BACKCHANNEL_ADMIN_TOKEN"),
    }
    let auth = Arc::new(Authenticator::new(&admin_token, store.tokens().await?));
    let quotas = Arc::new(crate::quota::Quotas::new(
        config.rate_limit,
        config.max_subscriptions_per_party,
    ));
    let ctx = Arc::new(Ctx {
        pager: Pager::new(store.page_key().await?),
        store: store.clone(),
        follow: Follow {
            feed,
            store: store.clone(),
            auth: auth.clone(),
            shutdown: shutdown_token.clone(),
            max_subscriptions: config.max_subscriptions,
            open: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            quotas: quotas.clone(),
        },
        auth,
        limits: limits.clone(),
    });

    let tailer = store.watch().map(|changes| {
        tokio::spawn(tail(
            store.clone(),
            ctx.follow.feed.clone(),
            ctx.auth.clone(),
            wake.clone(),
            changes,
        ))
    });
    let expiry = tokio::spawn(expire_loop(
        store.clone(),
        Duration::from_millis(config.expiry_interval_ms.max(10)),
    ));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    // tonic applies its limit to the decompressed size as it inflates, so
    // a gzip bomb stops at the limit; `RequestFaults` answers its refusal
    // as RESOURCE_EXHAUSTED / REQUEST_TOO_LARGE, like our codec's.
    let max_decoding = limits.request_bytes;
    let gzip = tonic::codec::CompressionEncoding::Gzip;
    // Every call is authenticated before its body is decoded.
    let require_token = auth::RequireToken(ctx.auth.clone(), quotas);
    let party = InterceptedService::new(
        pb::party_service_server::PartyServiceServer::new(PartyApi(ctx.clone()))
            .accept_compressed(gzip)
            .max_decoding_message_size(max_decoding),
        require_token.clone(),
    );
    let channel = InterceptedService::new(
        pb::channel_service_server::ChannelServiceServer::new(ChannelApi(ctx.clone()))
            .accept_compressed(gzip)
            .max_decoding_message_size(max_decoding),
        require_token.clone(),
    );
    let message = InterceptedService::new(
        pb::message_service_server::MessageServiceServer::new(MessageApi(ctx.clone()))
            .accept_compressed(gzip)
            .max_decoding_message_size(max_decoding),
        require_token,
    );

    set_health(&health, true).await;
    let token_uses = tokio::spawn(store_token_uses(
        store.clone(),
        ctx.auth.clone(),
        shutdown_token.clone(),
    ));
    let prober = tokio::spawn(probe_store(
        store.clone(),
        health.clone(),
        shutdown_token.clone(),
    ));

    let health_on_stop = health.clone();
    let stopping = shutdown_token.clone();
    let stop = async move {
        shutdown.await;
        // Load balancers stop routing first; then every open stream ends
        // with UNAVAILABLE so clients reconnect elsewhere.
        stopping.cancel();
        set_health(&health_on_stop, false).await;
    };

    // Routes, then as tonic's `Server` would stack them: observation, the
    // per-call deadline, and errors turned into statuses.
    let routes = tonic::service::Routes::new(crate::quota::HealthWatchLimit::new(
        crate::codec::RequestFaults(
            health_service
                .accept_compressed(gzip)
                .max_decoding_message_size(max_decoding),
        ),
        config.max_health_watches,
    ))
    .add_service(crate::codec::ReflectionFaults(reflection_v1))
    .add_service(crate::codec::ReflectionFaults(reflection_v1alpha))
    .add_service(crate::codec::RequestFaults(party))
    .add_service(crate::codec::RequestFaults(channel))
    .add_service(crate::codec::RequestFaults(message))
    .prepare();
    let request_timeout = Duration::from_secs(config.request_timeout_secs.max(1));
    let service = tower::ServiceBuilder::new()
        .layer(tonic::service::RecoverErrorLayer::new())
        .layer_fn(|s| crate::deadline::Deadline::new(s, request_timeout))
        .layer(crate::observe::ObserveLayer)
        .service(routes);

    let settings = connections::Settings {
        handshake_timeout: Duration::from_secs(config.handshake_timeout_secs.max(1)),
        idle_timeout: Duration::from_secs(config.idle_timeout_secs.max(1)),
        max_connections,
        max_concurrent_streams: config.max_concurrent_streams,
        keepalive_interval: KEEPALIVE_INTERVAL,
        keepalive_timeout: KEEPALIVE_TIMEOUT,
        tcp_keepalive: TCP_KEEPALIVE,
    };
    tracing::info!(%addr, tls = tls.is_some(), max_connections, "serving");
    let serve = connections::serve(listener, tls, service, settings, stop);
    // A client that stops reading can hold its connection open; after the
    // grace period the server stops regardless.
    let grace = async {
        shutdown_token.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        () = serve => {}
        () = grace => tracing::warn!("shutdown grace period over; closing remaining connections"),
    }
    expiry.abort();
    prober.abort();
    // Stores the last uses seen since its last tick, then ends.
    if tokio::time::timeout(SHUTDOWN_GRACE, token_uses)
        .await
        .is_err()
    {
        tracing::warn!("token uses not stored at stop");
    }
    if let Some(t) = tailer {
        t.abort();
    }
    drop(ctx);
    // Commits what is queued, then (embedded store) empties the WAL.
    store.close().await;
    drop(store);
    tracing::info!("stopped");
    Ok(())
}

/// The services whose health is reported (`""` is the whole server).
const HEALTH_SERVICES: [&str; 4] = [
    "",
    "backchannel.v1.PartyService",
    "backchannel.v1.ChannelService",
    "backchannel.v1.MessageService",
];

/// How often the store is probed (a small write) for the health status:
/// a fault, or a data directory removed while idle, shows within this.
pub const HEALTH_PROBE_INTERVAL: Duration = Duration::from_millis(500);

async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    for name in HEALTH_SERVICES {
        health.set_service_status(name, status).await;
    }
}

/// Reports the whole server (`""`) NOT_SERVING while the store cannot
/// commit or cannot be read, and SERVING again when it can, until shutdown.
/// Each tick commits one small probe write through the writer, so health
/// follows the writer's ability to commit even when no one writes, and a
/// fault that clears is noticed without a client having to write. The
/// per-service names stay SERVING meanwhile, so a liveness check on one of
/// them does not restart a process that only waits for its disk or
/// database; shutdown flips all.
async fn probe_store(
    store: Store,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut serving = true;
    let mut tick = tokio::time::interval(HEALTH_PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let wrote = store.write(Caller::Admin, Command::Probe).await;
        let ok = wrote.is_ok() && store.write_fault().is_none() && store.head().await.is_ok();
        if ok != serving && !shutdown.is_cancelled() {
            serving = ok;
            let status = if ok {
                tracing::info!("store commits again: SERVING");
                tonic_health::ServingStatus::Serving
            } else {
                let why = match &wrote {
                    Err(e) => e.reason.as_str(),
                    Ok(_) => "STORE_UNAVAILABLE",
                };
                tracing::warn!(reason = why, "store cannot commit: NOT_SERVING");
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
        }
    }
}

/// How often the server stores when tokens were last used (`ListTokens`
/// shows the newest use it saw at once; another replica, or this server
/// after a crash, may see one up to this old).
const TOKEN_USE_STORE_INTERVAL: Duration = Duration::from_secs(60);

/// Stores token uses every [`TOKEN_USE_STORE_INTERVAL`], and once more at
/// shutdown.
async fn store_token_uses(
    store: Store,
    auth: std::sync::Arc<crate::auth::Authenticator>,
    shutdown: CancellationToken,
) {
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

/// Server TLS from the settings: a certificate and key, and optionally a CA
/// whose client certificates are required.
fn tls_config(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, BoxError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let ca = config.tls_client_ca.as_deref().map(read).transpose()?;
    Ok(Some(connections::tls_acceptor(
        &read(cert)?,
        &read(key)?,
        ca.as_deref(),
    )?))
}

/// The `health` subcommand: asks a running server over plaintext.
pub async fn health_check(addr: &str, service: &str) -> std::process::ExitCode {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let asked = async {
        let channel = tonic::transport::Endpoint::from_shared(url)?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(3))
            .connect()
            .await?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let r = client
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?;
        Ok::<_, BoxError>(r.into_inner().status)
    };
    match asked.await {
        Ok(s) if s == ServingStatus::Serving as i32 => {
            println!("SERVING");
            std::process::ExitCode::SUCCESS
        }
        Ok(s) => {
            println!(
                "{}",
                ServingStatus::try_from(s).map_or("UNKNOWN", |s| s.as_str_name())
            );
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("health check failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// How often the tailer reads the shared log even without a notification.
pub const TAIL_INTERVAL: Duration = Duration::from_secs(1);
/// How often the tailer reloads tokens even without a notification.
pub const TOKEN_RELOAD_TICKS: u32 = 3;

/// Follows a log shared by replicas: whenever this replica commits, another
/// announces a commit, or a second passes, publishes every event after the
/// feed's head, in order. Also keeps the token cache current.
async fn tail(
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
fn committed(frames: Vec<crate::store::Frame>) -> Result<Vec<Committed>, Rejection> {
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

/// Expires overdue messages: runs `ExpireDue` through the writer every tick.
async fn expire_loop(store: Store, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.write(Caller::Admin, Command::ExpireDue).await {
            Ok(crate::store::Outcome::Expired(n)) if n > 0 => {
                tracing::info!(expired = n, "messages expired");
            }
            Ok(_) => {}
            // The writer logs store faults once; this would log them twice a second.
            Err(e) if e.is_store_fault() => {}
            Err(e) => tracing::warn!(error = %e, "expiry check failed"),
        }
    }
}
