//! A connection's open streams: the gRPC service, wrapped to count them,
//! so that the connection knows when it is idle.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tonic::codegen::http;
use tower::Service;

use super::connection::ConnectionHandle;
use super::slots::Handshake;

/// How many streams a connection has open; the connection task is told
/// whenever the count changes.
#[derive(Default)]
pub(super) struct Activity {
    pub(super) open: AtomicUsize,
    pub(super) changed: Notify,
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
pub(super) struct Tracked<S> {
    pub(super) inner: S,
    pub(super) activity: Arc<Activity>,
    pub(super) handle: ConnectionHandle,
    /// Completed by the first request of an HTTP/1.1 connection (hyper
    /// calls the service once the request head is complete).
    pub(super) handshake: Arc<Handshake>,
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
        if !self.handshake.is_done() {
            self.handshake.complete();
        }
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
    pub(super) struct TrackedCall<F> {
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
    pub(super) struct TrackedBody<B> {
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
