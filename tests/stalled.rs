//! Streams whose clients stop reading (DESIGN §5 "A hostile client costs
//! little"): a raw HTTP/2 client with a flow-control window of 0 holds
//! streams the server can never write to.

mod common;

use backchannel::pb;
use common::raw::StalledConnection;
use common::*;

const SUBSCRIBE: &str = "/backchannel.v1.MessageService/Subscribe";

fn sample(text: &str, prefix: &str) -> f64 {
    metric_sample(text, prefix).unwrap_or(0.0)
}

/// Sends `n` messages with bodies of `body_bytes`, 16 at a time.
async fn fill(w: &World, n: usize, body_bytes: usize) {
    let body = "b".repeat(body_bytes);
    let mut left = n;
    while left > 0 {
        let k = left.min(16);
        let calls = (0..k).map(|i| {
            let mut c = w.iran.messages.clone();
            let mut r = send_req(&w.channel.id, &format!("large {i}"));
            r.body = body.clone();
            async move { c.send_message(r).await.expect("send") }
        });
        futures_util::future::join_all(calls).await;
        left -= k;
    }
}

/// The largest RSS (KiB) seen over about a second.
async fn peak_rss_kib(server: &Server) -> u64 {
    let mut peak = 0;
    for _ in 0..50 {
        peak = peak.max(server.rss_kib());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    peak
}

#[tokio::test]
async fn a_hundred_stalled_replays_of_large_events_cost_little_memory() {
    let server = Server::start_with(Options::default().with_metrics()).await;
    let metrics = server.metrics_addr();
    let w = world(&server).await;
    // 400 events of about 60 KiB: a replay page of 256 events would be
    // 15 MB, and 100 stalled streams 1.5 GB.
    fill(&w, 400, 60 * 1024).await;
    let before = server.rss_kib();
    let mut conns = Vec::new();
    for _ in 0..4 {
        let mut c = StalledConnection::connect(server.addr).await;
        for _ in 0..25 {
            c.call(
                SUBSCRIBE,
                ADMIN_TOKEN,
                &pb::SubscribeRequest {
                    start_after: Some(0),
                    ..Default::default()
                },
            )
            .await;
        }
        conns.push(c);
    }
    // Every stream has read its first page (and holds it: it cannot send).
    eventually("100 replay pages read", || {
        let m = metrics.clone();
        async move {
            let text = scrape(&m).await;
            (sample(&text, "backchannel_replay_pages_total") >= 100.0).then_some(())
        }
    })
    .await;
    let peak = peak_rss_kib(&server).await;
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!(
        "100 stalled replays: RSS {} -> {} MiB",
        before / 1024,
        peak / 1024
    );
    assert!(
        grown_mib < 150,
        "100 stalled replays grew the server by {grown_mib} MiB"
    );
    // Closing them ends every stream and gives their pages back.
    drop(conns);
    eventually("the stalled subscriptions close", || {
        let m = metrics.clone();
        async move {
            let text = scrape(&m).await;
            (sample(&text, "backchannel_subscriptions_open") == 0.0).then_some(())
        }
    })
    .await;
    // And the memory they held goes back to the system (the allocator
    // purges freed pages within seconds): at least half of what they took.
    let grown = peak.saturating_sub(before);
    let after = eventually("RSS falls back after the streams closed", || {
        let rss = server.rss_kib();
        async move { (rss <= before + (grown / 2).max(16 * 1024)).then_some(rss) }
    })
    .await;
    eprintln!("after they closed: RSS {} MiB", after / 1024);
}

/// Growth of a server's RSS (MiB) while 2,000 events of 60 KiB (120 MB)
/// are sent, with or without a live subscriber that reads nothing, and what
/// its window held at the end.
async fn growth_while_sending(stall: bool, budget_mib: u64) -> (u64, f64) {
    let server = Server::start_with(
        Options {
            args: vec!["--window-bytes".into(), (budget_mib << 20).to_string()],
            ..Default::default()
        }
        .with_metrics(),
    )
    .await;
    let metrics = server.metrics_addr();
    let w = world(&server).await;
    // Warm the store's caches, so that what grows later is the window.
    fill(&w, 200, 60 * 1024).await;
    let before = server.rss_kib();
    // A party that sees none of the traffic, following live, reading nothing.
    let mut stalled = StalledConnection::connect(server.addr).await;
    if stall {
        stalled
            .call(
                SUBSCRIBE,
                &w.tokens["outsider"],
                &pb::SubscribeRequest::default(),
            )
            .await;
    }
    let sending = fill(&w, 2000, 60 * 1024);
    tokio::pin!(sending);
    let mut peak = before;
    loop {
        tokio::select! {
            () = &mut sending => break,
            () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {
                peak = peak.max(server.rss_kib());
            }
        }
    }
    peak = peak.max(peak_rss_kib(&server).await);
    let window = sample(&scrape(&metrics).await, "backchannel_window_bytes");
    drop(stalled);
    (peak.saturating_sub(before) / 1024, window)
}

#[tokio::test]
async fn a_live_subscriber_that_reads_nothing_holds_no_more_than_the_window_budget() {
    const BUDGET_MIB: u64 = 8;
    // The same load twice: without a stalled subscriber, then with one. A
    // window bounded only by its 8,192 events would keep all 120 MB.
    let (without, _) = growth_while_sending(false, BUDGET_MIB).await;
    let (with, window) = growth_while_sending(true, BUDGET_MIB).await;
    eprintln!(
        "RSS growth while sending 120 MB: {without} MiB, {with} MiB with a stalled live subscriber; window {window} bytes"
    );
    assert!(
        window <= ((BUDGET_MIB << 20) + (64 << 10)) as f64,
        "the window holds {window} bytes"
    );
    assert!(
        with < without + BUDGET_MIB + 32,
        "a stalled live subscriber cost {} MiB more",
        with.saturating_sub(without)
    );
}

/// Opens 50 unread subscriptions with `token` over two connections.
async fn fifty_unread(server: &Server, token: &str) -> Vec<StalledConnection> {
    let mut conns = Vec::new();
    for _ in 0..2 {
        let mut c = StalledConnection::connect(server.addr).await;
        for _ in 0..25 {
            c.call(SUBSCRIBE, token, &pb::SubscribeRequest::default())
                .await;
        }
        conns.push(c);
    }
    conns
}

/// Polls until the server has closed every connection in `conns`.
async fn all_closed(conns: &[StalledConnection]) {
    eventually("the server closes the connections", || {
        let done = conns.iter().all(StalledConnection::is_closed);
        async move { done.then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn fifty_unread_streams_of_a_revoked_token_end_within_five_seconds() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let issued = w
        .admin
        .parties
        .issue_token(pb::IssueTokenRequest {
            party_id: "iran".into(),
            ..Default::default()
        })
        .await
        .expect("issue")
        .into_inner();
    // A large event in the window, so each stream has data it cannot send.
    let mut r = send_req(&w.channel.id, "large");
    r.body = "b".repeat(60 * 1024);
    w.iran.messages.send_message(r).await.expect("send");
    let conns = fifty_unread(&server, &issued.token).await;
    let mut r = send_req(&w.channel.id, "large");
    r.body = "b".repeat(60 * 1024);
    w.iran.messages.send_message(r).await.expect("send");
    assert!(!conns.iter().any(StalledConnection::is_closed));
    let revoked_at = std::time::Instant::now();
    w.admin
        .parties
        .revoke_token(pb::RevokeTokenRequest {
            token_id: issued.token_id,
        })
        .await
        .expect("revoke");
    all_closed(&conns).await;
    let took = revoked_at.elapsed();
    assert!(
        took.as_secs_f64() < 5.0,
        "the streams ended {took:?} after the revocation"
    );
    // The party's other tokens, and other clients, are untouched.
    w.iran
        .parties
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("iran's other token still works");
}

#[tokio::test]
async fn fifty_unread_streams_of_an_expired_token_end_within_five_seconds() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    let expire = prost_types::Timestamp {
        seconds: now.as_secs() as i64 + 3,
        nanos: 0,
    };
    let issued = w
        .admin
        .parties
        .issue_token(pb::IssueTokenRequest {
            party_id: "iran".into(),
            expire_time: Some(expire),
            ..Default::default()
        })
        .await
        .expect("issue")
        .into_inner();
    let conns = fifty_unread(&server, &issued.token).await;
    let mut r = send_req(&w.channel.id, "large");
    r.body = "b".repeat(60 * 1024);
    w.iran.messages.send_message(r).await.expect("send");
    all_closed(&conns).await;
    let expired_at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(expire.seconds as u64);
    let took = std::time::SystemTime::now()
        .duration_since(expired_at)
        .unwrap_or_default();
    assert!(
        took.as_secs_f64() < 5.0,
        "the streams ended {took:?} after the expiry"
    );
}
