//! Connection hygiene (DESIGN §5, "A hostile client costs little"): the
//! accept loop, TLS, and the life of each connection.
//!
//! tonic's own `serve` gives a connection no deadline for its handshake, no
//! idle timeout and no bound on how many are open, so idle sockets could
//! hold every file descriptor. The server therefore accepts connections
//! itself and hands each to hyper's HTTP/2 server:
//! - a connection that has not completed TLS (when on) and sent the 24-byte
//!   HTTP/2 preface within the handshake timeout is closed;
//! - a connection with no open stream for the idle timeout gets `GOAWAY`
//!   (an open subscription is a stream, so it keeps its connection);
//! - at most `max_connections` are open, kept below the file-descriptor
//!   limit. At the limit the oldest connection still in its handshake makes
//!   room for the new one (a flood of idle sockets cannot keep a client out;
//!   a well-behaved client is out of its handshake within milliseconds), and
//!   when every connection is past its handshake the new one is closed. What
//!   is shed is logged at most once per [`SHED_LOG_INTERVAL`].

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http;
use tower::Service;

use crate::observe::{CONNECTIONS_OPEN, CONNECTIONS_SHED};

/// Any failure, for the log.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`) is 24 bytes.
const PREFACE_LEN: usize = 24;

/// Control frames (PRIORITY, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE) a
/// connection may send in one second. h2 bounds resets and CONTINUATION
/// itself, but answers every WINDOW_UPDATE, PING and SETTINGS frame however
/// many come; a client that does flow control honestly sends a few per
/// stream and MiB read. Over this, the connection gets `GOAWAY` and is read
/// no more.
pub const CONTROL_FRAMES_PER_SEC: u32 = 20_000;
/// How long a flooding connection has to take its `GOAWAY` before it is
/// dropped.
const FLOOD_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Shed connections are logged at most once per this interval, with a count.
pub const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// File descriptors kept for everything but client connections: the store's
/// files, the PostgreSQL pool, a backup, the metrics endpoint and its
/// scrapers, the listeners, the runtime's own descriptors.
pub const FD_RESERVE: u64 = 128;

/// After a `GOAWAY` for idleness, how long the client gets to close before
/// the server drops the connection.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(10);

/// How long the accept loop pauses when accepting fails for want of
/// descriptors (it would otherwise spin).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How connections are treated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time from accept to a complete TLS handshake and HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// Time a connection may stay open with no stream.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most concurrent streams on one connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// TCP keepalive on accepted sockets.
    pub tcp_keepalive: Duration,
}

/// Raises the soft limit on open files to the hard limit where allowed, and
/// returns `(soft, hard)` as they are afterwards.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        } else {
            tracing::warn!(
                error = %io::Error::last_os_error(),
                soft = lim.rlim_cur,
                hard = lim.rlim_max,
                "cannot raise the file-descriptor limit"
            );
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// The connection limit for a soft file-descriptor limit: `asked` when
/// given, never above the descriptors left after [`FD_RESERVE`] (or half
/// the limit, when it is small).
pub fn connection_limit(asked: Option<usize>, fd_soft: u64) -> usize {
    // A limit past a million means "unlimited"; the semaphore wants a bound.
    let fd_soft = fd_soft.min(1 << 20);
    let ceiling = usize::try_from(fd_soft - FD_RESERVE.min(fd_soft / 2))
        .unwrap_or(usize::MAX)
        .max(1);
    match asked {
        Some(n) if n > ceiling => {
            tracing::warn!(
                asked = n,
                max_connections = ceiling,
                "--max-connections is above the file-descriptor limit allows; lowered"
            );
            ceiling
        }
        Some(n) => n.max(1),
        None => ceiling,
    }
}

/// TLS from PEM: a certificate chain and key, and optionally the CA whose
/// client certificates are required (mTLS). Offers only HTTP/2 (ALPN `h2`).
pub fn tls_acceptor(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<TlsAcceptor, BoxError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
    let certs = |pem: &[u8]| {
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot parse certificate: {e}"))
    };
    let builder = ServerConfig::builder();
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certs(ca)?);
            builder.with_client_cert_verifier(WebPkiClientVerifier::builder(roots.into()).build()?)
        }
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("cannot parse private key: {e}"))?;
    let mut config = builder.with_single_cert(certs(cert_pem)?, key)?;
    config.alpn_protocols.push(b"h2".to_vec());
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The open connections: a slot each, and which are still in their handshake.
struct Connections {
    /// One permit per connection that may be open.
    slots: Arc<Semaphore>,
    /// Connections still in their handshake, oldest (lowest id) first, with
    /// the token that drops one to make room.
    handshaking: Mutex<BTreeMap<u64, CancellationToken>>,
}

impl Connections {
    /// Drops the oldest connection still in its handshake; false if none is.
    fn evict_oldest_handshake(&self) -> bool {
        let oldest = self
            .handshaking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_first();
        oldest.map(|(_, evict)| evict.cancel()).is_some()
    }

    fn handshake_over(&self, id: u64) {
        self.handshaking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }
}

/// A connection's hold on its slot; dropping it frees the slot.
struct Slot {
    connections: Arc<Connections>,
    id: u64,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.handshake_over(self.id);
        metrics::gauge!(CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// Whether a connection has completed its handshake.
struct Handshake {
    done: AtomicBool,
    connections: Arc<Connections>,
    id: u64,
}

impl Handshake {
    fn complete(&self) {
        self.done.store(true, Ordering::Release);
        self.connections.handshake_over(self.id);
    }

    fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// Counts what has been shed and logs it at most once per
/// [`SHED_LOG_INTERVAL`] (the first at once).
struct ShedLog {
    max_connections: usize,
    unlogged: u64,
    total: u64,
    last: Option<Instant>,
}

impl ShedLog {
    fn shed(&mut self) {
        metrics::counter!(CONNECTIONS_SHED).increment(1);
        self.unlogged += 1;
        self.total += 1;
        if self.last.is_none_or(|t| t.elapsed() >= SHED_LOG_INTERVAL) {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.unlogged == 0 {
            return;
        }
        tracing::warn!(
            shed = self.unlogged,
            shed_total = self.total,
            max_connections = self.max_connections,
            "connection limit reached: connections shed (the oldest still in their handshake, \
             else the newest)"
        );
        self.unlogged = 0;
        self.last = Some(Instant::now());
    }
}

/// Serves gRPC `service` on `listener` until `shutdown` resolves, then stops
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
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
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
            http2.clone(),
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

/// A connection just accepted, with its slot.
struct Accepted {
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    /// Cancelled to drop the connection for a newer one while it is still
    /// in its handshake.
    evict: CancellationToken,
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

/// One connection's life: TLS, the preface deadline, HTTP/2 until it ends,
/// `GOAWAY` when idle or at shutdown.
async fn connection<S, B>(
    accepted: Accepted,
    tls: Option<TlsAcceptor>,
    service: S,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
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
    let io = match tls {
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
    let flood = CancellationToken::new();
    let io = Preface {
        inner: io,
        seen: 0,
        handshake: Some(handshake.clone()),
        meter: FrameMeter::new(flood.clone()),
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
    });
    let mut conn = pin!(http2.serve_connection(TokioIo::new(io), service));
    let mut preface_due = pin!(tokio::time::sleep_until(deadline));
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
            () = &mut preface_due, if !handshake.is_done() => {
                if !handshake.is_done() {
                    tracing::debug!(%peer, "no HTTP/2 preface within the handshake timeout; closed");
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

/// The connection's IO, which marks the handshake done once the HTTP/2
/// preface has been read (above TLS, so it counts plaintext).
struct Preface<T> {
    inner: T,
    seen: usize,
    handshake: Option<Arc<Handshake>>,
    meter: FrameMeter,
}

/// Counts the control frames a connection reads, from their 9-byte headers
/// (payloads are skipped), in one-second windows.
struct FrameMeter {
    /// Payload bytes of the current frame still to skip.
    skip: usize,
    header: [u8; 9],
    have: usize,
    window: Instant,
    control: u32,
    flood: CancellationToken,
}

impl FrameMeter {
    fn new(flood: CancellationToken) -> FrameMeter {
        FrameMeter {
            skip: 0,
            header: [0; 9],
            have: 0,
            window: Instant::now(),
            control: 0,
            flood,
        }
    }

    /// Takes the next bytes read after the preface; `true` once the
    /// connection is over its budget.
    fn read(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 9 {
                break;
            }
            self.have = 0;
            let h = &self.header;
            self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            // PRIORITY, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE.
            if matches!(h[3], 0x2 | 0x3 | 0x4 | 0x6 | 0x8) {
                let now = Instant::now();
                if now.duration_since(self.window) >= Duration::from_secs(1) {
                    self.window = now;
                    self.control = 0;
                }
                self.control += 1;
                if self.control > CONTROL_FRAMES_PER_SEC {
                    self.flood.cancel();
                    return true;
                }
            }
        }
        false
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Preface<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A flooding connection is read no more: what it sends waits in
        // the kernel, costing nothing, until the connection is dropped.
        if this.meter.flood.is_cancelled() {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let mut new = &buf.filled()[before..];
        if this.seen < PREFACE_LEN {
            let n = (PREFACE_LEN - this.seen).min(new.len());
            this.seen += n;
            new = &new[n..];
            if this.seen >= PREFACE_LEN
                && let Some(h) = this.handshake.take()
            {
                h.complete();
            }
        }
        this.meter.read(new);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Preface<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How many streams a connection has open; the connection task is told
/// whenever the count changes.
#[derive(Default)]
struct Activity {
    open: AtomicUsize,
    changed: Notify,
}

/// One open stream, from its request until its response body is dropped.
struct OpenStream(Arc<Activity>);

impl OpenStream {
    fn new(activity: Arc<Activity>) -> OpenStream {
        activity.open.fetch_add(1, Ordering::AcqRel);
        activity.changed.notify_one();
        OpenStream(activity)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// The gRPC service, counting the connection's open streams.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    handle: ConnectionHandle,
}

impl<S, B> Service<http::Request<hyper::body::Incoming>> for Tracked<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let open = OpenStream::new(self.activity.clone());
        req.extensions_mut().insert(self.handle.clone());
        TrackedCall {
            call: self.inner.call(req.map(tonic::body::Body::new)),
            open: Some(open),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call until its response: the stream stays counted in its body.
    struct TrackedCall<F> {
        #[pin]
        call: F,
        open: Option<OpenStream>,
    }
}

impl<F, B, E> Future for TrackedCall<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.call.poll(cx))?;
        let open = this.open.take();
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, _open: open })))
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its stream counted until it is dropped.
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        _open: Option<OpenStream>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
