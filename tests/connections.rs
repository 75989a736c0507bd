//! Connection hygiene over the real binary (DESIGN §5, "A hostile client
//! costs little"): a handshake timeout, a connection limit below the
//! file-descriptor limit that sheds idle sockets rather than new clients,
//! and an idle timeout that spares connections with open streams.

mod common;

use std::time::Duration;

use backchannel::pb;
use bytes::Bytes;
use common::*;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::codegen::http;

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Reads from `tcp` until the server closes it; panics after [`DEADLINE`].
async fn closed_by_server(mut tcp: TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{what}: the server kept the connection open"
    );
}

/// A well-behaved client: connects and calls `WhoAmI`, within `within`.
async fn who_am_i_within(server: &Server, within: Duration) {
    let called = tokio::time::timeout(within, async {
        let mut admin = server.admin().await;
        admin.parties.who_am_i(pb::WhoAmIRequest::default()).await
    })
    .await;
    match called {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("WhoAmI failed: {e}"),
        Err(_) => panic!("a well-behaved client was kept out for {within:?}"),
    }
}

/// `count` TCP connections that send nothing.
async fn idle_sockets(server: &Server, count: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    out
}

/// The server's log lines whose message is `message`, parsed.
fn log_lines(server: &Server, message: &str) -> Vec<serde_json::Value> {
    server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

const SHED: &str = "connection limit reached: connections shed (the oldest still in their handshake, else the newest)";

/// A metric's value from the server's Prometheus endpoint.
async fn metric(server: &Server, name: &str) -> f64 {
    let text = scrape(&server.metrics_addr()).await;
    metric_sample(&text, &format!("{name} ")).unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test]
async fn a_connection_that_never_completes_the_preface_is_closed_within_the_handshake_timeout() {
    let server = Server::start_with(Options {
        args: args(&["--handshake-timeout-secs", "1"]),
        ..Default::default()
    })
    .await;
    let silent = TcpStream::connect(server.addr).await.expect("connect");
    let mut half = TcpStream::connect(server.addr).await.expect("connect");
    half.write_all(&PREFACE[..PREFACE.len() / 2])
        .await
        .expect("half a preface");
    closed_by_server(silent, "a connection that sent nothing").await;
    closed_by_server(half, "a connection that sent half the preface").await;
    // A client that completes the preface outlives the timeout.
    let mut admin = server.admin().await;
    admin
        .parties
        .who_am_i(pb::WhoAmIRequest::default())
        .await
        .expect("who am i");
}

#[tokio::test]
async fn idle_sockets_at_the_connection_limit_do_not_keep_a_client_out_and_are_logged_once() {
    let server = Server::start_with(Options {
        args: args(&[
            "--handshake-timeout-secs",
            "2",
            "--max-connections",
            "50",
            "--metrics-listen",
            "127.0.0.1:0",
        ]),
        ..Default::default()
    })
    .await;
    let _idle = idle_sockets(&server, 200).await;
    who_am_i_within(&server, Duration::from_secs(2 + 3)).await;
    eventually("150 connections shed", || async {
        (metric(&server, "backchannel_connections_shed_total").await >= 150.0).then_some(())
    })
    .await;
    assert!(metric(&server, "backchannel_connections_open").await <= 50.0);
    let warnings = log_lines(&server, SHED);
    assert!(!warnings.is_empty(), "nothing logged about shedding");
    assert!(
        warnings.len() <= 2,
        "one warning per connection, not per interval: {warnings:?}"
    );
    assert!(
        warnings.iter().all(|w| w["level"] == "WARN"),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn a_flood_of_idle_sockets_past_the_file_descriptor_limit_does_not_keep_a_client_out() {
    let server = Server::start_with(Options {
        args: args(&["--handshake-timeout-secs", "2"]),
        fd_limit: Some(256),
        ..Default::default()
    })
    .await;
    let limit = &log_lines(&server, "file-descriptor limit")[0];
    assert_eq!(limit["soft"], 256, "{limit}");
    assert_eq!(limit["max_connections"], 128, "{limit}");
    let _idle = idle_sockets(&server, 400).await;
    who_am_i_within(&server, Duration::from_secs(2 + 3)).await;
    eventually("the shed warning", || async {
        (!log_lines(&server, SHED).is_empty()).then_some(())
    })
    .await;
}

/// An HTTP/2 connection of the `h2` crate, driven in a task that ends when
/// the connection does.
async fn h2_connect(
    server: &Server,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    (client, tokio::spawn(conn))
}

/// Starts a gRPC call as the admin with one request message; returns the
/// response body.
async fn grpc_call(
    client: &h2::client::SendRequest<Bytes>,
    server: &Server,
    path: &str,
    msg: Vec<u8>,
) -> h2::RecvStream {
    let req = http::Request::post(format!("http://{}{path}", server.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(())
        .expect("request");
    let mut client = client.clone().ready().await.expect("connection ready");
    let (response, mut body) = client.send_request(req, false).expect("send request");
    let mut framed = vec![0u8];
    framed.extend((msg.len() as u32).to_be_bytes());
    framed.extend(msg);
    body.send_data(framed.into(), true).expect("send body");
    let response = response.await.expect("response");
    assert_eq!(response.status(), 200);
    response.into_body()
}

#[tokio::test]
async fn an_idle_connection_gets_goaway_while_one_with_an_open_subscription_stays_open() {
    let server = Server::start_with(Options {
        args: args(&["--idle-timeout-secs", "1"]),
        ..Default::default()
    })
    .await;
    // Kept, so that the idle connection has a live handle and is only
    // closed by the server.
    let (_idle_client, idle) = h2_connect(&server).await;
    let (busy_client, busy) = h2_connect(&server).await;
    let sub = pb::SubscribeRequest {
        start_after: None,
        heartbeat_seconds: 1,
        ..Default::default()
    };
    let mut stream = grpc_call(
        &busy_client,
        &server,
        "/backchannel.v1.MessageService/Subscribe",
        sub.encode_to_vec(),
    )
    .await;

    let ended = tokio::time::timeout(DEADLINE, idle).await;
    assert!(
        ended.is_ok(),
        "a connection with no stream stayed open past the idle timeout"
    );

    // Four heartbeats a second apart: the subscription's connection has
    // lived past the idle timeout.
    for _ in 0..4 {
        let data = tokio::time::timeout(DEADLINE, stream.data())
            .await
            .expect("a heartbeat within the deadline")
            .expect("the subscription is still open")
            .expect("heartbeat data");
        let _ = stream.flow_control().release_capacity(data.len());
    }
    assert!(!busy.is_finished(), "the busy connection closed");
    // And it still takes new calls: no GOAWAY was sent on it.
    let mut unary = grpc_call(
        &busy_client,
        &server,
        "/backchannel.v1.PartyService/WhoAmI",
        pb::WhoAmIRequest::default().encode_to_vec(),
    )
    .await;
    while let Some(d) = unary.data().await {
        d.expect("who am i body");
    }
    let trailers = unary.trailers().await.expect("trailers").expect("trailers");
    assert_eq!(trailers["grpc-status"], "0", "{trailers:?}");
}

/// One raw HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn a_window_update_flood_ends_in_goaway_and_costs_other_clients_nothing() {
    let server = Server::start().await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    // The preface and empty SETTINGS, then WINDOW_UPDATE frames (increment
    // 1 on the connection) as fast as the socket takes them.
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    wr.write_all(&hello).await.expect("preface");
    let update = frame(0x8, 0, 0, &1u32.to_be_bytes());
    let burst: Vec<u8> = update
        .iter()
        .copied()
        .cycle()
        .take(update.len() * 4096)
        .collect();
    let flooder = tokio::spawn(async move { while wr.write_all(&burst).await.is_ok() {} });
    // The server answers with GOAWAY and closes.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    flooder.abort();
    assert!(ended.is_ok(), "the server kept reading the flood");
    // Walk the frames the server sent: one of them is GOAWAY (type 7).
    let mut at = 0;
    let mut goaway = false;
    while at + 9 <= seen.len() {
        let len = (usize::from(seen[at]) << 16)
            | (usize::from(seen[at + 1]) << 8)
            | usize::from(seen[at + 2]);
        goaway |= seen[at + 3] == 0x7;
        at += 9 + len;
    }
    assert!(goaway, "no GOAWAY among {} bytes", seen.len());
    let floods = log_lines(&server, "control-frame flood; GOAWAY");
    assert_eq!(floods.len(), 1, "logged once");
    who_am_i_within(&server, Duration::from_secs(5)).await;
}
