//! A hostile client costs little (DESIGN §5): requests that do not decode,
//! compressed requests and compression bombs, against the real binary.

mod common;

use backchannel::pb;
use common::raw::RawCodec;
use common::*;
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::codegen::http::uri::PathAndQuery;

fn with_token<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    req
}

/// A unary call with raw request bytes.
async fn raw_unary(
    server: &Server,
    token: Option<&str>,
    path: &'static str,
    body: Vec<u8>,
    gzip: bool,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(server.connect().await);
    if gzip {
        grpc = grpc.send_compressed(CompressionEncoding::Gzip);
    }
    grpc.ready().await.expect("ready");
    grpc.unary(
        with_token(body, token),
        PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

/// A server-streaming call with raw request bytes; the first item.
async fn raw_server_stream(
    server: &Server,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Option<()>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(server.connect().await);
    grpc.ready().await.expect("ready");
    let mut s = grpc
        .server_streaming(
            with_token(body, None),
            PathAndQuery::from_static(path),
            RawCodec,
        )
        .await?
        .into_inner();
    s.message().await
}

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";

#[tokio::test]
async fn health_answers_invalid_argument_to_bytes_that_do_not_decode() {
    let server = Server::start().await;
    // Field 1 (service) claims 100 bytes and has 3.
    let garbage = vec![0x0a, 0x64, 0x61, 0x62, 0x63];
    let r = raw_unary(&server, None, HEALTH_CHECK, garbage.clone(), false).await;
    assert_err(r, Code::InvalidArgument, "INVALID_REQUEST");
    let r = raw_server_stream(&server, HEALTH_WATCH, garbage).await;
    assert_err(r, Code::InvalidArgument, "INVALID_REQUEST");
    // Invalid UTF-8 in the service name.
    let r = raw_unary(
        &server,
        None,
        HEALTH_CHECK,
        vec![0x0a, 0x02, 0xc3, 0x28],
        false,
    )
    .await;
    assert_err(r, Code::InvalidArgument, "INVALID_REQUEST");
    // No request message at all.
    let mut grpc = tonic::client::Grpc::new(server.connect().await);
    grpc.ready().await.expect("ready");
    let r = grpc
        .client_streaming(
            tonic::Request::new(tokio_stream::iter(Vec::<Vec<u8>>::new())),
            PathAndQuery::from_static(HEALTH_CHECK),
            RawCodec,
        )
        .await;
    assert_err(r, Code::InvalidArgument, "INVALID_REQUEST");
    // A well-formed request through the same path is served.
    raw_unary(&server, None, HEALTH_CHECK, Vec::new(), false)
        .await
        .expect("an empty HealthCheckRequest is the whole server's health");
}

#[tokio::test]
async fn gzip_compressed_requests_are_accepted_on_every_service() {
    let server = Server::start().await;
    let w = world(&server).await;
    let channel = server.connect().await;
    let mut iran = Clients::new(channel.clone(), Some(&w.tokens["iran"]));
    iran.parties = iran.parties.send_compressed(CompressionEncoding::Gzip);
    iran.channels = iran.channels.send_compressed(CompressionEncoding::Gzip);
    iran.messages = iran.messages.send_compressed(CompressionEncoding::Gzip);
    let me = iran
        .parties
        .who_am_i(pb::WhoAmIRequest::default())
        .await
        .expect("gzip WhoAmI")
        .into_inner();
    assert_eq!(me.party_id, "iran");
    iran.channels
        .get_channel(pb::GetChannelRequest {
            channel_id: w.channel.id.clone(),
        })
        .await
        .expect("gzip GetChannel");
    let mut req = send_req(&w.channel.id, "compressed");
    req.body = "a long and repetitive body ".repeat(1000);
    let sent = iran
        .messages
        .send_message(req.clone())
        .await
        .expect("gzip SendMessage")
        .into_inner();
    assert_eq!(sent.body, req.body);
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel)
        .send_compressed(CompressionEncoding::Gzip);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("gzip Health/Check");
}

/// `SendMessageRequest` whose `subject` (tag 2) is `n` zero bytes: tiny once
/// compressed.
fn zero_subject(channel_id: &str, n: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(n + 64);
    prost::encoding::string::encode(1, &channel_id.to_owned(), &mut b);
    prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut b);
    prost::encoding::encode_varint(n as u64, &mut b);
    b.resize(b.len() + n, 0);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_refused_without_being_inflated() {
    let server = Server::start().await;
    let w = world(&server).await;
    const SEND: &str = "/backchannel.v1.MessageService/SendMessage";
    let token = w.tokens["iran"].clone();
    // Just over the limit once inflated.
    let r = raw_unary(
        &server,
        Some(&token),
        SEND,
        zero_subject(&w.channel.id, 1024 * 1024 + 1),
        true,
    )
    .await;
    assert_err(r, Code::ResourceExhausted, "REQUEST_TOO_LARGE");
    // 64 MiB of zeros (about 64 KiB compressed), 16 at once: the server
    // stops inflating each at the limit, so its memory hardly moves.
    let bomb = zero_subject(&w.channel.id, 64 << 20);
    let before = server.rss_kib();
    let mut calls = Vec::new();
    for _ in 0..16 {
        let (server, token, bomb) = (&server, token.clone(), bomb.clone());
        calls.push(async move { raw_unary(server, Some(&token), SEND, bomb, true).await });
    }
    for r in futures_util::future::join_all(calls).await {
        assert_err(r, Code::ResourceExhausted, "REQUEST_TOO_LARGE");
    }
    let grown_mib = server.rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 100,
        "16 bombs of 64 MiB grew the server by {grown_mib} MiB"
    );
    // Nothing was stored, and the party can still send.
    let mut iran = w.iran.clone();
    iran.messages
        .send_message(send_req(&w.channel.id, "after the bombs"))
        .await
        .expect("a normal send after the bombs");
}

fn error_info(s: &tonic::Status) -> tonic_types::ErrorInfo {
    use tonic_types::StatusExt;
    s.get_details_error_info().expect("an ErrorInfo detail")
}

#[tokio::test]
async fn one_party_over_its_rate_is_refused_with_retry_info_and_the_others_are_not() {
    let server = Server::start_with(Options {
        args: vec!["--rate-limit".into(), "20".into()],
        ..Default::default()
    })
    .await;
    let w = world(&server).await;
    // A burst of twice the rate passes; past it, the party is refused.
    let mut refused = None;
    for i in 0..200 {
        match w.iran.parties.clone().who_am_i(pb::WhoAmIRequest {}).await {
            Ok(_) => assert!(i < 200, "never refused"),
            Err(s) => {
                refused = Some((i, s));
                break;
            }
        }
    }
    let (passed, s) = refused.expect("200 calls at once are over a rate of 20/s");
    assert!(passed >= 20, "refused after only {passed} calls");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    let info = error_info(&s);
    assert_eq!(info.reason, "RATE_LIMITED");
    assert_eq!(info.metadata.get("limit").map(String::as_str), Some("20"));
    use tonic_types::StatusExt;
    let retry = s
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a RetryInfo with a delay");
    assert!(retry <= std::time::Duration::from_secs(1), "{retry:?}");
    assert!(
        s.metadata().get("x-backchannel-tarpit").is_none(),
        "the server's own mark does not leave it"
    );
    // A refusal is held before it is sent, so that a client that floods
    // (sending again the moment it is refused) gets at most 20 refusals a
    // second per call in flight: each refusal takes at least 50 ms.
    let started = std::time::Instant::now();
    let mut refusals = 0;
    for _ in 0..40 {
        if w.iran
            .parties
            .clone()
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .is_err()
        {
            refusals += 1;
        }
    }
    assert!(refusals > 0, "a flood past the rate is refused");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(50) * refusals,
        "{refusals} refusals in {:?}: not held",
        started.elapsed()
    );
    // Another party, and the admin, have buckets of their own.
    w.us.parties
        .clone()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("another party is not limited by iran's calls");
    w.admin
        .parties
        .clone()
        .list_parties(pb::ListPartiesRequest::default())
        .await
        .expect("the admin is not limited by iran's calls");
    // Iran gets through again once its bucket refills.
    eventually("iran's bucket refills", || {
        let mut c = w.iran.parties.clone();
        async move { c.who_am_i(pb::WhoAmIRequest {}).await.ok() }
    })
    .await;
}

#[tokio::test]
async fn one_party_at_its_subscription_limit_does_not_keep_another_out() {
    let server = Server::start_with(Options {
        args: vec!["--max-subscriptions-per-party".into(), "3".into()],
        ..Default::default()
    })
    .await;
    let mut w = world(&server).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(stream::subscribe(&mut w.iran, stream::from(None)).await);
    }
    let r = w.iran.messages.subscribe(stream::from(None)).await;
    let s = r.expect_err("a fourth subscription of iran");
    assert_eq!(s.code(), Code::ResourceExhausted);
    let info = error_info(&s);
    assert_eq!(info.reason, "TOO_MANY_SUBSCRIPTIONS");
    assert_eq!(info.metadata.get("limit").map(String::as_str), Some("3"));
    // The United States subscribes (and sees the next event) all the same.
    let mut us = stream::subscribe(&mut w.us, stream::from(None)).await;
    stream::caught_up(&mut us).await;
    // Closing one of iran's frees its slot.
    held.pop();
    eventually("iran's slot is free again", || {
        let mut c = w.iran.messages.clone();
        async move { c.subscribe(stream::from(None)).await.ok() }
    })
    .await;
}

#[tokio::test]
async fn health_watches_have_a_limit_of_their_own() {
    let server = Server::start_with(Options {
        args: vec!["--max-health-watches".into(), "2".into()],
        ..Default::default()
    })
    .await;
    let channel = server.connect().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let watch = || tonic_health::pb::HealthCheckRequest::default();
    let mut a = health.watch(watch()).await.expect("watch 1").into_inner();
    let b = health.watch(watch()).await.expect("watch 2").into_inner();
    a.message().await.expect("status").expect("an item");
    let s = health.watch(watch()).await.expect_err("a third watch");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert_eq!(error_info(&s).reason, "TOO_MANY_SUBSCRIPTIONS");
    // Check is not a watch, and a party's subscription is not either.
    health.check(watch()).await.expect("Check still answers");
    let mut w = world(&server).await;
    stream::subscribe(&mut w.iran, stream::from(None)).await;
    drop(b);
    eventually("a watch slot is free again", || {
        let mut h = health.clone();
        async move { h.watch(watch()).await.ok() }
    })
    .await;
}

#[tokio::test]
async fn reflection_answers_invalid_argument_to_a_request_that_does_not_decode() {
    let server = Server::start().await;
    for path in [
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    ] {
        let mut grpc = tonic::client::Grpc::new(server.connect().await);
        grpc.ready().await.expect("ready");
        // Field 4 (file_containing_symbol) claims 100 bytes and has 3.
        let garbage = vec![0x22, 0x64, 0x61, 0x62, 0x63];
        let r = async {
            let mut s = grpc
                .streaming(
                    tonic::Request::new(tokio_stream::iter(vec![garbage])),
                    PathAndQuery::from_static(path),
                    RawCodec,
                )
                .await?
                .into_inner();
            while s.message().await?.is_some() {}
            Ok::<(), tonic::Status>(())
        }
        .await;
        assert_err(r, Code::InvalidArgument, "INVALID_REQUEST");
    }
}
