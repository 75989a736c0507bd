//! One connection's life, from accept to close: TLS, the handshake
//! deadline, HTTP/2 or HTTP/1.1, and `GOAWAY` (or, on HTTP/1.1, a close
//! between requests) when it is idle, when it floods control frames and
//! when the server shuts down.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;
use tower::Service;

use super::preface::{CONTROL_FRAMES_PER_SEC, FrameMeter, Preface, Protocol, sniff};
use super::slots::{Handshake, Slot};
use super::streams::{Activity, Tracked};
use super::{BoxError, Settings};

/// How long a flooding connection has to take its `GOAWAY` before it is
/// dropped.
const FLOOD_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// After a `GOAWAY` for idleness, how long the client gets to close before
/// the server drops the connection.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(10);

/// A connection just accepted, with its slot.
pub(super) struct Accepted {
    pub(super) tcp: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) slot: Slot,
    /// Cancelled to drop the connection for a newer one while it is still
    /// in its handshake.
    pub(super) evict: CancellationToken,
}

/// A handle on the connection that carries a request, in the request's
/// extensions: a stream whose end cannot reach its client (the client reads
/// nothing, so even the trailers wait behind flow control) is ended by
/// closing its connection.
#[derive(Clone, Debug)]
pub struct ConnectionHandle {
    close: CancellationToken,
    peer: SocketAddr,
}

impl ConnectionHandle {
    /// Closes the connection at once (every stream on it ends).
    pub fn close(&self, why: &str) {
        if !self.close.is_cancelled() {
            tracing::info!(peer = %self.peer, why, "closing a connection");
            self.close.cancel();
        }
    }
}

/// One connection's life: TLS, the handshake deadline (the HTTP/2 preface,
/// or an HTTP/1.1 connection's first complete request head), HTTP until
/// it ends, `GOAWAY` when idle or at shutdown.
pub(super) async fn connection<S, B>(
    accepted: Accepted,
    tls: Option<TlsAcceptor>,
    service: S,
    http: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    settings: Settings,
    stop: CancellationToken,
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
    let Accepted {
        tcp,
        peer,
        slot,
        evict,
    } = accepted;
    let deadline = Instant::now() + settings.handshake_timeout;
    let handshake = Arc::new(Handshake {
        done: AtomicBool::new(false),
        connections: slot.connections.clone(),
        id: slot.id,
    });
    let mut io = match tls {
        None => Either::Left(tcp),
        Some(tls) => tokio::select! {
            r = tls.accept(tcp) => match r {
                Ok(s) => Either::Right(s),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                tracing::debug!(%peer, "no TLS handshake within the handshake timeout; closed");
                return;
            }
            () = evict.cancelled() => return,
            () = stop.cancelled() => return,
        },
    };
    let (protocol, replay) = tokio::select! {
        r = sniff(&mut io) => match r {
            Ok(Some(sniffed)) => sniffed,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection failed before its first request");
                return;
            }
        },
        () = tokio::time::sleep_until(deadline) => {
            tracing::debug!(%peer, "no HTTP/2 preface or HTTP/1.1 request within the handshake timeout; closed");
            return;
        }
        () = evict.cancelled() => return,
        () = stop.cancelled() => return,
    };
    let flood = CancellationToken::new();
    let (http, meter) = match protocol {
        // The preface is the HTTP/2 handshake.
        Protocol::Http2 => {
            handshake.complete();
            (http.http2_only(), Some(FrameMeter::new(flood.clone())))
        }
        // An HTTP/1.1 connection is out of its handshake with its first
        // complete request head (see `Tracked`).
        Protocol::Http1 => (http.http1_only(), None),
    };
    let io = Preface {
        inner: io,
        replay,
        replayed: 0,
        meter,
    };
    let activity = Arc::new(Activity::default());
    let handle = ConnectionHandle {
        close: CancellationToken::new(),
        peer,
    };
    let service = TowerToHyperService::new(Tracked {
        inner: service,
        activity: activity.clone(),
        handle: handle.clone(),
        handshake: handshake.clone(),
    });
    let mut conn = pin!(http.serve_connection(TokioIo::new(io), service));
    let mut handshake_due = pin!(tokio::time::sleep_until(deadline));
    let mut idle = pin!(tokio::time::sleep(settings.idle_timeout));
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                break;
            }
            () = &mut handshake_due, if !handshake.is_done() => {
                if !handshake.is_done() {
                    tracing::debug!(%peer, "no complete HTTP/1.1 request head within the handshake timeout; closed");
                    break;
                }
            }
            () = handle.close.cancelled() => break,
            () = flood.cancelled(), if !closing => {
                tracing::info!(%peer, limit = CONTROL_FRAMES_PER_SEC, "control-frame flood; GOAWAY");
                metrics::counter!(crate::observe::FRAME_FLOODS).increment(1);
                conn.as_mut().graceful_shutdown();
                closing = true;
                idle.as_mut().reset(Instant::now() + FLOOD_CLOSE_GRACE);
            }
            // Only a connection taken out of the handshake map is evicted,
            // and the accept loop waits for its slot: honour it even if the
            // preface completed meanwhile.
            () = evict.cancelled() => {
                tracing::debug!(%peer, "dropped in its handshake to make room");
                break;
            }
            () = activity.changed.notified() => {
                let at = if activity.open.load(Ordering::Acquire) == 0 {
                    Instant::now() + settings.idle_timeout
                } else {
                    far_future()
                };
                if !closing {
                    idle.as_mut().reset(at);
                }
            }
            () = &mut idle => {
                if closing {
                    tracing::debug!(%peer, "client did not close after GOAWAY; dropped");
                    break;
                }
                if activity.open.load(Ordering::Acquire) == 0 {
                    tracing::debug!(%peer, "idle; GOAWAY");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    idle.as_mut().reset(Instant::now() + IDLE_CLOSE_GRACE);
                } else {
                    idle.as_mut().reset(far_future());
                }
            }
            () = stop.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                idle.as_mut().reset(far_future());
            }
        }
    }
    drop(slot);
}

/// Far enough never to fire (tokio clamps larger instants anyway).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
