//! The gRPC codec: prost, except that a request that does not decode is
//! `INVALID_ARGUMENT` (tonic's default says `INTERNAL`); [`RequestFaults`]
//! does the same for the refusals tonic makes before the codec runs, and
//! answers a request over the size limit with `RESOURCE_EXHAUSTED`.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::domain::{Reason, Rejection, validate::DEFAULT_REQUEST_BYTES};

static MAX_REQUEST_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_REQUEST_BYTES);

/// Sets the largest decoded request the server accepts, as [`RequestFaults`]
/// names it in the refusal of a larger one (process-wide). The services
/// enforce it themselves, before decoding: `max_decoding_message_size`, in
/// `server::run`.
pub fn set_max_request_bytes(n: usize) {
    MAX_REQUEST_BYTES.store(n, Ordering::Relaxed);
}

/// The codec of every Backchannel service and client. It bounds no size: the
/// same codec decodes the server's requests and the clients' responses, and
/// those have bounds of their own — a request at most the request limit
/// (1 MiB by default, refused by the service before it reaches the codec),
/// a response under 4 MiB (tonic's default receive limit for a client).
#[derive(Debug)]
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        StrictCodec(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

/// Decodes with prost; maps failures to client errors.
#[derive(Debug)]
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: prost::Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            crate::error::status(&Rejection::new(
                Reason::INVALID_REQUEST,
                format!("the message does not decode: {e}"),
            ))
        })
    }
}

/// Wraps a generated service so that tonic's own refusals of a request it
/// could not read, which happen before our codec or handler sees it, are
/// answered like the codec's: over its size limit (`OUT_OF_RANGE`, or
/// `RESOURCE_EXHAUSTED` when decompressing) becomes `RESOURCE_EXHAUSTED` /
/// `REQUEST_TOO_LARGE`; an empty, truncated or undecompressable body
/// (`INTERNAL`) becomes `INVALID_ARGUMENT` / `INVALID_REQUEST`. Our own
/// statuses always carry details, so only detail-less ones are tonic's.
/// A `RATE_LIMITED` refusal is held for [`crate::quota::TARPIT`] first.
#[derive(Debug, Clone)]
pub struct RequestFaults<S>(pub S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for RequestFaults<S> {
    const NAME: &'static str = S::NAME;
}

/// tonic's messages for request bodies it cannot frame (tonic 0.14).
const TONIC_FRAMING_ERRORS: &[&str] = &[
    "Missing request message",
    "Unexpected EOF decoding stream",
    "Error decompressing",
    "protocol error:",
    // tonic's prost codec, in the services we do not own (health).
    "failed to decode Protobuf message",
];

/// The rejection that replaces tonic's own status in `headers`, if any.
fn request_fault(headers: &tonic::codegen::http::HeaderMap) -> Option<Rejection> {
    if headers.contains_key("grpc-status-details-bin") {
        return None;
    }
    let max = MAX_REQUEST_BYTES.load(Ordering::Relaxed);
    let too_large = || {
        Rejection::new(
            Reason::REQUEST_TOO_LARGE,
            format!("the message is over the limit of {max} bytes"),
        )
    };
    match headers.get("grpc-status")?.as_bytes() {
        b"11" | b"8" => Some(too_large()),
        b"13" => {
            let raw = headers.get("grpc-message")?.as_bytes();
            let message = percent_decode(raw);
            TONIC_FRAMING_ERRORS
                .iter()
                .any(|p| message.starts_with(p))
                .then(|| {
                    Rejection::new(
                        Reason::INVALID_REQUEST,
                        format!("the request body cannot be read: {message}"),
                    )
                })
        }
        _ => None,
    }
}

fn percent_decode(b: &[u8]) -> String {
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl<S, B, R> tonic::codegen::Service<tonic::codegen::http::Request<B>> for RequestFaults<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<B>,
            Response = tonic::codegen::http::Response<R>,
        >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = tonic::codegen::http::Response<R>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        // A reference to the request's bytes, not a copy.
        let uri = req.uri().clone();
        let fut = self.0.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            // A method the service does not have: tonic's generated code
            // answers UNIMPLEMENTED with no message; say which method.
            let h = res.headers();
            if h.get("grpc-status").is_some_and(|c| c == "12") && !h.contains_key("grpc-message") {
                let _ = crate::error::unknown_method(uri.path()).add_header(res.headers_mut());
            }
            if res
                .headers_mut()
                .remove(crate::quota::TARPIT_HEADER)
                .is_some()
            {
                tokio::time::sleep(crate::quota::TARPIT).await;
            }
            if let Some(r) = request_fault(res.headers()) {
                let h = res.headers_mut();
                h.remove("grpc-message");
                if crate::error::status(&r).add_header(h).is_err() {
                    tracing::warn!(reason = r.reason.as_str(), "cannot encode a status");
                }
            }
            Ok(res)
        })
    }
}

/// Wraps a reflection service (a bidirectional stream): a request message
/// that does not decode ends the stream with `INVALID_ARGUMENT` /
/// `INVALID_REQUEST`, where tonic-reflection just ends it with `OK`. The
/// request body is watched as it passes (its gRPC frames are decoded once
/// more here), and the response's trailers are replaced when one failed.
#[derive(Debug, Clone)]
pub struct ReflectionFaults<S>(pub S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for ReflectionFaults<S> {
    const NAME: &'static str = S::NAME;
}

type HttpBody = tonic::body::Body;

impl<S> tonic::codegen::Service<tonic::codegen::http::Request<HttpBody>> for ReflectionFaults<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<HttpBody>,
            Response = tonic::codegen::http::Response<HttpBody>,
        >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = tonic::codegen::http::Response<HttpBody>;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<HttpBody>) -> Self::Future {
        let bad = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watched = bad.clone();
        let req = req.map(|inner| {
            HttpBody::new(CheckedRequest {
                inner,
                pending: bytes::BytesMut::new(),
                bad: watched,
            })
        });
        let fut = self.0.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|body| {
                HttpBody::new(http_body_util::BodyExt::map_frame(body, move |f| {
                    if !f.is_trailers() || !bad.load(Ordering::Relaxed) {
                        return f;
                    }
                    let mut trailers = tonic::codegen::http::HeaderMap::new();
                    let r = Rejection::new(
                        Reason::INVALID_REQUEST,
                        "a reflection request does not decode",
                    );
                    if crate::error::status(&r).add_header(&mut trailers).is_err() {
                        return f;
                    }
                    http_body::Frame::trailers(trailers)
                }))
            }))
        })
    }
}

/// A request body whose gRPC messages are decoded as reflection requests
/// as they pass; `bad` is set when one does not decode.
struct CheckedRequest {
    inner: HttpBody,
    pending: bytes::BytesMut,
    bad: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CheckedRequest {
    fn check(&mut self) {
        // gRPC framing: a flag byte, a 4-byte length, the message.
        while self.pending.len() >= 5 {
            let compressed = self.pending[0] != 0;
            let len = u32::from_be_bytes([
                self.pending[1],
                self.pending[2],
                self.pending[3],
                self.pending[4],
            ]) as usize;
            if self.pending.len() < 5 + len {
                return;
            }
            let msg = self.pending.split_to(5 + len);
            // Compressed reflection requests are tonic's to refuse.
            if !compressed
                && <tonic_reflection::pb::v1::ServerReflectionRequest as prost::Message>::decode(
                    &msg[5..],
                )
                .is_err()
            {
                self.bad.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl http_body::Body for CheckedRequest {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(f))) = &polled
            && let Some(data) = f.data_ref()
        {
            // Reflection requests are small; a body larger than the request
            // limit is tonic's to refuse, not ours to buffer.
            if self.pending.len() + data.len() <= MAX_REQUEST_BYTES.load(Ordering::Relaxed) + 5 {
                self.pending.extend_from_slice(data);
                self.check();
            }
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
    fn tonic_messages_are_percent_decoded() {
        assert_eq!(
            percent_decode(b"Missing%20request%20message."),
            "Missing request message."
        );
        assert_eq!(percent_decode(b"100%"), "100%");
    }
}
