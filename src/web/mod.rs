//! The gRPC port's other callers (DESIGN §9): browsers. One listener
//! serves gRPC over HTTP/2 and, beside it,
//! - gRPC-Web (`application/grpc-web*`, over HTTP/1.1 or HTTP/2) for the
//!   browser apps of others, through `tonic-web`;
//! - the board: its page and files (`board.rs`) and a JSON view of the
//!   four `backchannel.v1` services under `/api/` (`json.rs`, streams as
//!   server-sent events in `sse.rs`), transcoded in-process through the
//!   proto descriptors to the very gRPC service the gRPC clients reach;
//! - CORS for both (`cors.rs`), closed by default.
//!
//! [`Front`] is the service every connection calls: it picks which of
//! these a request is for, top to bottom in [`Front::call`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderValue, Method, Request, Response, StatusCode, Version};
use tower::{Layer, Service, ServiceExt};

mod board;
mod cors;
mod frames;
mod json;
mod sse;
mod status;

pub use cors::parse_origins;

/// Any failure, for the log.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

/// What the port serves besides gRPC.
#[derive(Clone)]
pub struct Settings {
    /// The board's page, files and JSON view (`--web on`).
    pub board: bool,
    /// Origins whose browser apps may call gRPC-Web and the JSON view.
    pub cors_allow_origins: Vec<HeaderValue>,
    /// Tokens: the JSON view checks the caller's before it reads a body.
    pub auth: Arc<crate::auth::Authenticator>,
}

/// The service every connection calls: the board, its JSON view and
/// gRPC-Web for browsers, gRPC for the rest.
#[derive(Clone)]
pub struct Front<G> {
    grpc: G,
    /// gRPC-Web and the JSON view, behind CORS.
    browser: tower_http::cors::Cors<Browser<G>>,
    board: bool,
    origins: Arc<[HeaderValue]>,
}

impl<G> Front<G>
where
    G: Clone,
{
    /// In front of `grpc`, the stack the gRPC clients reach.
    pub fn new(grpc: G, settings: Settings) -> Front<G> {
        let browser = Browser {
            grpc_web: tonic_web::GrpcWebLayer::new().layer(grpc.clone()),
            json: grpc.clone(),
            auth: settings.auth.clone(),
            board: settings.board,
        };
        Front {
            browser: cors::layer(&settings.cors_allow_origins).layer(browser),
            grpc,
            board: settings.board,
            origins: settings.cors_allow_origins.into(),
        }
    }
}

impl<G, B> Service<Request<Body>> for Front<G>
where
    G: Service<Request<Body>, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
    G::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call goes to a clone, made ready there.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if cors::is_preflight(&req) {
            if !cors::allowed(&self.origins, &req) {
                return ready(cors::refused(&req));
            }
            return Box::pin(self.browser.clone().oneshot(req));
        }
        if is_grpc_web(&req) {
            return Box::pin(self.browser.clone().oneshot(req));
        }
        let path = req.uri().path();
        if path == "/api" || path.starts_with("/api/") {
            if !self.board {
                return ready(not_found());
            }
            return Box::pin(self.browser.clone().oneshot(req));
        }
        if let Some(file) = board::file(path) {
            if !self.board {
                return ready(not_found());
            }
            return ready(board::serve(file, req.method()));
        }
        if req.version() == Version::HTTP_2 {
            let call = self.grpc.clone().oneshot(req);
            return Box::pin(async move { Ok(call.await?.map(Body::new)) });
        }
        // Plain gRPC needs HTTP/2 (its trailers); nothing else is here.
        ready(not_found())
    }
}

/// What is behind CORS: gRPC-Web, and the JSON view (only when the board
/// is on: `Front` sends nothing else here).
#[derive(Clone)]
struct Browser<G> {
    grpc_web: tonic_web::GrpcWebService<G>,
    json: G,
    auth: Arc<crate::auth::Authenticator>,
    board: bool,
}

impl<G, B> Service<Request<Body>> for Browser<G>
where
    G: Service<Request<Body>, Response = Response<B>, Error = BoxError> + Clone + Send + 'static,
    G::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if is_grpc_web(&req) {
            return Box::pin(self.grpc_web.clone().oneshot(req));
        }
        if self.board && req.uri().path().starts_with("/api/") {
            let (grpc, auth) = (self.json.clone(), self.auth.clone());
            return Box::pin(async move { Ok(json::call(grpc, auth, req).await) });
        }
        ready(not_found())
    }
}

/// Whether `req` is gRPC-Web, by its content type (as `tonic-web` decides).
fn is_grpc_web<T>(req: &Request<T>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc-web"))
}

fn ready(response: Response<Body>) -> BoxFuture {
    Box::pin(std::future::ready(Ok(response)))
}

/// A plain 404: not something this port serves.
fn not_found() -> Response<Body> {
    plain(StatusCode::NOT_FOUND, "not found\n")
}

/// A short text response.
fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::new(http_body_util::Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether a request method reads (GET or HEAD).
fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}
