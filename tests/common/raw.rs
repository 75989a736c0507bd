//! A raw HTTP/2 client (the `h2` crate) for clients that misbehave on
//! purpose: one that never reads what it asked for (a flow-control window
//! of 0), which the generated clients cannot be made to do.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes};
use h2::client::SendRequest;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;

/// One HTTP/2 connection whose streams get a flow-control window of 0: the
/// server may send headers, never data.
pub struct StalledConnection {
    send: SendRequest<Bytes>,
    /// Responses (headers only) of the calls made, kept open.
    pub open: Vec<h2::RecvStream>,
    conn: tokio::task::JoinHandle<()>,
}

/// A gRPC frame around an encoded message.
pub fn grpc_frame(msg: &impl prost::Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut b = Vec::with_capacity(5 + body.len());
    b.push(0);
    b.extend_from_slice(&(body.len() as u32).to_be_bytes());
    b.extend_from_slice(&body);
    Bytes::from(b)
}

impl StalledConnection {
    /// Connects to `addr` with a stream window of 0 (and the smallest
    /// connection window).
    pub async fn connect(addr: SocketAddr) -> StalledConnection {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tcp)
            .await
            .expect("HTTP/2 handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        StalledConnection {
            send,
            open: Vec::new(),
            conn,
        }
    }

    /// Calls a server-streaming `path` with `msg` as `token`, waits for the
    /// response headers, and keeps the stream open without reading it.
    pub async fn call(&mut self, path: &str, token: &str, msg: &impl prost::Message) {
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://backchannel{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .expect("request");
        let mut send = self.send.clone().ready().await.expect("ready");
        let (response, mut body) = send.send_request(req, false).expect("send request");
        body.send_data(grpc_frame(msg), true).expect("send body");
        let response = response.await.expect("response headers");
        assert_eq!(response.status(), 200);
        if let Some(s) = response.headers().get("grpc-status") {
            panic!(
                "{path} refused: grpc-status {s:?} {:?}",
                response.headers().get("grpc-message")
            );
        }
        self.open.push(response.into_body());
    }
}

impl StalledConnection {
    /// Whether the server has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.conn.is_finished()
    }
}

impl Drop for StalledConnection {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Sends its bytes as the request message, as they are; ignores the reply.
#[derive(Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct IgnoreDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = IgnoreDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> IgnoreDecoder {
        IgnoreDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for IgnoreDecoder {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// A small deterministic generator (xorshift64*), so a failure names the
/// seed that reproduces it.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
