//! The board's page and files, from `web/`, built into the binary (nothing
//! to build outside cargo, nothing generated), with headers that keep the
//! page to itself: no inline script, no framing, no referrer.

use bytes::Bytes;
use tonic::body::Body;
use tonic::codegen::http::{HeaderValue, Method, Response, StatusCode, header};

/// One of the board's files.
pub(super) struct File {
    body: &'static str,
    content_type: &'static str,
}

const INDEX: File = File {
    body: include_str!("../../web/index.html"),
    content_type: "text/html; charset=utf-8",
};
const SCRIPT: File = File {
    body: include_str!("../../web/board.js"),
    content_type: "text/javascript; charset=utf-8",
};
const STYLE: File = File {
    body: include_str!("../../web/board.css"),
    content_type: "text/css; charset=utf-8",
};

/// The page may load only its own script, style and images, and talk only
/// to its own origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The board's file at `path`, if it is one.
pub(super) fn file(path: &str) -> Option<&'static File> {
    match path {
        "/" | "/index.html" => Some(&INDEX),
        "/board.js" => Some(&SCRIPT),
        "/board.css" => Some(&STYLE),
        _ => None,
    }
}

/// `file` as the answer to a request with `method`.
pub(super) fn serve(file: &'static File, method: &Method) -> Response<Body> {
    if !super::is_read(method) {
        let mut r = super::plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(file.body.as_bytes())
    };
    let mut r = Response::new(Body::new(http_body_util::Full::new(body)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(file.content_type),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(file.body.len()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    r
}
