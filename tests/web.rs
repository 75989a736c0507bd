//! The board's side of the gRPC port (DESIGN §9), over a real socket
//! against the real binary: HTTP/1.1 beside HTTP/2 on one listener, the
//! board's files, its JSON view (unary and server-sent events), gRPC-Web
//! and CORS; and HTTP/1.1 connections bounded like HTTP/2 ones.

mod common;

use std::time::{Duration, Instant};

use backchannel::pb;
use common::http1::*;
use common::*;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Reads from `tcp` until the server closes it; what it sent, and when it
/// closed. Panics after [`DEADLINE`].
async fn until_closed(tcp: &mut TcpStream) -> (String, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection");
    (String::from_utf8_lossy(&got).into_owned(), Instant::now())
}

#[tokio::test]
async fn the_board_is_served_with_its_content_security_policy() {
    let server = Server::start().await;
    let page = request(&server, "GET", "/", &[], "").await;
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert!(
        header(&page, "content-security-policy")
            .starts_with("default-src 'none'; script-src 'self'"),
        "{:?}",
        page.headers()
    );
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    assert_eq!(header(&page, "referrer-policy"), "no-referrer");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    let html = body(page).await;
    assert!(String::from_utf8_lossy(&html).contains("<html"));
    let script = request(&server, "GET", "/board.js", &[], "").await;
    assert_eq!(
        header(&script, "content-type"),
        "text/javascript; charset=utf-8"
    );
    let style = request(&server, "GET", "/board.css", &[], "").await;
    assert_eq!(header(&style, "content-type"), "text/css; charset=utf-8");
}

#[tokio::test]
async fn the_json_view_answers_a_unary_call_in_proto3_json() {
    let server = Server::start().await;
    let w = world(&server).await;
    let r = api(
        &server,
        "backchannel.v1.ChannelService/ListChannels",
        &w.tokens["iran"],
        "",
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "application/json");
    let v = json(r).await;
    let channels = v["channels"].as_array().expect("channels");
    assert_eq!(channels.len(), 1, "{v}");
    assert_eq!(channels[0]["id"], w.channel.id.as_str());
    // lowerCamelCase names, as the proto3 JSON mapping has them.
    assert_eq!(channels[0]["displayName"], "Biarritz");
    // The outsider sees no channel: the same visibility as gRPC.
    let r = api(
        &server,
        "backchannel.v1.ChannelService/ListChannels",
        &w.tokens["outsider"],
        "{}",
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(json(r).await.get("channels").is_none());
}

#[tokio::test]
async fn a_wrong_token_is_401_with_the_status_json_and_its_reason() {
    let server = Server::start().await;
    let r = api(
        &server,
        "backchannel.v1.PartyService/ListParties",
        "not-a-token",
        "{}",
    )
    .await;
    assert_eq!(r.status(), 401);
    let v = json(r).await;
    assert_eq!(v["code"], 16, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    let info = &v["details"][0];
    assert_eq!(
        info["@type"], "type.googleapis.com/google.rpc.ErrorInfo",
        "{v}"
    );
    assert_eq!(info["domain"], "backchannel.v1", "{v}");
    assert_eq!(info["reason"], "UNAUTHENTICATED", "{v}");
}

#[tokio::test]
async fn malformed_json_and_unknown_methods_are_refused_clearly() {
    let server = Server::start().await;
    let method = "backchannel.v1.PartyService/ListParties";
    let r = api(&server, method, ADMIN_TOKEN, "{\"pageSize\": ").await;
    assert_eq!(r.status(), 400);
    let v = json(r).await;
    assert_eq!(v["code"], 3);
    assert_eq!(v["details"][0]["reason"], "INVALID_REQUEST", "{v}");
    let message = v["message"].as_str().unwrap_or("");
    assert!(message.contains("ListPartiesRequest"), "{v}");
    let r = api(&server, method, ADMIN_TOKEN, "{\"noSuchField\": 1}").await;
    assert_eq!(r.status(), 400);
    assert!(
        json(r).await["message"]
            .as_str()
            .unwrap_or("")
            .contains("noSuchField")
    );
    // Health and reflection are gRPC's, not the JSON view's.
    for path in [
        "grpc.health.v1.Health/Check",
        "backchannel.v1.PartyService/Nope",
    ] {
        let r = api(&server, path, ADMIN_TOKEN, "{}").await;
        assert_eq!(r.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let server = Server::start().await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let head = format!(
        "POST /api/backchannel.v1.PartyService/ListParties HTTP/1.1\r\nhost: x\r\n\
         content-type: application/json\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
         content-length: {}\r\n\r\n",
        5 << 20
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    let (answer, _) = until_closed(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("REQUEST_TOO_LARGE"), "{answer}");
    // A chunked body that grows past the limit fares the same (the client
    // stops at the limit's first byte over, so that nothing it sent is left
    // unread when the server closes).
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let over = (2 << 20) + 1;
    let head = format!(
        "POST /api/backchannel.v1.PartyService/ListParties HTTP/1.1\r\nhost: x\r\n\
         content-type: application/json\r\nauthorization: Bearer {ADMIN_TOKEN}\r\n\
         transfer-encoding: chunked\r\n\r\n{over:x}\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    tcp.write_all(&vec![b' '; over]).await.expect("body");
    let (answer, _) = until_closed(&mut tcp).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

/// The token is checked before the body is read: a caller without one is
/// refused for the price of its headers (it used to have up to 4 MiB read
/// and parsed first), and UNAUTHENTICATED comes first, as in gRPC.
#[tokio::test]
async fn the_json_view_checks_the_token_before_it_reads_the_body() {
    let server = Server::start().await;
    let method = "backchannel.v1.MessageService/GetMessage";
    let r = api(&server, method, "not-a-token", "{\"bogus\": 1}").await;
    assert_eq!(r.status(), 401, "malformed JSON without a token");
    // A body announced and never sent is refused without it (the server
    // used to wait for it, and answer 408).
    for auth in ["", "authorization: Bearer not-a-token\r\n"] {
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        let head = format!(
            "POST /api/backchannel.v1.MessageService/Subscribe HTTP/1.1\r\nhost: x\r\n\
             content-type: application/json\r\n{auth}content-length: 1000000\r\n\r\n{{"
        );
        tcp.write_all(head.as_bytes()).await.expect("head");
        let (answer, _) = until_closed(&mut tcp).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{auth:?}: {answer}");
        assert!(answer.contains("UNAUTHENTICATED"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_subscribe_receives_events_written_by_a_grpc_client_after_it_started() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let r = api(
        &server,
        "backchannel.v1.MessageService/Subscribe",
        &w.tokens["iran"],
        "{}",
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    assert_eq!(header(&r, "cache-control"), "no-cache");
    let mut events = Events::new(r);
    let caught_up = events.next().await.expect("the caught-up mark");
    assert_eq!(caught_up.name, "");
    let v: serde_json::Value = serde_json::from_str(&caught_up.data).expect("JSON");
    assert!(v.get("heartbeat").is_some(), "{v}");
    let sent = w
        .iran
        .messages
        .send_message(send_req(&w.channel.id, "through the board"))
        .await
        .expect("send")
        .into_inner();
    let event = loop {
        let e = events.next().await.expect("an event");
        let v: serde_json::Value = serde_json::from_str(&e.data).expect("one line of JSON");
        if v.get("event").is_some() {
            break v;
        }
    };
    assert!(event.to_string().contains(&sent.id), "{event}");
}

#[tokio::test]
async fn an_error_before_the_first_event_is_a_json_error() {
    let server = Server::start().await;
    let r = api(
        &server,
        "backchannel.v1.MessageService/Subscribe",
        "wrong",
        "{}",
    )
    .await;
    assert_eq!(r.status(), 401);
    assert_eq!(json(r).await["details"][0]["reason"], "UNAUTHENTICATED");
}

#[tokio::test]
async fn grpc_web_unary_over_http1_answers_like_grpc() {
    let server = Server::start().await;
    let w = world(&server).await;
    let auth = format!("Bearer {}", w.tokens["iran"]);
    for content_type in ["application/grpc-web", "application/grpc-web+proto"] {
        let r = request(
            &server,
            "POST",
            "/backchannel.v1.ChannelService/ListChannels",
            &[
                ("content-type", content_type),
                ("x-grpc-web", "1"),
                ("authorization", &auth),
            ],
            web_request(&pb::ListChannelsRequest::default()),
        )
        .await;
        assert_eq!(r.status(), 200, "{content_type}");
        let mut frames = WebFrames::new(r);
        let Some(WebFrame::Message(m)) = frames.next().await else {
            panic!("{content_type}: no message");
        };
        let list = pb::ListChannelsResponse::decode(m).expect("decodes");
        assert_eq!(list.channels.len(), 1);
        assert_eq!(list.channels[0].id, w.channel.id);
        match frames.next().await {
            Some(WebFrame::Trailers(t)) => assert!(t.contains("grpc-status:0"), "{t}"),
            other => panic!("{content_type}: no trailers: {other:?}"),
        }
    }
    // A wrong token is refused as over gRPC.
    let r = request(
        &server,
        "POST",
        "/backchannel.v1.ChannelService/ListChannels",
        &[
            ("content-type", "application/grpc-web+proto"),
            ("authorization", "Bearer wrong"),
        ],
        web_request(&pb::ListChannelsRequest::default()),
    )
    .await;
    let in_headers = header(&r, "grpc-status").to_string();
    let status = if in_headers.is_empty() {
        match WebFrames::new(r).next().await {
            Some(WebFrame::Trailers(t)) => t,
            other => panic!("no status: {other:?}"),
        }
    } else {
        format!("grpc-status:{in_headers}")
    };
    assert!(status.contains("grpc-status:16"), "{status}");
    // grpc-web-text: the same frames in base64, both ways (the answer is
    // text when the client accepts it, as the grpc-web clients say).
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let auth = format!("Bearer {}", w.tokens["iran"]);
    let r = request(
        &server,
        "POST",
        "/backchannel.v1.ChannelService/ListChannels",
        &[
            ("content-type", "application/grpc-web-text"),
            ("accept", "application/grpc-web-text"),
            ("authorization", &auth),
        ],
        b64.encode(web_request(&pb::ListChannelsRequest::default())),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type").starts_with("application/grpc-web-text"));
    let text = body(r).await;
    // Frames may be encoded one by one, each padded: decode by quads.
    let clean: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let mut raw = Vec::new();
    for quad in clean.chunks(4) {
        raw.extend(b64.decode(quad).expect("a base64 answer"));
    }
    assert_eq!(raw[0], 0, "a message frame first");
    let len = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]) as usize;
    let list = pb::ListChannelsResponse::decode(&raw[5..5 + len]).expect("decodes");
    assert_eq!(list.channels[0].id, w.channel.id);
    assert!(String::from_utf8_lossy(&raw[5 + len..]).contains("grpc-status:0"));
}

#[tokio::test]
async fn grpc_web_subscribe_streams_events_and_the_caught_up_heartbeat() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    for subject in ["one", "two"] {
        w.iran
            .messages
            .send_message(send_req(&w.channel.id, subject))
            .await
            .expect("send");
    }
    let r = request(
        &server,
        "POST",
        "/backchannel.v1.MessageService/Subscribe",
        &[
            ("content-type", "application/grpc-web+proto"),
            ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
        ],
        web_request(&pb::SubscribeRequest {
            start_after: Some(0),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(r.status(), 200);
    let mut frames = WebFrames::new(r);
    let mut events = 0;
    loop {
        match frames.next().await {
            Some(WebFrame::Message(m)) => {
                match pb::SubscribeResponse::decode(m).expect("decodes").kind {
                    Some(pb::subscribe_response::Kind::Event(_)) => events += 1,
                    Some(pb::subscribe_response::Kind::Heartbeat(_)) => break,
                    None => panic!("an empty item"),
                }
            }
            other => panic!("the stream ended before catching up: {other:?}"),
        }
    }
    // The channel's creation and two sends, at least.
    assert!(events >= 3, "{events} events");
}

#[tokio::test]
async fn an_allowed_origin_gets_cors_headers_and_another_is_refused() {
    let server = Server::start_with(Options {
        env: vec![(
            "BACKCHANNEL_CORS_ALLOW_ORIGIN".into(),
            "https://a.example,https://app.example".into(),
        )],
        ..Options::default()
    })
    .await;
    let preflight = |origin: &'static str| {
        let server = &server;
        async move {
            request(
                server,
                "OPTIONS",
                "/backchannel.v1.PartyService/WhoAmI",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "authorization, content-type, x-grpc-web",
                    ),
                ],
                "",
            )
            .await
        }
    };
    let ok = preflight("https://app.example").await;
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        header(&ok, "access-control-allow-origin"),
        "https://app.example"
    );
    let allowed = header(&ok, "access-control-allow-headers").to_ascii_lowercase();
    for h in [
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
    ] {
        assert!(allowed.contains(h), "{h} not in {allowed}");
    }
    let refused = preflight("https://evil.example").await;
    assert_eq!(refused.status(), 403);
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // A call from the allowed origin may read its status.
    let call = request(
        &server,
        "POST",
        "/backchannel.v1.PartyService/WhoAmI",
        &[
            ("origin", "https://app.example"),
            ("content-type", "application/grpc-web+proto"),
            ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
        ],
        web_request(&pb::WhoAmIRequest::default()),
    )
    .await;
    assert_eq!(
        header(&call, "access-control-allow-origin"),
        "https://app.example"
    );
    assert!(header(&call, "access-control-expose-headers").contains("grpc-status"));
}

#[tokio::test]
async fn with_the_web_off_the_board_and_the_json_view_are_404_and_grpc_works() {
    let server = Server::start_with(Options {
        args: args(&["--web", "off"]),
        ..Options::default()
    })
    .await;
    assert_eq!(request(&server, "GET", "/", &[], "").await.status(), 404);
    assert_eq!(
        request(&server, "GET", "/board.js", &[], "").await.status(),
        404
    );
    let r = api(
        &server,
        "backchannel.v1.PartyService/ListParties",
        ADMIN_TOKEN,
        "{}",
    )
    .await;
    assert_eq!(r.status(), 404);
    let mut admin = server.admin().await;
    admin
        .parties
        .list_parties(pb::ListPartiesRequest::default())
        .await
        .expect("gRPC still served");
    let r = request(
        &server,
        "POST",
        "/backchannel.v1.PartyService/WhoAmI",
        &[
            ("content-type", "application/grpc-web+proto"),
            ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
        ],
        web_request(&pb::WhoAmIRequest::default()),
    )
    .await;
    assert!(matches!(
        WebFrames::new(r).next().await,
        Some(WebFrame::Message(_))
    ));
}

#[tokio::test]
async fn an_http1_request_we_do_not_serve_gets_a_clean_404() {
    let server = Server::start().await;
    let r = request(&server, "GET", "/no/such/page", &[], "").await;
    assert_eq!(r.status(), 404);
    // Plain gRPC needs HTTP/2.
    let r = request(
        &server,
        "POST",
        "/backchannel.v1.PartyService/WhoAmI",
        &[("content-type", "application/grpc")],
        web_request(&pb::WhoAmIRequest::default()),
    )
    .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_slow_http1_request_head_is_closed_within_the_handshake_timeout() {
    let server = Server::start_with(Options {
        args: args(&["--handshake-timeout-secs", "1"]),
        ..Options::default()
    })
    .await;
    let start = Instant::now();
    let mut slow = TcpStream::connect(server.addr).await.expect("connect");
    // A request head that never ends.
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: 1")
        .await
        .expect("write");
    let (answer, closed) = until_closed(&mut slow).await;
    assert_eq!(answer, "", "the server answered a head it never had");
    assert!(
        closed - start < Duration::from_secs(5),
        "closed after {:?}",
        closed - start
    );
    // A complete request on another connection is answered meanwhile.
    assert_eq!(request(&server, "GET", "/", &[], "").await.status(), 200);
}

#[tokio::test]
async fn an_idle_http1_connection_does_not_hold_a_slot_forever() {
    let server = Server::start_with(Options {
        args: args(&["--idle-timeout-secs", "1", "--max-connections", "2"]),
        ..Options::default()
    })
    .await;
    let start = Instant::now();
    let mut keep_alive = TcpStream::connect(server.addr).await.expect("connect");
    keep_alive
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let (answer, closed) = until_closed(&mut keep_alive).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        closed - start < Duration::from_secs(10),
        "closed after {:?}",
        closed - start
    );
    // Its slot is free again: two more fit under the limit of two.
    let _a = connect(&server).await;
    let mut admin = server.admin().await;
    admin
        .parties
        .who_am_i(pb::WhoAmIRequest::default())
        .await
        .expect("a slot for a gRPC client");
}

/// No token reaches the log, even at debug level: not one that works, not
/// one that is refused, over the JSON view, its event stream and gRPC-Web.
#[tokio::test]
async fn no_token_is_logged_even_at_debug_level() {
    let server = Server::start_with(Options {
        env: vec![("RUST_LOG".into(), "debug".into())],
        ..Default::default()
    })
    .await;
    let w = world(&server).await;
    let good = w.tokens["iran"].clone();
    let bad = format!("{}x", &good[..good.len() - 1]);
    for token in [&good, &bad] {
        api(
            &server,
            "backchannel.v1.ChannelService/ListChannels",
            token,
            "{}",
        )
        .await;
        let auth = format!("Bearer {token}");
        request(
            &server,
            "POST",
            "/backchannel.v1.ChannelService/ListChannels",
            &[
                ("content-type", "application/grpc-web+proto"),
                ("authorization", &auth),
            ],
            web_request(&pb::ListChannelsRequest::default()),
        )
        .await;
    }
    let r = api(
        &server,
        "backchannel.v1.MessageService/Subscribe",
        &good,
        "{\"startAfter\": \"0\"}",
    )
    .await;
    let mut events = Events::new(r);
    assert!(events.next().await.is_some(), "the stream answers");
    drop(events);
    // The last call's line: everything logged before it has been read.
    api(&server, "backchannel.v1.PartyService/WhoAmI", &good, "{}").await;
    let log = server.log.clone();
    let lines = eventually("the WhoAmI call's log line", || {
        let lines = log.lock().map(|l| l.clone()).unwrap_or_default();
        let done = lines.iter().any(|l| l.contains("PartyService/WhoAmI"));
        async move { done.then_some(lines) }
    })
    .await;
    assert!(lines.iter().any(|l| l.contains("\"DEBUG\"")), "a debug log");
    let secret = |t: &str| t.rsplit('_').next().unwrap_or(t).to_owned();
    for t in [
        &good,
        &bad,
        &secret(&good),
        &secret(&bad),
        &ADMIN_TOKEN.to_string(),
    ] {
        let leaked: Vec<&String> = lines.iter().filter(|l| l.contains(t.as_str())).collect();
        assert!(leaked.is_empty(), "the token {t} is in the log: {leaked:?}");
    }
}
