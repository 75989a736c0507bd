//! The accept loop: each new connection gets a slot under the connection
//! limit (or is shed, or sheds the oldest still in its handshake) and a
//! task of its own; at shutdown, every connection gets `GOAWAY` and the loop
//! waits for all to close.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;
use tower::Service;

use super::connection::{Accepted, connection};
use super::slots::{Connections, SHED_LOG_INTERVAL, ShedLog, Slot};
use super::{BoxError, Settings};
use crate::observe::CONNECTIONS_OPEN;

/// How long the accept loop pauses when accepting fails for want of
/// descriptors (it would otherwise spin).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `service` (gRPC over HTTP/2; HTTP/1.1 too) on `listener` until `shutdown` resolves, then stops
/// accepting, sends every connection `GOAWAY` and returns once all have
/// closed.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: S,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let max = settings.max_connections;
    let connections = Arc::new(Connections {
        slots: Arc::new(Semaphore::new(max)),
        handshaking: Mutex::new(BTreeMap::new()),
    });
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    // The first request head is bound by the handshake deadline, a later
    // one by the idle timeout (a slow head costs no more than an idle
    // keep-alive connection); hyper's own default would be 30 s.
    http.http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(settings.idle_timeout);
    let stop = CancellationToken::new();
    let mut shed = ShedLog {
        max_connections: max,
        unlogged: 0,
        total: 0,
        last: None,
    };
    let mut flush = tokio::time::interval(SHED_LOG_INTERVAL);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut accept_errors = 0u64;
    let mut next_id = 0u64;
    let mut shutdown = pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            _ = flush.tick() => {
                shed.flush();
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE/ENFILE should not happen below the limit, but
                    // something else in the process may hold descriptors.
                    if accept_errors.is_power_of_two() {
                        tracing::warn!(error = %e, count = accept_errors + 1, "cannot accept a connection");
                    }
                    accept_errors += 1;
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let permit = match connections.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) if connections.evict_oldest_handshake() => {
                shed.shed();
                // The evicted connection frees its slot as soon as its task
                // sees the token; only this loop takes slots.
                match connections.slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                }
            }
            Err(_) => {
                shed.shed();
                drop(tcp);
                continue;
            }
        };
        configure(&tcp, settings.tcp_keepalive);
        next_id += 1;
        let evict = CancellationToken::new();
        connections
            .handshaking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(next_id, evict.clone());
        metrics::gauge!(CONNECTIONS_OPEN).increment(1.0);
        let slot = Slot {
            connections: connections.clone(),
            id: next_id,
            _permit: permit,
        };
        tokio::spawn(connection(
            Accepted {
                tcp,
                peer,
                slot,
                evict,
            },
            tls.clone(),
            service.clone(),
            http.clone(),
            settings.clone(),
            stop.clone(),
        ));
    }
    drop(listener);
    stop.cancel();
    shed.flush();
    // Every connection holds a slot until it ends.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = connections.slots.acquire_many(all).await;
}

/// TCP_NODELAY (Nagle's algorithm meeting delayed ACKs costs ~40 ms per
/// call) and TCP keepalive on an accepted socket.
fn configure(tcp: &TcpStream, keepalive: Duration) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let ka = socket2::TcpKeepalive::new().with_time(keepalive);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}
