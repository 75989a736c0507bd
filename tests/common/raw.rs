//! A raw HTTP/2 client (the `h2` crate) for clients that misbehave on
//! purpose: one that never reads what it asked for (a flow-control window
//! of 0), which the generated clients cannot be made to do.

use std::net::SocketAddr;

use bytes::Bytes;
use h2::client::SendRequest;
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
