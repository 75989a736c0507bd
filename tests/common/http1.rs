//! A plain HTTP/1.1 client, as a browser talks to the board: requests over
//! one connection, and gRPC-Web's framing.

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{DEADLINE, Server};

/// An HTTP/1.1 connection to `server`.
pub async fn connect(server: &Server) -> SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    send
}

/// One request on a new connection.
pub async fn request(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> hyper::Response<Incoming> {
    let mut send = connect(server).await;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", server.addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("request");
    tokio::time::timeout(DEADLINE, send.send_request(req))
        .await
        .expect("an answer in time")
        .expect("an answer")
}

/// A JSON view call with `token`.
pub async fn api(
    server: &Server,
    method: &str,
    token: &str,
    json: &str,
) -> hyper::Response<Incoming> {
    let auth = format!("Bearer {token}");
    request(
        server,
        "POST",
        &format!("/api/{method}"),
        &[
            ("content-type", "application/json"),
            ("authorization", &auth),
        ],
        json.to_string(),
    )
    .await
}

/// The whole body.
pub async fn body(response: hyper::Response<Incoming>) -> Bytes {
    tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("the body in time")
        .expect("the body")
        .to_bytes()
}

/// The whole body as JSON.
pub async fn json(response: hyper::Response<Incoming>) -> serde_json::Value {
    let bytes = body(response).await;
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// A header's value, or "".
pub fn header<'a>(response: &'a hyper::Response<Incoming>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// One gRPC-Web frame of an answer.
#[derive(Debug)]
pub enum WebFrame {
    /// A message.
    Message(Bytes),
    /// The trailers, as text (`grpc-status:0\r\n...`).
    Trailers(String),
}

/// Reads gRPC-Web frames from a body as they arrive.
pub struct WebFrames {
    body: Incoming,
    buf: BytesMut,
}

impl WebFrames {
    /// The frames of `response`.
    pub fn new(response: hyper::Response<Incoming>) -> WebFrames {
        WebFrames {
            body: response.into_body(),
            buf: BytesMut::new(),
        }
    }

    /// The next frame; `None` at the end of the body.
    pub async fn next(&mut self) -> Option<WebFrame> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() >= 5 + len {
                    let flag = self.buf[0];
                    self.buf.advance(5);
                    let data = self.buf.split_to(len).freeze();
                    return Some(if flag & 0x80 != 0 {
                        WebFrame::Trailers(String::from_utf8_lossy(&data).into_owned())
                    } else {
                        WebFrame::Message(data)
                    });
                }
            }
            let frame = tokio::time::timeout(DEADLINE, self.body.frame())
                .await
                .expect("a frame in time")?
                .expect("a frame");
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

/// A gRPC-Web request body: one uncompressed message.
pub fn web_request(message: &impl prost::Message) -> Bytes {
    let bytes = message.encode_to_vec();
    let mut out = Vec::with_capacity(5 + bytes.len());
    out.push(0);
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
    out.into()
}

/// Reads server-sent events from a body as they arrive.
pub struct Events {
    body: Incoming,
    buf: String,
}

/// One server-sent event: its `event:` name ("" for a message) and data.
#[derive(Debug)]
pub struct Event {
    /// `event:`, or "".
    pub name: String,
    /// `data:`.
    pub data: String,
}

impl Events {
    /// The events of `response`.
    pub fn new(response: hyper::Response<Incoming>) -> Events {
        Events {
            body: response.into_body(),
            buf: String::new(),
        }
    }

    /// The next event; `None` at the end of the body.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = Event {
                    name: String::new(),
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event.name = v.to_string();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data.push_str(v);
                    }
                }
                return Some(event);
            }
            let frame = tokio::time::timeout(DEADLINE, self.body.frame())
                .await
                .expect("an event in time")?
                .expect("a frame");
            if let Ok(data) = frame.into_data() {
                self.buf
                    .push_str(std::str::from_utf8(&data).expect("UTF-8 events"));
            }
        }
    }
}
