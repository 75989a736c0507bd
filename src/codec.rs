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
