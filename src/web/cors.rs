//! CORS for gRPC-Web and the JSON view: closed unless origins are given
//! (`--cors-allow-origin`); the board itself is same-origin and needs none.
//! A preflight from an origin not allowed is refused outright (403, no
//! `Access-Control-Allow-Origin`) rather than answered without the header,
//! so that its failure is plain in the browser's network log.

use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::http::{self, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Request headers a gRPC-Web client or the JSON view sends.
const ALLOW_HEADERS: [&str; 5] = [
    "authorization",
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
];

/// Response headers a gRPC-Web client reads (its status, when it comes in
/// the headers of a trailers-only response).
const EXPOSE_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// The CORS layer for these origins (none: every cross-origin read is
/// left without the header, so the browser refuses it).
pub(super) fn layer(origins: &[HeaderValue]) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([Method::POST, Method::GET, Method::OPTIONS])
        .allow_headers(ALLOW_HEADERS.map(HeaderName::from_static))
        .expose_headers(EXPOSE_HEADERS.map(HeaderName::from_static))
        .max_age(PREFLIGHT_MAX_AGE)
}

/// A CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub(super) fn is_preflight<T>(req: &Request<T>) -> bool {
    req.method() == Method::OPTIONS
        && req.headers().contains_key(http::header::ORIGIN)
        && req
            .headers()
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Whether the request's origin is one of `origins`.
pub(super) fn allowed<T>(origins: &[HeaderValue], req: &Request<T>) -> bool {
    req.headers()
        .get(http::header::ORIGIN)
        .is_some_and(|o| origins.contains(o))
}

/// The answer to a preflight from an origin not allowed.
pub(super) fn refused<T>(req: &Request<T>) -> Response<Body> {
    let origin = req
        .headers()
        .get(http::header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .unwrap_or("");
    tracing::debug!(origin, path = req.uri().path(), "CORS preflight refused");
    super::plain(
        StatusCode::FORBIDDEN,
        "origin not allowed (the server's --cors-allow-origin)\n",
    )
}

/// Parses `--cors-allow-origin` values: each an origin as a browser sends
/// it (`scheme://host[:port]`, no path).
pub fn parse_origins(values: &[String]) -> Result<Vec<HeaderValue>, String> {
    values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| {
            let shaped = (v.starts_with("http://") || v.starts_with("https://"))
                && !v
                    .trim_end_matches('/')
                    .split("://")
                    .nth(1)
                    .unwrap_or("")
                    .contains('/');
            if v == "*" || !shaped {
                return Err(format!(
                    "--cors-allow-origin {v:?}: give an origin such as https://app.example.com \
                     (a scheme and host, and a port if not the default; no path, no wildcard)"
                ));
            }
            HeaderValue::from_str(v.trim_end_matches('/'))
                .map_err(|e| format!("--cors-allow-origin {v:?}: {e}"))
        })
        .collect()
}
