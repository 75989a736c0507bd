//! The board's JSON view: `POST /api/<service>/<Method>` with the proto3
//! JSON of the request and `Authorization: Bearer TOKEN`. The JSON becomes
//! the request message through the descriptors, is framed as gRPC and sent
//! in-process to the same gRPC service the gRPC clients reach (with the
//! original request's extensions, so the connection's handle too): every
//! call runs the same authentication, visibility, quota and fan-out code.
//! The answer comes back as proto3 JSON, or, for a server stream, as
//! server-sent events (`sse.rs`); a failure as `google.rpc.Status` JSON
//! with the HTTP status of its code (`status.rs`).
//!
//! A request costs little: its token is checked before its body is read
//! (so a caller without one is refused for the price of its headers, and
//! in the contract's order, UNAUTHENTICATED first); the body is at most
//! [`MAX_REQUEST_BYTES`], read within [`BODY_READ_TIMEOUT`], and parsed on
//! a blocking thread. The token is read only from the header and never
//! logged.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DynamicMessage, MethodDescriptor};
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderValue, Method, Request, Response, StatusCode, header};
use tower::{Service, ServiceExt};

use std::sync::Arc;

use super::BoxError;
use super::frames::{Item, Reply, frame};
use super::status;
use crate::auth::Authenticator;
use crate::domain::{Reason, Rejection};

/// Largest request body: twice the default limit of a gRPC request
/// (whose own limit applies again to the request it becomes).
pub const MAX_REQUEST_BYTES: usize = 2 << 20;

/// Time a client gets to send its whole request body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The services the JSON view serves (not health, not reflection).
const SERVICES: [&str; 4] = [
    "backchannel.v1.PartyService",
    "backchannel.v1.ChannelService",
    "backchannel.v1.MessageService",
    "backchannel.v1.AuditService",
];

/// Answers one request to `/api/...` through `grpc`.
pub(super) async fn call<G, B>(
    grpc: G,
    auth: Arc<Authenticator>,
    req: Request<Body>,
) -> Response<Body>
where
    G: Service<Request<Body>, Response = Response<B>, Error = BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match answer(grpc, &auth, req).await {
        Ok(r) | Err(r) => r,
    }
}

async fn answer<G, B>(
    grpc: G,
    auth: &Authenticator,
    req: Request<Body>,
) -> Result<Response<Body>, Response<Body>>
where
    G: Service<Request<Body>, Response = Response<B>, Error = BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let method = rpc(parts.uri.path()).map_err(|r| *r)?;
    if parts.method != Method::POST {
        let mut r = status::response_as(
            StatusCode::METHOD_NOT_ALLOWED,
            &tonic::Status::unimplemented("the JSON view takes POST"),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Err(r);
    }
    if parts.uri.query().is_some() {
        return Err(invalid(
            "the JSON view takes no query parameters (the token goes in the Authorization header)",
        ));
    }
    if !is_json(parts.headers.get(header::CONTENT_TYPE)) {
        return Err(status::response_as(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &crate::error::status(&Rejection::new(
                Reason::INVALID_REQUEST,
                "the JSON view takes Content-Type: application/json",
            )),
        ));
    }
    // Before the body: the same check the gRPC stack makes again.
    auth.authenticate(&tonic::metadata::MetadataMap::from_headers(
        parts.headers.clone(),
    ))
    .map_err(|r| status::response(&crate::error::status(&r)))?;
    let bytes = read_body(body, &parts.headers).await?;
    let parsing = method.clone();
    let request = tokio::task::spawn_blocking(move || parse(&parsing, &bytes))
        .await
        .map_err(|_| status::response(&tonic::Status::internal("the request could not be parsed")))?
        .map_err(|r| *r)?;

    let mut inner = Request::new(Body::new(http_body_util::Full::new(frame(
        &request.encode_to_vec(),
    ))));
    *inner.method_mut() = Method::POST;
    *inner.version_mut() = http::Version::HTTP_2;
    *inner.uri_mut() = format!("/{}/{}", method.parent_service().full_name(), method.name())
        .parse()
        .map_err(|_| not_found())?;
    let h = inner.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Some(token) = parts.headers.get(header::AUTHORIZATION) {
        h.insert(header::AUTHORIZATION, token.clone());
    }
    // The connection's handle among them: a stream whose reader stalls is
    // ended as a gRPC one would be.
    *inner.extensions_mut() = parts.extensions;

    let response = grpc.oneshot(inner).await.map_err(|e| {
        tracing::warn!(error = %e, rpc = method.full_name(), "JSON view: the call failed");
        status::response(&tonic::Status::internal("the call failed"))
    })?;
    let mut reply = Reply::new(response);
    let first = match reply.next().await {
        Item::End(s) if s.code() != tonic::Code::Ok => return Err(status::response(&s)),
        Item::End(s) => {
            if method.is_server_streaming() {
                return Ok(super::sse::response(method.output(), None, reply));
            }
            return Err(status::response(&tonic::Status::internal(format!(
                "no answer to {} ({})",
                method.full_name(),
                s.message()
            ))));
        }
        Item::Message(m) => m,
    };
    if method.is_server_streaming() {
        return Ok(super::sse::response(method.output(), Some(first), reply));
    }
    match reply.next().await {
        Item::End(s) if s.code() == tonic::Code::Ok => {}
        Item::End(s) => return Err(status::response(&s)),
        Item::Message(_) => {
            return Err(status::response(&tonic::Status::internal(
                "more than one answer to a unary call",
            )));
        }
    }
    let json = to_json(&method, &first).map_err(|s| status::response(&s))?;
    Ok(status::json_response(StatusCode::OK, json.into()))
}

/// The RPC a path names: `/api/<one of SERVICES>/<Method>`, not
/// client-streaming.
fn rpc(path: &str) -> Result<MethodDescriptor, Box<Response<Body>>> {
    let missing = || Box::new(not_found());
    let rest = path.strip_prefix("/api/").ok_or_else(missing)?;
    let (service, name) = rest.split_once('/').ok_or_else(missing)?;
    if !SERVICES.contains(&service) {
        return Err(missing());
    }
    let pool = crate::pb::descriptor_pool().map_err(|e| {
        tracing::error!(error = e, "JSON view without descriptors");
        Box::new(status::response(&tonic::Status::internal("no descriptors")))
    })?;
    pool.get_service_by_name(service)
        .and_then(|s| s.methods().find(|m| m.name() == name))
        .filter(|m| !m.is_client_streaming())
        .ok_or_else(missing)
}

fn not_found() -> Response<Body> {
    status::response_as(
        StatusCode::NOT_FOUND,
        &tonic::Status::unimplemented(
            "no such method: the JSON view serves POST /api/backchannel.v1.<Service>/<Method>",
        ),
    )
}

/// A request malformed by itself: `INVALID_REQUEST`.
fn invalid(message: impl Into<String>) -> Response<Body> {
    refused(Rejection::new(Reason::INVALID_REQUEST, message))
}

/// A refusal with its reason, as every refusal of the API has.
fn refused(r: Rejection) -> Response<Body> {
    status::response(&crate::error::status(&r))
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// The whole request body: at most [`MAX_REQUEST_BYTES`] (413 beyond),
/// within [`BODY_READ_TIMEOUT`] (408 after).
async fn read_body(body: Body, headers: &http::HeaderMap) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        status::response_as(
            StatusCode::PAYLOAD_TOO_LARGE,
            &crate::error::status(
                &Rejection::new(
                    Reason::REQUEST_TOO_LARGE,
                    format!("the request body is larger than {MAX_REQUEST_BYTES} bytes"),
                )
                .with("limit", MAX_REQUEST_BYTES),
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BYTES as u64) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, MAX_REQUEST_BYTES);
    match tokio::time::timeout(BODY_READ_TIMEOUT, limited.collect()).await {
        Err(_) => Err(status::response_as(
            StatusCode::REQUEST_TIMEOUT,
            &tonic::Status::deadline_exceeded(format!(
                "the request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            )),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(invalid(format!("cannot read the request body: {e}"))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// The request message from its proto3 JSON (an empty body is `{}`).
fn parse(method: &MethodDescriptor, bytes: &[u8]) -> Result<DynamicMessage, Box<Response<Body>>> {
    let input = method.input();
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let mut de = serde_json::Deserializer::from_slice(text);
    DynamicMessage::deserialize(input.clone(), &mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| {
            Box::new(invalid(format!(
                "the request body is not a {} in proto3 JSON: {e}",
                input.full_name()
            )))
        })
}

/// An answer message in proto3 JSON (lowerCamelCase names, enums by name,
/// 64-bit integers as strings, defaults left out), on one line.
pub(super) fn to_json(method: &MethodDescriptor, bytes: &[u8]) -> Result<String, tonic::Status> {
    let output = method.output();
    message_json(&output, bytes)
}

/// A message of type `desc` in proto3 JSON, on one line.
pub(super) fn message_json(
    desc: &prost_reflect::MessageDescriptor,
    bytes: &[u8],
) -> Result<String, tonic::Status> {
    let message = DynamicMessage::decode(desc.clone(), bytes).map_err(|e| {
        tracing::warn!(error = %e, message = desc.full_name(), "JSON view: an answer does not decode");
        tonic::Status::internal(format!("an answer does not decode as {}", desc.full_name()))
    })?;
    serde_json::to_string(&message).map_err(|e| {
        tracing::warn!(error = %e, message = desc.full_name(), "JSON view: an answer has no JSON");
        tonic::Status::internal(format!("an answer has no JSON form: {e}"))
    })
}
