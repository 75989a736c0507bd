//! A server stream as server-sent events: each message one
//! `data: <JSON>` event, and a stream that ends in failure a last
//! `event: error` whose data is its `google.rpc.Status` JSON. The events
//! are made as the client reads them (the body is pulled, never buffered
//! ahead), so a reader that stalls stops the gRPC stream behind it just
//! as a stalled gRPC reader does, and the same machinery ends it.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use prost_reflect::MessageDescriptor;
use tonic::body::Body;
use tonic::codegen::http::{HeaderValue, Response, header};

use super::BoxError;
use super::frames::{Item, Reply};

/// The stream's state: a message already read, the rest of the answer.
struct Events<B> {
    first: Option<Bytes>,
    reply: Reply<B>,
    output: MessageDescriptor,
    done: bool,
}

/// 200 `text/event-stream`, the events made from `reply` as they are read;
/// `first` is `None` when the stream ended, cleanly, before any message.
pub(super) fn response<B>(
    output: MessageDescriptor,
    first: Option<Bytes>,
    reply: Reply<B>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let events = Events {
        done: first.is_none(),
        first,
        reply,
        output,
    };
    let stream = futures_util::stream::unfold(events, |mut s| async move {
        if s.done {
            return None;
        }
        let bytes = match s.first.take() {
            Some(m) => m,
            None => match s.reply.next().await {
                Item::Message(m) => m,
                Item::End(status) if status.code() == tonic::Code::Ok => return None,
                Item::End(status) => {
                    s.done = true;
                    return Some((error_event(&status), s));
                }
            },
        };
        match super::json::message_json(&s.output, &bytes) {
            Ok(json) => Some((Bytes::from(format!("data: {json}\n\n")), s)),
            Err(status) => {
                s.done = true;
                Some((error_event(&status), s))
            }
        }
    })
    .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = Response::new(Body::new(http_body_util::StreamBody::new(stream)));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn error_event(status: &tonic::Status) -> Bytes {
    Bytes::from(format!(
        "event: error\ndata: {}\n\n",
        super::status::json(status)
    ))
}
