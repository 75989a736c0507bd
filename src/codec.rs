//! The gRPC codec: prost, except that a request that does not decode is
//! `INVALID_ARGUMENT` (tonic's default says `INTERNAL`) and one over the size
//! limit is `RESOURCE_EXHAUSTED`.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Buf;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::domain::{Reason, Rejection, validate::DEFAULT_REQUEST_BYTES};

static MAX_REQUEST_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_REQUEST_BYTES);

/// Sets the largest decoded request the server accepts (process-wide, since
/// generated code builds codecs with `Default`).
pub fn set_max_request_bytes(n: usize) {
    MAX_REQUEST_BYTES.store(n, Ordering::Relaxed);
}

/// The codec of every Backchannel service and client.
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
        let max = MAX_REQUEST_BYTES.load(Ordering::Relaxed);
        if buf.remaining() > max {
            return Err(crate::error::status(&Rejection::new(
                Reason::REQUEST_TOO_LARGE,
                format!(
                    "the message is {} bytes; the limit is {max} bytes",
                    buf.remaining()
                ),
            )));
        }
        U::decode(buf).map(Some).map_err(|e| {
            crate::error::status(&Rejection::new(
                Reason::INVALID_REQUEST,
                format!("the message does not decode: {e}"),
            ))
        })
    }
}

/// Wraps a service so that tonic's own refusal of a request over its
/// decoding limit (`OUT_OF_RANGE`, before our codec sees the message) is
/// answered like the codec's: `RESOURCE_EXHAUSTED` / `REQUEST_TOO_LARGE`.
/// Our own statuses always carry details, so an `OUT_OF_RANGE` without them
/// can only be tonic's.
#[derive(Debug, Clone)]
pub struct SizeLimited<S>(pub S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for SizeLimited<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> tonic::codegen::Service<tonic::codegen::http::Request<B>> for SizeLimited<S>
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
        let fut = self.0.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            let h = res.headers_mut();
            let out_of_range = h.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11");
            if out_of_range && !h.contains_key("grpc-status-details-bin") {
                let max = MAX_REQUEST_BYTES.load(Ordering::Relaxed);
                let status = crate::error::status(&Rejection::new(
                    Reason::REQUEST_TOO_LARGE,
                    format!("the message is over the limit of {max} bytes"),
                ));
                h.remove("grpc-message");
                if status.add_header(h).is_err() {
                    tracing::warn!("cannot encode the REQUEST_TOO_LARGE status");
                }
            }
            Ok(res)
        })
    }
}
