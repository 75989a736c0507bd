//! Wiring: open the store, build the services (ours, health, reflection),
//! start the background tasks ([`crate::replication`], [`crate::upkeep`],
//! [`crate::health`]), serve until a shutdown signal, then stop cleanly.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::api::{
    Ctx, Pager, audit::AuditApi, channel::ChannelApi, message::MessageApi, party::PartyApi,
};
use crate::auth::{self, Authenticator};
use crate::clock::Clock;
use crate::config::Config;
use crate::connections;
use crate::feed::{Feed, Follow};
use crate::pb;
use crate::store::Store;

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
    // Refused before anything starts.
    crate::web::parse_origins(&config.cors_allow_origins)?;
    let max_connections = max_connections(&config);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;

    let feed = Feed::new(0, config.window_bytes);
    // Wakes the tailer of a shared (PostgreSQL) log.
    let wake = Arc::new(Notify::new());
    let (store, head) = open_store(&config, &feed, &wake).await?;
    feed.advance_head(head);
    let shutdown_token = CancellationToken::new();

    let auth = Arc::new(authenticator(&config, &store).await?);
    let log = Arc::new(signing_log(&config, &store).await?);
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
        stats: crate::stats::Stats::new(),
    });
    tokio::spawn(crate::stats::follow(
        ctx.stats.clone(),
        store.clone(),
        ctx.follow.feed.clone(),
        shutdown_token.clone(),
    ));

    let tailer = store.watch().map(|changes| {
        tokio::spawn(crate::replication::tail(
            store.clone(),
            ctx.follow.feed.clone(),
            ctx.auth.clone(),
            wake.clone(),
            changes,
        ))
    });
    let expiry = tokio::spawn(crate::upkeep::expire_loop(
        store.clone(),
        Duration::from_millis(config.expiry_interval_ms.max(10)),
    ));

    let (reflection_v1, reflection_v1alpha) = reflection()?;

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
        require_token.clone(),
    );
    let audit = InterceptedService::new(
        pb::audit_service_server::AuditServiceServer::new(AuditApi::new(ctx.clone(), log))
            .accept_compressed(gzip)
            .max_decoding_message_size(max_decoding),
        require_token,
    );

    crate::health::set_health(&health, true).await;
    let token_uses = tokio::spawn(crate::upkeep::store_token_uses(
        store.clone(),
        ctx.auth.clone(),
        shutdown_token.clone(),
    ));
    let prober = tokio::spawn(crate::health::probe_store(
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
        crate::health::set_health(&health_on_stop, false).await;
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
    .add_service(crate::codec::RequestFaults(audit));
    // A method no service serves is UNIMPLEMENTED with a message that says
    // so (tonic's own fallback answers with an empty one).
    let routes = tonic::service::Routes::from(routes.into_axum_router().fallback(
        |uri: tonic::codegen::http::Uri| async move {
            crate::error::unknown_method(uri.path()).into_http::<tonic::body::Body>()
        },
    ))
    .prepare();
    let request_timeout = Duration::from_secs(config.request_timeout_secs.max(1));
    let service = tower::ServiceBuilder::new()
        .layer(tonic::service::RecoverErrorLayer::new())
        .layer_fn(|s| crate::deadline::Deadline::new(s, request_timeout))
        .layer(crate::observe::ObserveLayer)
        .service(routes);
    // Browsers beside gRPC clients on the one port (DESIGN §9).
    let web = crate::web::Settings {
        board: config.web == crate::config::Web::On,
        cors_allow_origins: crate::web::parse_origins(&config.cors_allow_origins)?,
        auth: ctx.auth.clone(),
    };
    let service = crate::web::Front::new(service, web);

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
    // Each background task ends before the store closes.
    expiry.abort();
    prober.abort();
    let _ = expiry.await;
    let _ = prober.await;
    // Stores the last uses seen since its last tick, then ends.
    if tokio::time::timeout(SHUTDOWN_GRACE, token_uses)
        .await
        .is_err()
    {
        tracing::warn!("token uses not stored at stop");
    }
    if let Some(t) = tailer {
        t.abort();
        let _ = t.await;
    }
    drop(ctx);
    // Commits what is queued, then (embedded store) empties the WAL.
    store.close().await;
    drop(store);
    tracing::info!("stopped");
    Ok(())
}

/// Raises the file-descriptor limit, and bounds the connections below it.
fn max_connections(config: &Config) -> usize {
    match connections::raise_fd_limit() {
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
    }
}

/// The log's origin and signing key (given, or the data directory's,
/// generated on the first start); the verifier key is logged.
async fn signing_log(config: &Config, store: &Store) -> Result<crate::audit::Log, BoxError> {
    use crate::audit::key::{KeySource, signing_key};
    let origin = match &config.log_origin {
        Some(o) => o.clone(),
        None => format!("backchannel/{}", store.log_id().await?),
    };
    let (signer, source) = signing_key(config.signing_key.as_deref(), &config.data_dir, &origin)?;
    let log = crate::audit::Log::new(signer);
    let key = log.verifier_key();
    match source {
        KeySource::Given(path) => {
            tracing::info!(path = %path.display(), origin, verifier_key = key, "signing key")
        }
        KeySource::Kept(path) | KeySource::Generated(path) if config.database_url.is_some() => {
            tracing::warn!(
                path = %path.display(),
                origin,
                verifier_key = key,
                "signing key file of this replica; replicas sharing a database must share one \
                 key: copy it to each and set BACKCHANNEL_SIGNING_KEY_FILE"
            )
        }
        KeySource::Generated(path) => tracing::info!(
            path = %path.display(),
            origin,
            verifier_key = key,
            "signing key generated; back it up: it signs the log's checkpoints"
        ),
        KeySource::Kept(path) => {
            tracing::info!(path = %path.display(), origin, verifier_key = key, "signing key")
        }
    }
    Ok(log)
}

/// The admin token (from the settings, or its file) and the stored tokens.
async fn authenticator(config: &Config, store: &Store) -> Result<Authenticator, BoxError> {
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
    Ok(Authenticator::new(
        &admin_token,
        store.tokens().await?,
        store.clock().clone(),
    ))
}

/// Opens the store the settings name. The embedded store's commits go
/// straight to the feed; a shared log's, by [`crate::replication`]'s
/// policy.
async fn open_store(
    config: &Config,
    feed: &Arc<Feed>,
    wake: &Arc<Notify>,
) -> Result<(Store, u64), BoxError> {
    match &config.database_url {
        None => {
            let publisher = feed.clone();
            let store = Store::open_embedded(
                &config.data_dir,
                Box::new(move |events| {
                    publisher.publish(events);
                }),
                crate::store::sqlite::Options {
                    clock: Clock::system(),
                    check_events: config.startup_check_events,
                    requests_move_at: config.requests_move_at,
                },
            )?;
            tracing::info!(data_dir = %config.data_dir.display(), head = store.1, "embedded store open");
            Ok(store)
        }
        Some(url) => {
            let publish = crate::replication::publisher(feed.clone(), wake.clone());
            let store = Store::open_postgres(url, publish, Clock::system()).await?;
            tracing::info!(head = store.1, "PostgreSQL store open");
            Ok(store)
        }
    }
}

/// Server reflection, both versions, over our services, health and the
/// error details.
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    BoxError,
> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
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
