//! A gRPC status as the JSON view answers it: the HTTP status grpc-gateway
//! gives its code, and a body of `google.rpc.Status` in proto3 JSON, its
//! details (`ErrorInfo`, `BadRequest`, …) with their `@type`.

use bytes::Bytes;
use prost_reflect::{DynamicMessage, Value};
use tonic::Code;
use tonic::body::Body;
use tonic::codegen::http::{HeaderValue, Response, StatusCode, header};

/// The HTTP status of a gRPC code, as grpc-gateway maps it.
pub(super) fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        // grpc-gateway's 499 "client closed request".
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `status` as `google.rpc.Status` JSON, on one line; `details` is always
/// there (empty when the status has none).
pub(super) fn json(status: &tonic::Status) -> String {
    let code = status.code() as i32;
    let mut value = details_json(status).unwrap_or_else(|| serde_json::json!({}));
    if let Some(o) = value.as_object_mut() {
        o.insert("code".into(), code.into());
        o.insert("message".into(), status.message().into());
        o.entry("details").or_insert_with(|| serde_json::json!([]));
    }
    value.to_string()
}

/// The status's `grpc-status-details-bin` (a whole `google.rpc.Status`) in
/// proto3 JSON, when it has one that the descriptors describe.
fn details_json(status: &tonic::Status) -> Option<serde_json::Value> {
    if status.details().is_empty() {
        return None;
    }
    let pool = crate::pb::descriptor_pool().ok()?;
    let desc = pool.get_message_by_name("google.rpc.Status")?;
    let mut message = DynamicMessage::decode(desc, status.details()).ok()?;
    message.set_field_by_name("code", Value::I32(status.code() as i32));
    match serde_json::to_value(&message) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::debug!(error = %e, "status details not shown as JSON");
            None
        }
    }
}

/// The JSON view's answer to a failed call.
pub(super) fn response(status: &tonic::Status) -> Response<Body> {
    response_as(http_status(status.code()), status)
}

/// A failed call answered with a given HTTP status (413, 405, …).
pub(super) fn response_as(http: StatusCode, status: &tonic::Status) -> Response<Body> {
    json_response(http, json(status).into())
}

/// A JSON answer; never cached (it shows what one token may see).
pub(super) fn json_response(http: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Body::new(http_body_util::Full::new(body)));
    *r.status_mut() = http;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}
