//! What operators see: Prometheus metrics, and a trace span per RPC with its
//! method, caller and status.
//!
//! Metric names (all prefixed `backchannel_`): `rpc_requests_total{method,code}`,
//! `rpc_duration_seconds{method}` (`method` is a served method's path or
//! [`UNKNOWN_METHOD`]), `subscriptions_open`,
//! `events_delivered_total`, `subscriber_lag_events`, `replays_total{reason}`,
//! `writer_batch_size`, `writer_commit_seconds`, `store_errors_total{reason}`,
//! `connections_open`, `connections_shed_total`.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use prost::Message as _;
use tonic::codegen::http;
use tower::{Layer, Service};
use tracing::Instrument as _;

/// Calls by method and status code.
pub const RPC_REQUESTS: &str = "backchannel_rpc_requests_total";
/// Call latency by method (until the status is sent; streams: their lifetime).
pub const RPC_DURATION: &str = "backchannel_rpc_duration_seconds";
/// Subscriptions open now.
pub const SUBSCRIPTIONS_OPEN: &str = "backchannel_subscriptions_open";
/// Subscriptions and health watches refused at a limit (`limit`: total,
/// party, health).
pub const SUBSCRIPTIONS_REFUSED: &str = "backchannel_subscriptions_refused_total";
/// Pages read from the log by subscriptions replaying it.
pub const REPLAY_PAGES: &str = "backchannel_replay_pages_total";
/// Connections closed for flooding control frames.
pub const FRAME_FLOODS: &str = "backchannel_frame_floods_total";
/// Bytes of events the in-memory window holds.
pub const WINDOW_BYTES: &str = "backchannel_window_bytes";
/// Health `Watch` streams open now.
pub const HEALTH_WATCHES_OPEN: &str = "backchannel_health_watches_open";
/// Calls refused for being over their party's request rate.
pub const RATE_LIMITED: &str = "backchannel_rate_limited_total";
/// Events sent to subscribers.
pub const EVENTS_DELIVERED: &str = "backchannel_events_delivered_total";
/// How many events behind the head a subscriber was when sent an event.
pub const SUBSCRIBER_LAG: &str = "backchannel_subscriber_lag_events";
/// Subscriptions served from the durable log, by reason (start, lag, gap).
pub const REPLAYS: &str = "backchannel_replays_total";
/// Requests committed per transaction.
pub const WRITER_BATCH: &str = "backchannel_writer_batch_size";
/// Time to commit one batch (including the fsync).
pub const WRITER_COMMIT: &str = "backchannel_writer_commit_seconds";
/// Store failures by reason (STORE_UNAVAILABLE, STORE_FULL, …, INTERNAL).
pub const STORE_ERRORS: &str = "backchannel_store_errors_total";
/// Size of the embedded store's write-ahead log after the last commit.
pub const WAL_BYTES: &str = "backchannel_wal_bytes";
/// Time the writer spent checkpointing and truncating the WAL.
pub const WAL_CHECKPOINT: &str = "backchannel_wal_checkpoint_seconds";
/// Client connections open now (past accept, TLS and HTTP/2 included).
pub const CONNECTIONS_OPEN: &str = "backchannel_connections_open";
/// Connections closed at the connection limit to make room or refused.
pub const CONNECTIONS_SHED: &str = "backchannel_connections_shed_total";

/// Starts the Prometheus endpoint on `addr` (`GET /metrics`); returns the
/// address it listens on (port 0 picks a free one).
pub async fn serve_metrics(
    addr: SocketAddr,
) -> Result<SocketAddr, Box<dyn std::error::Error + Send + Sync>> {
    const SECONDS: &[f64] = &[
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];
    const COUNTS: &[f64] = &[
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 8192.0, 65536.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Full(WRITER_BATCH.into()), COUNTS)?
        .set_buckets_for_metric(Matcher::Full(SUBSCRIBER_LAG.into()), COUNTS)?
        .install_recorder()?;
    describe();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Histograms are drained into their buckets periodically.
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "serving metrics");
    Ok(addr)
}

/// Help texts, and zeros for what may not have happened yet.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RPC_REQUESTS, "Calls by method and gRPC status code");
    describe_histogram!(
        RPC_DURATION,
        metrics::Unit::Seconds,
        "Call latency by method (streams: lifetime)"
    );
    describe_gauge!(SUBSCRIPTIONS_OPEN, "Subscriptions open now");
    describe_counter!(
        SUBSCRIPTIONS_REFUSED,
        "Subscriptions and health watches refused at a limit (total, party, health)"
    );
    describe_gauge!(HEALTH_WATCHES_OPEN, "Health Watch streams open now");
    describe_counter!(
        FRAME_FLOODS,
        "Connections closed for flooding control frames (WINDOW_UPDATE, PING, SETTINGS, ...)"
    );
    describe_counter!(
        REPLAY_PAGES,
        "Pages read from the log by subscriptions replaying it"
    );
    describe_gauge!(
        WINDOW_BYTES,
        "Bytes of events the in-memory window of recent events holds"
    );
    describe_counter!(
        RATE_LIMITED,
        "Calls refused for being over their party's request rate"
    );
    describe_counter!(EVENTS_DELIVERED, "Events sent to subscribers");
    describe_histogram!(
        SUBSCRIBER_LAG,
        "Events between the head and each event sent to a subscriber"
    );
    describe_counter!(
        REPLAYS,
        "Subscriptions served from the durable log, by reason (start, lag, gap)"
    );
    describe_histogram!(WRITER_BATCH, "Requests committed per transaction");
    describe_histogram!(
        WRITER_COMMIT,
        metrics::Unit::Seconds,
        "Time to commit one batch, fsync included"
    );
    describe_counter!(STORE_ERRORS, "Store failures by reason");
    describe_gauge!(
        WAL_BYTES,
        metrics::Unit::Bytes,
        "Size of the embedded store's write-ahead log after the last commit"
    );
    describe_histogram!(
        WAL_CHECKPOINT,
        metrics::Unit::Seconds,
        "Time the writer spent checkpointing and truncating the write-ahead log"
    );
    describe_gauge!(CONNECTIONS_OPEN, "Client connections open now");
    describe_counter!(
        CONNECTIONS_SHED,
        "Connections closed at the connection limit (the oldest still in its handshake, else the new one)"
    );
    metrics::gauge!(SUBSCRIPTIONS_OPEN).set(0.0);
    metrics::counter!(CONNECTIONS_SHED).increment(0);
    metrics::counter!(EVENTS_DELIVERED).increment(0);
    for reason in [
        "STORE_UNAVAILABLE",
        "STORE_FULL",
        "STORE_READ_ONLY",
        "STORE_LOST",
        "RECORD_CORRUPT",
        "INTERNAL",
    ] {
        metrics::counter!(STORE_ERRORS, "reason" => reason).increment(0);
    }
}

/// The `method` label of calls to a path no service serves. A client may
/// send any path, before it is routed or authenticated; labelled by path,
/// each would be a metric series kept for the life of the process.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The path of every method served: ours, health, and both versions of
/// reflection.
static METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
    .into_iter()
    // Built in at compile time; one that did not decode would leave its
    // methods labelled `unknown` (the unit test below would fail first).
    .filter_map(|fds| prost_types::FileDescriptorSet::decode(fds).ok())
    .flat_map(|fds| fds.file)
    .flat_map(|file| {
        let package = file.package().to_owned();
        file.service.into_iter().flat_map(move |service| {
            let prefix = format!("/{package}.{}/", service.name());
            service
                .method
                .into_iter()
                .map(move |m| format!("{prefix}{}", m.name()))
        })
    })
    .collect()
});

/// The `method` label of a call to `path`: the path of a method served,
/// else [`UNKNOWN_METHOD`].
pub fn method_label(path: &str) -> &'static str {
    METHODS.get(path).map_or(UNKNOWN_METHOD, String::as_str)
}

/// The gRPC status code names, by number.
fn code_name(code: &[u8]) -> &'static str {
    match code {
        b"0" => "OK",
        b"1" => "CANCELLED",
        b"2" => "UNKNOWN",
        b"3" => "INVALID_ARGUMENT",
        b"4" => "DEADLINE_EXCEEDED",
        b"5" => "NOT_FOUND",
        b"6" => "ALREADY_EXISTS",
        b"7" => "PERMISSION_DENIED",
        b"8" => "RESOURCE_EXHAUSTED",
        b"9" => "FAILED_PRECONDITION",
        b"10" => "ABORTED",
        b"11" => "OUT_OF_RANGE",
        b"12" => "UNIMPLEMENTED",
        b"13" => "INTERNAL",
        b"14" => "UNAVAILABLE",
        b"15" => "DATA_LOSS",
        b"16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// The tower layer that observes every call.
#[derive(Debug, Clone, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// A service observed by [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

/// One call being observed; reports itself once, when its status is known.
struct Call {
    method: &'static str,
    start: Instant,
    span: tracing::Span,
}

impl Call {
    /// Counts and logs the call, which ended with `code`; `status` holds
    /// the headers or trailers it came in, whose message and details (a
    /// refusal's reason) the log names.
    fn finish(self, code: &'static str, status: Option<&http::HeaderMap>) {
        let elapsed = self.start.elapsed();
        metrics::counter!(RPC_REQUESTS, "method" => self.method, "code" => code).increment(1);
        metrics::histogram!(RPC_DURATION, "method" => self.method).record(elapsed.as_secs_f64());
        self.span.record("code", code);
        let ms = elapsed.as_secs_f64() * 1000.0;
        let _g = self.span.enter();
        if code == "OK" {
            tracing::debug!(elapsed_ms = ms, "rpc");
            return;
        }
        // A refusal's reason and message, as the client gets them.
        let refusal = status.and_then(tonic::Status::from_header_map);
        let status_message = refusal.as_ref().map_or("", |s| s.message());
        let reason = refusal.as_ref().and_then(|s| {
            use tonic_types::StatusExt;
            s.get_details_error_info().map(|i| i.reason)
        });
        let reason = reason.as_deref().unwrap_or("");
        match code {
            "INTERNAL" | "UNKNOWN" | "DATA_LOSS" => {
                tracing::warn!(elapsed_ms = ms, reason, status_message, "rpc")
            }
            // A store fault refuses every write while it lasts; the writer
            // logs the fault once, so each refusal is only `info`.
            _ => tracing::info!(elapsed_ms = ms, reason, status_message, "rpc"),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Observe<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let method = method_label(req.uri().path());
        // The token check fills in `caller`.
        let span = tracing::info_span!(
            "rpc",
            method,
            caller = tracing::field::Empty,
            code = tracing::field::Empty
        );
        let fut = {
            let _g = span.enter();
            self.inner.call(req)
        };
        let call = Call {
            method,
            start: Instant::now(),
            span: span.clone(),
        };
        Box::pin(
            async move {
                let res = fut.await?;
                let (parts, body) = res.into_parts();
                // A status in the headers is a trailers-only response.
                let call = match parts.headers.get("grpc-status") {
                    Some(code) => {
                        call.finish(code_name(code.as_bytes()), Some(&parts.headers));
                        None
                    }
                    None => Some(call),
                };
                Ok(http::Response::from_parts(
                    parts,
                    ObservedBody { inner: body, call },
                ))
            }
            .instrument(span),
        )
    }
}

pin_project_lite::pin_project! {
    /// A response body that reports its call when the trailers pass.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for ObservedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its status: the client went away.
            if let Some(call) = this.project().call.take() {
                call.finish("CANCELLED", None);
            }
        }
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    let code = trailers
                        .get("grpc-status")
                        .map_or("UNKNOWN", |c| code_name(c.as_bytes()));
                    call.finish(code, Some(trailers));
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = this.call.take() {
                    call.finish("UNKNOWN", None);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_served_is_its_own_label_and_nothing_else_is() {
        for path in [
            "/backchannel.v1.PartyService/WhoAmI",
            "/backchannel.v1.ChannelService/ListChannels",
            "/backchannel.v1.MessageService/Subscribe",
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(method_label(path), path);
        }
        for path in [
            "",
            "/",
            "/backchannel.v1.PartyService/",
            "/backchannel.v1.PartyService/Nope",
            "/backchannel.v1.PartyService/WhoAmI/",
            "/grpc.health.v1.Health",
        ] {
            assert_eq!(method_label(path), UNKNOWN_METHOD, "{path}");
        }
    }
}
