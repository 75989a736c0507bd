//! Durability across restarts: the record, tokens, idempotency keys, page
//! tokens and the log's sequence survive; deadlines that pass while the
//! server is down are honoured when it comes back.
mod common;
use std::time::{SystemTime, UNIX_EPOCH};

use backchannel::pb;
use common::*;
use pb::event::Type as T;
use pb::message::State as S;
use prost_types::Timestamp;
use tonic::Code;

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn micros(t: &Timestamp) -> i64 {
    t.seconds * 1_000_000 + i64::from(t.nanos / 1000)
}

fn timestamp(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

async fn who(c: &mut Clients) -> Result<pb::WhoAmIResponse, tonic::Status> {
    c.parties
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map(|r| r.into_inner())
}

async fn get(c: &mut Clients, id: &str) -> pb::Message {
    c.messages
        .get_message(pb::GetMessageRequest {
            message_id: id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Everything the admin can list, for before/after comparison.
#[derive(Debug, PartialEq)]
struct Snapshot {
    parties: Vec<pb::Party>,
    channels: Vec<pb::Channel>,
    messages: Vec<pb::Message>,
    events: Vec<pb::Event>,
}

async fn snapshot(admin: &mut Clients) -> Snapshot {
    let parties = admin
        .parties
        .list_parties(pb::ListPartiesRequest {
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .parties;
    let channels = admin
        .channels
        .list_channels(pb::ListChannelsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .channels;
    let messages = admin
        .messages
        .list_messages(pb::ListMessagesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    let events = all_events(admin, Default::default()).await;
    Snapshot {
        parties,
        channels,
        messages,
        events,
    }
}

#[tokio::test]
async fn the_record_tokens_and_sequence_survive_a_restart() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let ch = w.channel.id.clone();

    // A second token for Iran, revoked; and a second one for Japan, kept.
    let spare = w
        .admin
        .parties
        .issue_token(pb::IssueTokenRequest {
            party_id: "iran".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    w.admin
        .parties
        .revoke_token(pb::RevokeTokenRequest {
            token_id: spare.token_id.clone(),
        })
        .await
        .unwrap();
    let japan2 = w
        .admin
        .parties
        .issue_token(pb::IssueTokenRequest {
            party_id: "japan".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // Messages in several states, one sent with a request_id.
    let delivered = w
        .iran
        .messages
        .send_message(send_req(&ch, "delivered"))
        .await
        .unwrap()
        .into_inner();
    for c in [&mut w.france, &mut w.japan] {
        c.messages
            .forward_message(move_req!(ForwardMessageRequest, delivered.id))
            .await
            .unwrap();
    }
    w.us.messages
        .acknowledge_message(move_req!(AcknowledgeMessageRequest, delivered.id))
        .await
        .unwrap();
    let travelling = w
        .iran
        .messages
        .send_message(send_req(&ch, "travelling"))
        .await
        .unwrap()
        .into_inner();
    w.france
        .messages
        .accept_message(move_req!(AcceptMessageRequest, travelling.id))
        .await
        .unwrap();
    let mut keyed = send_req(&ch, "keyed");
    keyed.request_id = uuid::Uuid::new_v4().to_string();
    keyed.labels.insert("topic".into(), "oil".into());
    keyed.occur_time = Some(Timestamp {
        seconds: 1_566_729_000,
        nanos: 0,
    });
    let keyed_msg =
        w.us.messages
            .send_message(keyed.clone())
            .await
            .unwrap()
            .into_inner();
    let other = w
        .admin
        .channels
        .create_channel(pb::CreateChannelRequest {
            display_name: "Tokyo".into(),
            parties: vec!["iran".into(), "united-states".into()],
            mediators: vec!["japan".into()],
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    w.iran
        .channels
        .suspend_channel(pb::SuspendChannelRequest {
            channel_id: other.id.clone(),
            note: "cooling off".into(),
            expected_version: 0,
        })
        .await
        .unwrap();

    // A listing begun before the restart.
    let page_req = pb::ListMessagesRequest {
        channel_id: ch.clone(),
        page_size: 1,
        ..Default::default()
    };
    let p1 = w
        .iran
        .messages
        .list_messages(page_req.clone())
        .await
        .unwrap()
        .into_inner();
    let mut p2_req = page_req.clone();
    p2_req.page_token = p1.next_page_token.clone();
    let p2_before = w
        .iran
        .messages
        .list_messages(p2_req.clone())
        .await
        .unwrap()
        .into_inner();

    let before = snapshot(&mut w.admin).await;
    let head = before.events.last().unwrap().sequence;
    assert_eq!(head, before.events.len() as u64);

    let server = server.restart().await;
    let mut admin = server.admin().await;
    let mut iran = server.clients(&w.tokens["iran"]).await;
    let mut us = server.clients(&w.tokens["united-states"]).await;
    let mut france = server.clients(&w.tokens["france"]).await;
    let mut japan = server.clients(&w.tokens["japan"]).await;

    // Every token still names its party; the revoked one stays revoked.
    for (p, token) in &w.tokens {
        let mut c = server.clients(token).await;
        assert_eq!(who(&mut c).await.unwrap().party_id, *p);
    }
    let mut j2 = server.clients(&japan2.token).await;
    assert_eq!(who(&mut j2).await.unwrap().party_id, "japan");
    assert!(who(&mut admin).await.unwrap().admin);
    let mut revoked = server.clients(&spare.token).await;
    assert_err(
        who(&mut revoked).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    assert_err(
        admin
            .parties
            .revoke_token(pb::RevokeTokenRequest {
                token_id: spare.token_id.clone(),
            })
            .await,
        Code::FailedPrecondition,
        "TOKEN_REVOKED",
    );

    // The whole record reads back the same.
    let after = snapshot(&mut admin).await;
    assert_eq!(after, before);
    assert_eq!(get(&mut iran, &keyed_msg.id).await, keyed_msg);

    // A page token from before the restart continues its listing.
    let p2_after = iran
        .messages
        .list_messages(p2_req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p2_after, p2_before);
    assert_eq!(p2_after.head_sequence, p1.head_sequence);

    // The idempotency record survived: the retry creates nothing.
    let retried = us
        .messages
        .send_message(keyed.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried, keyed_msg);
    let mut changed = keyed.clone();
    changed.subject = "changed".into();
    assert_err(
        us.messages.send_message(changed).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
    );
    assert_eq!(
        all_events(&mut admin, Default::default()).await.len() as u64,
        head
    );

    // The next write continues the sequence without a gap.
    let fwd = france
        .messages
        .forward_message(move_req!(ForwardMessageRequest, travelling.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fwd.version, 3);
    let new_events = all_events(
        &mut admin,
        pb::ListEventsRequest {
            after_sequence: head,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(new_events.len(), 1);
    assert_eq!(new_events[0].sequence, head + 1);
    assert_eq!(new_events[0].r#type, T::MessageForwarded as i32);

    // The moves go on where they stopped; channel states held.
    let done = japan
        .messages
        .forward_message(move_req!(ForwardMessageRequest, travelling.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state, S::Delivered as i32);
    assert_err(
        iran.messages
            .send_message(send_req(&other.id, "on the suspended channel"))
            .await,
        Code::FailedPrecondition,
        "CHANNEL_SUSPENDED",
    );
    let mut reply = send_req("", "answer after restart");
    reply.in_reply_to = delivered.id.clone();
    let r = us.messages.send_message(reply).await.unwrap().into_inner();
    assert_eq!(r.thread_id, delivered.id);
    let tail = all_events(
        &mut admin,
        pb::ListEventsRequest {
            after_sequence: head,
            ..Default::default()
        },
    )
    .await;
    let seqs: Vec<u64> = tail.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (head + 1..=head + 4).collect::<Vec<_>>());

    // Tokens are still issued and revoked after a restart.
    let fresh = admin
        .parties
        .issue_token(pb::IssueTokenRequest {
            party_id: "outsider".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut o = server.clients(&fresh.token).await;
    assert_eq!(who(&mut o).await.unwrap().party_id, "outsider");
    admin
        .parties
        .revoke_token(pb::RevokeTokenRequest {
            token_id: japan2.token_id.clone(),
        })
        .await
        .unwrap();
    assert_err(who(&mut j2).await, Code::Unauthenticated, "UNAUTHENTICATED");
}

#[tokio::test]
async fn a_deadline_that_passes_while_the_server_is_down_expires_after_restart() {
    let mut server = Server::start().await;
    let mut w = world(&server).await;
    let deadline = timestamp(now_micros() + 1_500_000);
    let mut req = send_req(&w.channel.id, "answer before the restart");
    req.respond_by = Some(deadline);
    let m = w
        .iran
        .messages
        .send_message(req)
        .await
        .unwrap()
        .into_inner();
    w.france
        .messages
        .accept_message(move_req!(AcceptMessageRequest, m.id))
        .await
        .unwrap();
    let mut later = send_req(&w.channel.id, "no hurry");
    later.respond_by = Some(timestamp(now_micros() + 3_600_000_000));
    let control = w
        .iran
        .messages
        .send_message(later)
        .await
        .unwrap()
        .into_inner();
    let head = all_events(&mut w.admin, Default::default()).await.len() as u64;

    assert_eq!(server.stop().await, Some(0));
    let stopped_at = now_micros();
    // Let the deadline pass while nothing is running.
    eventually("the deadline to pass", || async {
        (now_micros() > micros(&deadline) + 100_000).then_some(())
    })
    .await;
    let server = server.restart().await;
    let restarted_at = now_micros();
    let mut iran = server.clients(&w.tokens["iran"]).await;
    let mut admin = server.admin().await;

    let expired = eventually("the overdue message to expire", || {
        let mut c = iran.clone();
        let id = m.id.clone();
        async move {
            let m = get(&mut c, &id).await;
            (m.state == S::Expired as i32).then_some(m)
        }
    })
    .await;
    assert_eq!(expired.version, 3);
    let evs = all_events(
        &mut admin,
        pb::ListEventsRequest {
            after_sequence: head,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(evs.len(), 1, "exactly one event: {evs:?}");
    let e = &evs[0];
    assert_eq!(e.sequence, head + 1);
    assert_eq!(e.r#type, T::MessageExpired as i32);
    assert_eq!(e.message_id, m.id);
    assert_eq!(e.actor, "system");
    assert_eq!(e.occur_time, Some(deadline));
    let recorded = micros(e.record_time.as_ref().unwrap());
    assert!(recorded > stopped_at, "expired by the restarted server");
    assert!(
        recorded - restarted_at <= 2_000_000,
        "expired {} µs after the restart",
        recorded - restarted_at
    );
    assert_eq!(get(&mut iran, &control.id).await.state, S::Submitted as i32);
}
