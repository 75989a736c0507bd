//! The log as stored: the exact bytes of each event, as `Subscribe` sends
//! them (DESIGN §7: leaf `i` is the stored encoding of event `i + 1`), read
//! with a codec that keeps each response's bytes instead of decoding it.

use bytes::{Buf, Bytes};
use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Status};

use super::{Kind, Problem};
use crate::cli::CliError;
use crate::cli::connect::Client;
use crate::pb;

const SUBSCRIBE: &str = "/backchannel.v1.MessageService/Subscribe";

/// Encodes the request as usual; keeps each response as its bytes.
#[derive(Debug, Clone, Copy, Default)]
struct RawResponses;

struct RequestEncoder;

struct BytesDecoder;

impl Codec for RawResponses {
    type Encode = pb::SubscribeRequest;
    type Decode = Bytes;
    type Encoder = RequestEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

impl Encoder for RequestEncoder {
    type Item = pb::SubscribeRequest;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the request: {e}")))
    }
}

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One item of the stream: an event's stored bytes, or a heartbeat.
fn item(mut b: Bytes) -> Result<Option<Bytes>, String> {
    let mut event = None;
    while b.has_remaining() {
        let (tag, wire) = decode_key(&mut b).map_err(|e| e.to_string())?;
        match wire {
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut b).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
                if len > b.remaining() {
                    return Err("a field longer than the message".into());
                }
                let field = b.split_to(len);
                if tag == 1 {
                    event = Some(field);
                }
            }
            WireType::Varint => {
                decode_varint(&mut b).map_err(|e| e.to_string())?;
            }
            other => return Err(format!("an unexpected field type {other:?}")),
        }
    }
    Ok(event)
}

/// The stored bytes of every event up to sequence `size`, oldest first,
/// each with its sequence; the problem if the stream shows one.
pub(super) async fn events(
    c: &Client,
    size: u64,
) -> Result<Result<Vec<(u64, Bytes)>, Problem>, CliError> {
    let mut out: Vec<(u64, Bytes)> = Vec::new();
    if size == 0 {
        return Ok(Ok(out));
    }
    let mut grpc = tonic::client::Grpc::new(c.svc.clone()).max_decoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("the connection: {e}")))?;
    let req = pb::SubscribeRequest {
        start_after: Some(0),
        ..Default::default()
    };
    let mut stream = grpc
        .server_streaming(
            tonic::Request::new(req),
            PathAndQuery::from_static(SUBSCRIBE),
            RawResponses,
        )
        .await?
        .into_inner();
    let at = |out: &Vec<(u64, Bytes)>| out.last().map_or(1, |(s, _)| s + 1);
    loop {
        let message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(s) if s.code() == Code::DataLoss => {
                return Ok(Err(super::prove::data_loss(&s, at(&out))));
            }
            Err(s) => return Err(s.into()),
        };
        let bad = |why: String| {
            Problem::at_event(
                Kind::Altered,
                at(&out),
                format!("the stream sent an item that does not decode ({why})"),
            )
        };
        let bytes = match item(message) {
            Ok(Some(b)) => b,
            // The first heartbeat: caught up with the log.
            Ok(None) => break,
            Err(why) => return Ok(Err(bad(why))),
        };
        let e = match pb::Event::decode(bytes.clone()) {
            Ok(e) => e,
            Err(why) => return Ok(Err(bad(why.to_string()))),
        };
        if e.sequence != at(&out) {
            return Ok(Err(Problem::at_event(
                Kind::Altered,
                at(&out),
                format!(
                    "the log streams event {} where event {} belongs",
                    e.sequence,
                    at(&out)
                ),
            )));
        }
        out.push((e.sequence, bytes));
        if e.sequence >= size {
            break;
        }
    }
    Ok(Ok(out))
}
