//! Relay statistics (DESIGN §9) over the real binary: figures checked
//! against a scenario whose occur times are known (back-dated steps, a
//! decline, a withdrawal, an expiry, a rejection and an answer), over
//! exactly what the caller may see, the same after a restart (rebuilt from
//! the store) as when counted live, and `backchannel stats`.

mod common;

use std::time::{Duration, SystemTime};

use backchannel::pb;
use common::*;
use prost_types::Timestamp;
use tonic::Code;

const H: i64 = 3_600;
const D: i64 = 86_400;

fn at(t0: i64, plus: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: t0 + plus,
        nanos: 0,
    })
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Sends on `channel` at `t0 + plus`.
async fn send(
    c: &mut Clients,
    channel: &str,
    t0: i64,
    plus: i64,
    respond_by: Option<Timestamp>,
) -> String {
    c.messages
        .send_message(pb::SendMessageRequest {
            occur_time: at(t0, plus),
            respond_by,
            ..send_req(channel, &format!("sent at +{plus}s"))
        })
        .await
        .expect("send")
        .into_inner()
        .id
}

macro_rules! step {
    ($c:expr, $rpc:ident, $ty:ident, $id:expr, $t0:expr, $plus:expr) => {
        $c.messages
            .$rpc(pb::$ty {
                message_id: $id.clone(),
                note: "noted".into(),
                occur_time: at($t0, $plus),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{} {}: {e}", stringify!($rpc), $id))
    };
}

async fn stats(c: &mut Clients, req: pb::GetRelayStatsRequest) -> pb::RelayStats {
    c.messages
        .get_relay_stats(req)
        .await
        .expect("GetRelayStats")
        .into_inner()
}

fn all() -> pb::GetRelayStatsRequest {
    pb::GetRelayStatsRequest::default()
}

fn secs(d: &Option<pb::Durations>) -> (u64, i64, i64, i64) {
    let d = d.unwrap_or_default();
    let s = |x: Option<prost_types::Duration>| x.map_or(-1, |x| x.seconds);
    (d.count, s(d.p50), s(d.p90), s(d.max))
}

fn mediator<'a>(s: &'a pb::RelayStats, id: &str) -> &'a pb::relay_stats::Mediator {
    s.mediators
        .iter()
        .find(|m| m.party_id == id)
        .unwrap_or_else(|| panic!("no mediator {id} in {s:?}"))
}

fn principal<'a>(s: &'a pb::RelayStats, id: &str) -> &'a pb::relay_stats::Principal {
    s.principals
        .iter()
        .find(|m| m.party_id == id)
        .unwrap_or_else(|| panic!("no principal {id} in {s:?}"))
}

/// The story on iran → france → japan → united-states, all from `t0` (ten
/// days ago), plus one message on iran → oman → united-states. Returns the
/// world, `t0` and the Oman channel.
async fn scenario(server: &Server) -> (World, i64, pb::Channel) {
    let mut w = world(server).await;
    let t0 = now_secs() - 10 * D;
    let later = at(now_secs(), 30 * D);
    let ch = w.channel.id.clone();
    // M1: carried by both, answered a day after delivery; deadline met.
    let m1 = send(&mut w.iran, &ch, t0, 0, later).await;
    step!(w.france, accept_message, AcceptMessageRequest, m1, t0, H);
    step!(
        w.france,
        forward_message,
        ForwardMessageRequest,
        m1,
        t0,
        3 * H
    );
    step!(w.japan, accept_message, AcceptMessageRequest, m1, t0, 4 * H);
    step!(
        w.japan,
        forward_message,
        ForwardMessageRequest,
        m1,
        t0,
        10 * H
    );
    // R1, the reply, sent 24 h after delivery: waits at japan (reversed).
    w.us.messages
        .send_message(pb::SendMessageRequest {
            in_reply_to: m1.clone(),
            occur_time: at(t0, 34 * H),
            ..send_req("", "the reply")
        })
        .await
        .expect("reply");
    // M2: france forwards without accepting first; japan declines.
    let m2 = send(&mut w.iran, &ch, t0, D, None).await;
    step!(
        w.france,
        forward_message,
        ForwardMessageRequest,
        m2,
        t0,
        D + 1_800
    );
    step!(
        w.japan,
        decline_message,
        DeclineMessageRequest,
        m2,
        t0,
        D + 2 * H
    );
    // M3, from Washington: japan (its first hop) holds it.
    let m3 = send(&mut w.us, &ch, t0, 2 * D, None).await;
    step!(
        w.japan,
        accept_message,
        AcceptMessageRequest,
        m3,
        t0,
        2 * D + 2 * H
    );
    // M4: withdrawn before anyone took it.
    let m4 = send(&mut w.iran, &ch, t0, 3 * D, None).await;
    step!(
        w.iran,
        withdraw_message,
        WithdrawMessageRequest,
        m4,
        t0,
        3 * D + H
    );
    // M6: carried, japan forwards straight away 3 h after arrival; rejected.
    let m6 = send(&mut w.iran, &ch, t0, 4 * D, later).await;
    step!(
        w.france,
        accept_message,
        AcceptMessageRequest,
        m6,
        t0,
        4 * D + H
    );
    step!(
        w.france,
        forward_message,
        ForwardMessageRequest,
        m6,
        t0,
        4 * D + 2 * H
    );
    step!(
        w.japan,
        forward_message,
        ForwardMessageRequest,
        m6,
        t0,
        4 * D + 5 * H
    );
    step!(
        w.us,
        reject_message,
        RejectMessageRequest,
        m6,
        t0,
        4 * D + 6 * H
    );
    // M7: waits at france, its deadline still running.
    send(&mut w.iran, &ch, t0, 5 * D, later).await;
    // M5: sent now with a deadline two seconds on; it expires at france.
    let soon = Timestamp::from(SystemTime::now() + Duration::from_secs(2));
    let m5 = send(&mut w.iran, &ch, now_secs(), 0, Some(soon)).await;
    let admin = server.admin().await;
    eventually("M5 to expire", || {
        let mut a = admin.messages.clone();
        let id = m5.clone();
        async move {
            let m = a
                .get_message(pb::GetMessageRequest { message_id: id })
                .await
                .ok()?
                .into_inner();
            (m.state == pb::message::State::Expired as i32).then_some(())
        }
    })
    .await;
    // One message on a channel france and japan are not on.
    let oman_token = party(&mut w.admin, "oman").await;
    w.tokens.insert("oman".into(), oman_token);
    let oman = stream::open_channel(&mut w.admin, "iran", "united-states", &["oman"]).await;
    send(&mut w.iran, &oman.id, t0, 6 * D, None).await;
    (w, t0, oman)
}

/// The figures of the Biarritz channel, as worked out by hand above.
fn check_biarritz(s: &pb::RelayStats) {
    assert_eq!(s.messages, 8, "{s:?}");
    let f = mediator(s, "france");
    assert_eq!(
        (f.carried, f.declined, f.holding, f.waiting),
        (3, 0, 0, 1),
        "{f:?}"
    );
    assert_eq!(secs(&f.hold_time), (3, H, 2 * H, 2 * H), "france hold");
    assert_eq!(secs(&f.pickup_time), (3, H, H, H), "france pickup");
    let j = mediator(s, "japan");
    assert_eq!(
        (j.carried, j.declined, j.holding, j.waiting),
        (2, 1, 1, 1),
        "{j:?}"
    );
    assert_eq!(secs(&j.hold_time), (2, 0, 6 * H, 6 * H), "japan hold");
    assert_eq!(
        secs(&j.pickup_time),
        (3, 2 * H, 3 * H, 3 * H),
        "japan pickup"
    );
    let i = principal(s, "iran");
    assert_eq!(
        (i.sent, i.received, i.answered, i.rejected),
        (6, 0, 0, 0),
        "{i:?}"
    );
    assert_eq!(secs(&i.response_time).0, 0);
    let u = principal(s, "united-states");
    assert_eq!(
        (u.sent, u.received, u.answered, u.rejected),
        (2, 2, 1, 1),
        "{u:?}"
    );
    assert_eq!(
        secs(&u.response_time),
        (1, 24 * H, 24 * H, 24 * H),
        "response"
    );
    let d = s.deadlines.unwrap_or_default();
    assert_eq!((d.open, d.met, d.expired), (1, 1, 1), "{d:?}");
}

#[tokio::test]
async fn figures_follow_the_known_story_and_survive_a_restart() {
    let server = Server::start().await;
    let (mut w, t0, oman) = scenario(&server).await;
    let biarritz = pb::GetRelayStatsRequest {
        channel_id: w.channel.id.clone(),
        ..all()
    };
    let live = stats(&mut w.admin, biarritz.clone()).await;
    check_biarritz(&live);
    // france is not on the Oman channel: it sees the Biarritz figures only.
    let seen_by_france = stats(&mut w.france, all()).await;
    check_biarritz(&seen_by_france);
    assert!(
        seen_by_france
            .mediators
            .iter()
            .all(|m| m.party_id != "oman")
    );
    // The admin sees both channels.
    let everything = stats(&mut w.admin, all()).await;
    assert_eq!(everything.messages, 9);
    assert_eq!(mediator(&everything, "oman").waiting, 1);
    assert_eq!(principal(&everything, "iran").sent, 7);
    // A window of send times: [t0 + 1d, t0 + 4d) holds M2, R1, M3 and M4.
    let window = stats(
        &mut w.admin,
        pb::GetRelayStatsRequest {
            since: at(t0, D),
            until: at(t0, 4 * D),
            ..biarritz.clone()
        },
    )
    .await;
    assert_eq!(window.messages, 4, "{window:?}");
    let f = mediator(&window, "france");
    assert_eq!((f.carried, f.waiting), (1, 0));
    assert_eq!(
        secs(&f.hold_time),
        (1, 0, 0, 0),
        "a forward from PENDING holds for 0"
    );
    let j = mediator(&window, "japan");
    assert_eq!((j.declined, j.holding, j.waiting), (1, 1, 1));
    // By party: only the messages of channels oman is on.
    let by_oman = stats(
        &mut w.admin,
        pb::GetRelayStatsRequest {
            party_id: "oman".into(),
            ..all()
        },
    )
    .await;
    assert_eq!(by_oman.messages, 1);
    // After a restart the figures are rebuilt from the store: the same.
    let head = live.head_sequence;
    let server = server.restart().await;
    let admin = server.admin().await;
    let again = eventually("statistics after the restart", || {
        let mut a = admin.messages.clone();
        let req = biarritz.clone();
        async move { a.get_relay_stats(req).await.ok().map(|r| r.into_inner()) }
    })
    .await;
    assert_eq!(
        again,
        pb::RelayStats {
            head_sequence: again.head_sequence,
            ..live.clone()
        }
    );
    assert!(again.head_sequence >= head);
    let mut oman_clients = server.clients(&w.tokens["oman"]).await;
    let seen_by_oman = stats(&mut oman_clients, all()).await;
    assert_eq!(seen_by_oman.messages, 1);
    assert_eq!(
        seen_by_oman.mediators.len(),
        1,
        "only oman mediates what oman sees"
    );
    let _ = oman;
}

#[tokio::test]
async fn a_party_sees_figures_only_of_what_it_may_see() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let ch = w.channel.id.clone();
    let m = send(&mut w.iran, &ch, now_secs(), 0, None).await;
    step!(
        w.france,
        accept_message,
        AcceptMessageRequest,
        m,
        now_secs(),
        0
    );
    // The outsider is on no channel: nothing, and the channel does not exist.
    let nothing = stats(&mut w.outsider, all()).await;
    assert_eq!(nothing.messages, 0);
    assert!(nothing.mediators.is_empty() && nothing.principals.is_empty());
    let r = w
        .outsider
        .messages
        .get_relay_stats(pb::GetRelayStatsRequest {
            channel_id: ch.clone(),
            ..all()
        })
        .await;
    assert_err(r, Code::NotFound, "CHANNEL_NOT_FOUND");
    // A mediator off a channel's route gets nothing of it.
    let aside = aside_channel(&mut w).await;
    let r = w
        .iran
        .messages
        .get_relay_stats(pb::GetRelayStatsRequest {
            channel_id: aside.id.clone(),
            ..all()
        })
        .await;
    assert_err(r, Code::NotFound, "CHANNEL_NOT_FOUND");
    // What the caller wrote is counted when the call returns.
    let s = stats(&mut w.japan, all()).await;
    assert_eq!(s.messages, 1);
    assert_eq!(mediator(&s, "france").holding, 1);
    // Bad requests, in the contract's order.
    let r = w
        .admin
        .messages
        .get_relay_stats(pb::GetRelayStatsRequest {
            party_id: "nobody-here".into(),
            ..all()
        })
        .await;
    assert_err(r, Code::NotFound, "PARTY_NOT_FOUND");
    let r = w
        .admin
        .messages
        .get_relay_stats(pb::GetRelayStatsRequest {
            since: at(now_secs(), 0),
            until: at(now_secs(), -H),
            ..all()
        })
        .await;
    assert_err(r, Code::InvalidArgument, "INVALID_FIELD");
    let r = w
        .admin
        .messages
        .get_relay_stats(pb::GetRelayStatsRequest {
            channel_id: "not-a-uuid".into(),
            ..all()
        })
        .await;
    assert_err(r, Code::InvalidArgument, "INVALID_FIELD");
    let r = server
        .anonymous()
        .await
        .messages
        .get_relay_stats(all())
        .await;
    assert_err(r, Code::Unauthenticated, "UNAUTHENTICATED");
}

#[tokio::test]
async fn backchannel_stats_prints_the_tables() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let ch = w.channel.id.clone();
    let t0 = now_secs() - D;
    let m = send(&mut w.iran, &ch, t0, 0, None).await;
    step!(w.france, accept_message, AcceptMessageRequest, m, t0, 2 * H);
    step!(
        w.france,
        forward_message,
        ForwardMessageRequest,
        m,
        t0,
        4 * H + 13 * 60
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_backchannel"))
        .args([
            "stats",
            "--channel",
            &ch,
            "--addr",
            &server.addr.to_string(),
        ])
        .env("BACKCHANNEL_TOKEN", &w.tokens["iran"])
        .output()
        .await
        .expect("run backchannel stats");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 messages"), "{text}");
    let france = text
        .lines()
        .find(|l| l.starts_with("france"))
        .unwrap_or_else(|| panic!("no france row in\n{text}"));
    assert!(france.contains("2h13m / 2h13m / 2h13m (n=1)"), "{france}");
    assert!(france.contains("2h0m / 2h0m / 2h0m (n=1)"), "{france}");
    let json = tokio::process::Command::new(env!("CARGO_BIN_EXE_backchannel"))
        .args([
            "stats",
            "-o",
            "json",
            "--since",
            "-2d",
            "--addr",
            &server.addr.to_string(),
        ])
        .env("BACKCHANNEL_TOKEN", &w.tokens["iran"])
        .output()
        .await
        .expect("run backchannel stats -o json");
    let text = String::from_utf8_lossy(&json.stdout);
    assert!(json.status.success(), "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
    assert_eq!(v["messages"], "1");
    assert_eq!(v["mediators"][0]["holdTime"]["p50"], "7980s");
}

/// With replicas on one PostgreSQL database, each counts what the others
/// write (it follows the shared log as its subscribers do).
#[tokio::test]
async fn every_replica_counts_what_the_others_write() {
    if !postgres_available() {
        return;
    }
    let replicas = Server::start_postgres_replicas(2).await;
    let mut w = world(&replicas[0]).await;
    let ch = w.channel.id.clone();
    let t0 = now_secs() - D;
    let m = send(&mut w.iran, &ch, t0, 0, None).await;
    step!(
        w.france,
        accept_message,
        AcceptMessageRequest,
        m,
        t0,
        90 * 60
    );
    let admin = replicas[1].admin().await;
    let s = eventually("replica 1 to count replica 0's writes", || {
        let mut a = admin.messages.clone();
        async move {
            let s = a.get_relay_stats(all()).await.ok()?.into_inner();
            (s.messages == 1 && s.mediators.iter().any(|m| m.holding == 1)).then_some(s)
        }
    })
    .await;
    assert_eq!(
        secs(&mediator(&s, "france").pickup_time),
        (1, 5_400, 5_400, 5_400)
    );
    // And the other way round.
    let mut japan = replicas[1].clients(&w.tokens["japan"]).await;
    let mut france = replicas[1].clients(&w.tokens["france"]).await;
    step!(france, forward_message, ForwardMessageRequest, m, t0, 2 * H);
    step!(japan, forward_message, ForwardMessageRequest, m, t0, 3 * H);
    let s = eventually("replica 0 to count replica 1's writes", || {
        let mut a = w.admin.messages.clone();
        async move {
            let s = a.get_relay_stats(all()).await.ok()?.into_inner();
            (principal(&s, "united-states").received == 1).then_some(s)
        }
    })
    .await;
    assert_eq!(mediator(&s, "japan").carried, 1);
}
