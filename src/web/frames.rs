//! gRPC's length-prefixed messages, as the JSON view sends them to the
//! gRPC service in-process and reads its answer: messages from the body's
//! data, then the status from its trailers (or from the headers of a
//! trailers-only answer).

use std::pin::Pin;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use tonic::codegen::http::Response;

use super::BoxError;

/// Largest message read from our own service (its pages are bounded far
/// below this): a guard against a bug becoming unbounded memory.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// One gRPC message: an uncompressed flag byte, its length, itself.
pub(super) fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    // Requests are bounded by the JSON view's 4 MiB body limit.
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
    out.freeze()
}

/// What the answer holds next.
pub(super) enum Item {
    /// One message's bytes.
    Message(Bytes),
    /// The call's end: its status (`Ok` or not).
    End(tonic::Status),
}

/// A gRPC answer, read message by message as its body arrives.
pub(super) struct Reply<B> {
    body: Pin<Box<B>>,
    buf: BytesMut,
    /// Set by a trailers-only answer, or once the end has been read.
    end: Option<tonic::Status>,
    ended: bool,
}

impl<B> Reply<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    pub(super) fn new(response: Response<B>) -> Reply<B> {
        let (parts, body) = response.into_parts();
        Reply {
            end: tonic::Status::from_header_map(&parts.headers),
            body: Box::pin(body),
            buf: BytesMut::new(),
            ended: false,
        }
    }

    /// The next message, or the end (repeated once reached).
    pub(super) async fn next(&mut self) -> Item {
        if self.ended {
            return Item::End(tonic::Status::internal("the call has ended"));
        }
        if let Some(end) = self.end.take() {
            self.ended = true;
            return Item::End(end);
        }
        loop {
            match self.take_message() {
                Ok(Some(m)) => return Item::Message(m),
                Ok(None) => {}
                Err(s) => return self.finish(s),
            }
            let frame = match self.body.frame().await {
                None => {
                    return self.finish(tonic::Status::internal("the call ended without a status"));
                }
                Some(Err(e)) => return self.finish(tonic::Status::from_error(e.into())),
                Some(Ok(f)) => f,
            };
            match frame.into_data() {
                Ok(mut data) => {
                    while data.has_remaining() {
                        let chunk = data.chunk();
                        self.buf.extend_from_slice(chunk);
                        let n = chunk.len();
                        data.advance(n);
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let status =
                            tonic::Status::from_header_map(&trailers).unwrap_or_else(|| {
                                tonic::Status::internal("the call ended without a status")
                            });
                        return self.finish(status);
                    }
                }
            }
        }
    }

    fn finish(&mut self, status: tonic::Status) -> Item {
        self.ended = true;
        Item::End(status)
    }

    /// A complete message from what has been read, if there is one.
    fn take_message(&mut self) -> Result<Option<Bytes>, tonic::Status> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(tonic::Status::internal(
                "a compressed answer (none was asked for)",
            ));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_MESSAGE_BYTES {
            return Err(tonic::Status::internal(
                "an answer too large for the JSON view",
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}
