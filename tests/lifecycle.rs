//! Message lifecycles over a real server: the full route with a reply, the
//! reversed route, decline, withdraw, reject, expiry, and the rules on
//! `respond_by` and `occur_time`.
mod common;
use std::time::{SystemTime, UNIX_EPOCH};

use backchannel::pb;
use common::*;
use pb::event::Type as T;
use pb::hop::State as H;
use pb::message::State as S;
use prost_types::Timestamp;
use tonic::Code;

/// 2019-08-25T10:30:00Z, during the Biarritz G7.
const BIARRITZ: i64 = 1_566_729_000;

fn ts(seconds: i64, micros: i32) -> Timestamp {
    Timestamp {
        seconds,
        nanos: micros * 1000,
    }
}

/// Now plus `ms` milliseconds, at the server's precision (microseconds).
fn now_plus(ms: i64) -> Timestamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let micros = d.as_micros() as i64 + ms * 1000;
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn micros(t: &Timestamp) -> i64 {
    t.seconds * 1_000_000 + i64::from(t.nanos / 1000)
}

fn state(m: &pb::Message) -> S {
    S::try_from(m.state).unwrap()
}

fn hop_states(m: &pb::Message) -> Vec<(String, H)> {
    m.hops
        .iter()
        .map(|h| (h.mediator.clone(), H::try_from(h.state).unwrap()))
        .collect()
}

fn hops(list: &[(&str, H)]) -> Vec<(String, H)> {
    list.iter().map(|(m, s)| (m.to_string(), *s)).collect()
}

fn kinds(events: &[pb::Event]) -> Vec<T> {
    events
        .iter()
        .map(|e| T::try_from(e.r#type).unwrap())
        .collect()
}

fn event_message(e: &pb::Event) -> &pb::Message {
    match e.subject.as_ref() {
        Some(pb::event::Subject::Message(m)) => m,
        other => panic!("event {} has no message subject: {other:?}", e.sequence),
    }
}

async fn message_events(admin: &mut Clients, id: &str) -> Vec<pb::Event> {
    all_events(
        admin,
        pb::ListEventsRequest {
            message_id: id.into(),
            ..Default::default()
        },
    )
    .await
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

#[tokio::test]
async fn full_lifecycle_on_two_mediators_ends_answered_by_a_reply() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let ch = w.channel.id.clone();

    let mut req = send_req(&ch, "Overture from Tehran");
    req.body = "We are ready to talk about sanctions relief.".into();
    req.labels.insert("topic".into(), "sanctions".into());
    req.occur_time = Some(ts(BIARRITZ, 0));
    let m = w
        .iran
        .messages
        .send_message(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&m), S::Submitted);
    assert_eq!(m.sender, "iran");
    assert_eq!(m.recipient, "united-states");
    assert_eq!(m.channel_id, ch);
    assert_eq!(m.thread_id, m.id, "a first message is its own thread");
    assert_eq!(m.in_reply_to, "");
    assert_eq!(m.version, 1);
    assert_eq!(m.labels.get("topic").map(String::as_str), Some("sanctions"));
    assert_eq!(m.send_time, Some(ts(BIARRITZ, 0)));
    assert_eq!(
        hop_states(&m),
        hops(&[("france", H::Pending), ("japan", H::Pending)])
    );

    // Who may not move it yet.
    assert_err(
        w.japan
            .messages
            .accept_message(move_req!(AcceptMessageRequest, m.id))
            .await,
        Code::FailedPrecondition,
        "NOT_CURRENT_MEDIATOR",
    );
    assert_err(
        w.iran
            .messages
            .accept_message(move_req!(AcceptMessageRequest, m.id))
            .await,
        Code::PermissionDenied,
        "NOT_A_MEDIATOR",
    );
    assert_err(
        w.admin
            .messages
            .forward_message(move_req!(ForwardMessageRequest, m.id))
            .await,
        Code::PermissionDenied,
        "ADMIN_NOT_A_PARTY",
    );
    assert_err(
        w.us.messages
            .acknowledge_message(move_req!(AcknowledgeMessageRequest, m.id))
            .await,
        Code::FailedPrecondition,
        "MESSAGE_NOT_DELIVERED",
    );
    assert_err(
        w.outsider
            .messages
            .accept_message(move_req!(AcceptMessageRequest, m.id))
            .await,
        Code::NotFound,
        "MESSAGE_NOT_FOUND",
    );

    // France takes it (reported an hour after it was sent).
    let t_accept = ts(BIARRITZ + 3600, 250_000);
    let mut a = move_req!(AcceptMessageRequest, m.id);
    a.note = "received in Biarritz".into();
    a.occur_time = Some(t_accept);
    let m1 = w
        .france
        .messages
        .accept_message(a)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&m1), S::InTransit);
    assert_eq!(m1.version, 2);
    assert_eq!(
        hop_states(&m1),
        hops(&[("france", H::Accepted), ("japan", H::Pending)])
    );
    assert_eq!(m1.hops[0].accept_time, Some(t_accept));
    assert_eq!(m1.hops[0].forward_time, None);
    assert_eq!(m1.hops[0].note, "received in Biarritz");
    assert_err(
        w.france
            .messages
            .accept_message(move_req!(AcceptMessageRequest, m.id))
            .await,
        Code::FailedPrecondition,
        "HOP_ALREADY_ACCEPTED",
    );

    // France hands it to Japan.
    let t_fwd = ts(BIARRITZ + 7200, 0);
    let mut f = move_req!(ForwardMessageRequest, m.id);
    f.note = "handed to Abe".into();
    f.occur_time = Some(t_fwd);
    let m2 = w
        .france
        .messages
        .forward_message(f)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&m2), S::InTransit);
    assert_eq!(
        hop_states(&m2),
        hops(&[("france", H::Forwarded), ("japan", H::Pending)])
    );
    assert_eq!(m2.hops[0].accept_time, Some(t_accept));
    assert_eq!(m2.hops[0].forward_time, Some(t_fwd));
    assert_eq!(
        m2.hops[0].note, "handed to Abe",
        "a hop keeps its latest note"
    );

    // Japan forwards a PENDING hop: accepted and delivered at once.
    let t_deliver = ts(BIARRITZ + 86_400, 999_999);
    let mut d = move_req!(ForwardMessageRequest, m.id);
    d.occur_time = Some(t_deliver);
    let m3 = w
        .japan
        .messages
        .forward_message(d)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&m3), S::Delivered);
    assert_eq!(
        hop_states(&m3),
        hops(&[("france", H::Forwarded), ("japan", H::Forwarded)])
    );
    assert_eq!(m3.hops[1].accept_time, Some(t_deliver));
    assert_eq!(m3.hops[1].forward_time, Some(t_deliver));
    assert_eq!(m3.version, 4);

    // Washington acknowledges.
    let m4 =
        w.us.messages
            .acknowledge_message(move_req!(AcknowledgeMessageRequest, m.id))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(state(&m4), S::Acknowledged);
    assert_eq!(m4.version, 5);

    // Only the recipient replies.
    let mut bad_reply = send_req("", "not yours to answer");
    bad_reply.in_reply_to = m.id.clone();
    assert_err(
        w.france.messages.send_message(bad_reply).await,
        Code::PermissionDenied,
        "NOT_THE_RECIPIENT",
    );

    // Washington replies on the same channel (channel_id left empty).
    let mut r = send_req("", "Reply from Washington");
    r.in_reply_to = m.id.clone();
    let reply = w.us.messages.send_message(r).await.unwrap().into_inner();
    assert_eq!(state(&reply), S::Submitted);
    assert_eq!(reply.channel_id, ch);
    assert_eq!(reply.sender, "united-states");
    assert_eq!(reply.recipient, "iran");
    assert_eq!(reply.in_reply_to, m.id);
    assert_eq!(
        reply.thread_id, m.id,
        "the reply joins the original's thread"
    );
    assert_eq!(
        hop_states(&reply),
        hops(&[("japan", H::Pending), ("france", H::Pending)]),
        "a reply travels the route reversed"
    );
    let orig = get(&mut w.iran, &m.id).await;
    assert_eq!(state(&orig), S::Answered);
    assert_eq!(orig.version, 6);

    // The log: one event per step, the reply's SENT right before ANSWERED.
    let all = all_events(&mut w.admin, Default::default()).await;
    let seqs: Vec<u64> = all.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>(), "no gaps");
    assert_eq!(
        kinds(&all),
        vec![
            T::ChannelOpened,
            T::MessageSent,
            T::MessageAccepted,
            T::MessageForwarded,
            T::MessageDelivered,
            T::MessageAcknowledged,
            T::MessageSent,
            T::MessageAnswered,
        ]
    );
    let opened = &all[0];
    assert_eq!(opened.actor, "admin");
    assert_eq!(opened.channel_id, ch);
    assert_eq!(opened.message_id, "");
    assert_eq!(opened.hop_index, None);
    assert!(matches!(
        opened.subject,
        Some(pb::event::Subject::Channel(_))
    ));

    let evs = message_events(&mut w.admin, &m.id).await;
    assert_eq!(
        kinds(&evs),
        vec![
            T::MessageSent,
            T::MessageAccepted,
            T::MessageForwarded,
            T::MessageDelivered,
            T::MessageAcknowledged,
            T::MessageAnswered,
        ]
    );
    let actors: Vec<&str> = evs.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(
        actors,
        vec![
            "iran",
            "france",
            "france",
            "japan",
            "united-states",
            "united-states"
        ]
    );
    let hop_idx: Vec<Option<i32>> = evs.iter().map(|e| e.hop_index).collect();
    assert_eq!(
        hop_idx,
        vec![None, Some(0), Some(0), Some(1), None, None],
        "hop_index only on hop events"
    );
    assert_eq!(evs[0].occur_time, Some(ts(BIARRITZ, 0)));
    assert_eq!(evs[1].occur_time, Some(t_accept));
    assert_eq!(evs[1].note, "received in Biarritz");
    assert_eq!(evs[2].occur_time, Some(t_fwd));
    assert_eq!(evs[2].note, "handed to Abe");
    assert_eq!(evs[3].occur_time, Some(t_deliver));
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e.message_id, m.id);
        assert_eq!(e.channel_id, ch);
        assert!(e.record_time.is_some());
        assert_eq!(
            event_message(e).version,
            i as u64 + 1,
            "the subject is the message after the event"
        );
    }
    let reply_evs = message_events(&mut w.admin, &reply.id).await;
    assert_eq!(kinds(&reply_evs), vec![T::MessageSent]);
    let n = reply_evs[0].sequence;
    let answered = evs.last().unwrap();
    assert_eq!(answered.sequence, n + 1, "MESSAGE_ANSWERED is at n+1");
    assert_eq!(answered.actor, "united-states");
    assert_eq!(state(event_message(answered)), S::Answered);

    // ANSWERED admits nothing more.
    assert_err(
        w.us.messages
            .reject_message(move_req!(RejectMessageRequest, m.id))
            .await,
        Code::FailedPrecondition,
        "MESSAGE_NOT_DELIVERED",
    );
    let mut again = send_req("", "second answer");
    again.in_reply_to = m.id.clone();
    assert_err(
        w.us.messages.send_message(again).await,
        Code::FailedPrecondition,
        "MESSAGE_NOT_DELIVERED",
    );

    // The reply goes back japan → france; Tehran answers it in the same thread.
    w.japan
        .messages
        .forward_message(move_req!(ForwardMessageRequest, reply.id))
        .await
        .unwrap();
    let delivered = w
        .france
        .messages
        .forward_message(move_req!(ForwardMessageRequest, reply.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&delivered), S::Delivered);
    let mut r2 = send_req(&ch, "Tehran answers");
    r2.in_reply_to = reply.id.clone();
    let reply2 = w.iran.messages.send_message(r2).await.unwrap().into_inner();
    assert_eq!(
        reply2.thread_id, m.id,
        "thread_id is the first message's id"
    );
    assert_eq!(reply2.in_reply_to, reply.id);
    let thread = w
        .iran
        .messages
        .list_messages(pb::ListMessagesRequest {
            thread_id: m.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = thread.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![reply2.id.as_str(), reply.id.as_str(), m.id.as_str()]
    );
}

#[tokio::test]
async fn a_message_from_the_second_principal_travels_the_route_reversed() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let m =
        w.us.messages
            .send_message(send_req(&w.channel.id, "from Washington"))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(m.sender, "united-states");
    assert_eq!(m.recipient, "iran");
    assert_eq!(
        hop_states(&m),
        hops(&[("japan", H::Pending), ("france", H::Pending)])
    );
    assert_err(
        w.france
            .messages
            .accept_message(move_req!(AcceptMessageRequest, m.id))
            .await,
        Code::FailedPrecondition,
        "NOT_CURRENT_MEDIATOR",
    );
    let t = ts(BIARRITZ, 42);
    let mut f = move_req!(ForwardMessageRequest, m.id);
    f.occur_time = Some(t);
    let m1 = w
        .japan
        .messages
        .forward_message(f)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&m1), S::InTransit);
    assert_eq!(
        hop_states(&m1),
        hops(&[("japan", H::Forwarded), ("france", H::Pending)])
    );
    assert_eq!(m1.hops[0].accept_time, Some(t));
    assert_eq!(m1.hops[0].forward_time, Some(t));
    let m2 = w
        .france
        .messages
        .forward_message(move_req!(ForwardMessageRequest, m.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&m2), S::Delivered);
    let m3 = w
        .iran
        .messages
        .acknowledge_message(move_req!(AcknowledgeMessageRequest, m.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&m3), S::Acknowledged);
    let evs = message_events(&mut w.admin, &m.id).await;
    assert_eq!(
        kinds(&evs),
        vec![
            T::MessageSent,
            T::MessageForwarded,
            T::MessageDelivered,
            T::MessageAcknowledged
        ],
        "a forward of a PENDING hop is one MESSAGE_FORWARDED event"
    );
    let actors: Vec<&str> = evs.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(actors, vec!["united-states", "japan", "france", "iran"]);
    let hop_idx: Vec<Option<i32>> = evs.iter().map(|e| e.hop_index).collect();
    assert_eq!(hop_idx, vec![None, Some(0), Some(1), None]);
}

#[tokio::test]
async fn the_current_mediator_declines_with_a_reason_and_later_hops_are_cancelled() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let send = |subject: &str| send_req(&w.channel.id, subject);

    // Declined at the first hop.
    let m = w
        .iran
        .messages
        .send_message(send("declined by France"))
        .await
        .unwrap()
        .into_inner();
    let mut no_note = move_req!(DeclineMessageRequest, m.id);
    no_note.note = String::new();
    assert_err(
        w.france.messages.decline_message(no_note.clone()).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    no_note.note = "   ".into();
    assert_err(
        w.france.messages.decline_message(no_note.clone()).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    // A malformed request is refused before anything about the caller's role.
    assert_err(
        w.japan.messages.decline_message(no_note).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    let mut dec = move_req!(DeclineMessageRequest, m.id);
    dec.note = "not the right moment".into();
    assert_err(
        w.japan.messages.decline_message(dec.clone()).await,
        Code::FailedPrecondition,
        "NOT_CURRENT_MEDIATOR",
    );
    assert_err(
        w.us.messages.decline_message(dec.clone()).await,
        Code::PermissionDenied,
        "NOT_A_MEDIATOR",
    );
    let d = w
        .france
        .messages
        .decline_message(dec.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&d), S::Declined);
    assert_eq!(
        hop_states(&d),
        hops(&[("france", H::Declined), ("japan", H::Cancelled)])
    );
    assert_eq!(d.hops[0].note, "not the right moment");
    let evs = message_events(&mut w.admin, &m.id).await;
    assert_eq!(kinds(&evs), vec![T::MessageSent, T::MessageDeclined]);
    assert_eq!(evs[1].hop_index, Some(0));
    assert_eq!(evs[1].actor, "france");
    assert_eq!(evs[1].note, "not the right moment");
    // Final.
    for r in [
        w.france
            .messages
            .forward_message(move_req!(ForwardMessageRequest, m.id))
            .await,
        w.iran
            .messages
            .withdraw_message(move_req!(WithdrawMessageRequest, m.id))
            .await,
    ] {
        assert_err(r, Code::FailedPrecondition, "MESSAGE_NOT_IN_TRANSIT");
    }

    // Declined at the second hop after France forwarded it.
    let m = w
        .iran
        .messages
        .send_message(send("declined by Japan"))
        .await
        .unwrap()
        .into_inner();
    w.france
        .messages
        .forward_message(move_req!(ForwardMessageRequest, m.id))
        .await
        .unwrap();
    let mut dec = move_req!(DeclineMessageRequest, m.id);
    dec.note = "Tokyo will not carry this".into();
    assert_err(
        w.france.messages.decline_message(dec.clone()).await,
        Code::FailedPrecondition,
        "NOT_CURRENT_MEDIATOR",
    );
    let d = w
        .japan
        .messages
        .decline_message(dec)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&d), S::Declined);
    assert_eq!(
        hop_states(&d),
        hops(&[("france", H::Forwarded), ("japan", H::Declined)])
    );
    let evs = message_events(&mut w.admin, &m.id).await;
    assert_eq!(
        kinds(&evs),
        vec![T::MessageSent, T::MessageForwarded, T::MessageDeclined]
    );
    assert_eq!(evs[2].hop_index, Some(1));
}

#[tokio::test]
async fn the_sender_withdraws_only_before_delivery() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let m = w
        .iran
        .messages
        .send_message(send_req(&w.channel.id, "second thoughts"))
        .await
        .unwrap()
        .into_inner();
    w.france
        .messages
        .forward_message(move_req!(ForwardMessageRequest, m.id))
        .await
        .unwrap();
    w.japan
        .messages
        .accept_message(move_req!(AcceptMessageRequest, m.id))
        .await
        .unwrap();
    let mut wd = move_req!(WithdrawMessageRequest, m.id);
    wd.note = String::new();
    assert_err(
        w.iran.messages.withdraw_message(wd.clone()).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    wd.note = "overtaken by events".into();
    for (c, reason) in [
        (&mut w.france, "NOT_THE_SENDER"),
        (&mut w.us, "NOT_THE_SENDER"),
        (&mut w.admin, "ADMIN_NOT_A_PARTY"),
    ] {
        assert_err(
            c.messages.withdraw_message(wd.clone()).await,
            Code::PermissionDenied,
            reason,
        );
    }
    assert_err(
        w.outsider.messages.withdraw_message(wd.clone()).await,
        Code::NotFound,
        "MESSAGE_NOT_FOUND",
    );
    let x = w
        .iran
        .messages
        .withdraw_message(wd)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&x), S::Withdrawn);
    assert_eq!(
        hop_states(&x),
        hops(&[("france", H::Forwarded), ("japan", H::Cancelled)]),
        "hops that can no longer happen are cancelled"
    );
    let evs = message_events(&mut w.admin, &m.id).await;
    assert_eq!(
        kinds(&evs),
        vec![
            T::MessageSent,
            T::MessageForwarded,
            T::MessageAccepted,
            T::MessageWithdrawn
        ]
    );
    let last = evs.last().unwrap();
    assert_eq!(last.actor, "iran");
    assert_eq!(last.note, "overtaken by events");
    assert_eq!(last.hop_index, None);
    assert_err(
        w.japan
            .messages
            .forward_message(move_req!(ForwardMessageRequest, m.id))
            .await,
        Code::FailedPrecondition,
        "MESSAGE_NOT_IN_TRANSIT",
    );

    // A delivered message can no longer be withdrawn.
    let m = w
        .iran
        .messages
        .send_message(send_req(&w.channel.id, "already there"))
        .await
        .unwrap()
        .into_inner();
    w.france
        .messages
        .forward_message(move_req!(ForwardMessageRequest, m.id))
        .await
        .unwrap();
    w.japan
        .messages
        .forward_message(move_req!(ForwardMessageRequest, m.id))
        .await
        .unwrap();
    assert_err(
        w.iran
            .messages
            .withdraw_message(move_req!(WithdrawMessageRequest, m.id))
            .await,
        Code::FailedPrecondition,
        "MESSAGE_NOT_IN_TRANSIT",
    );
    assert_eq!(state(&get(&mut w.iran, &m.id).await), S::Delivered);
}

#[tokio::test]
async fn the_recipient_rejects_a_delivered_message_with_a_reason() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let m = w
        .iran
        .messages
        .send_message(send_req(&w.channel.id, "an offer"))
        .await
        .unwrap()
        .into_inner();
    let mut rj = move_req!(RejectMessageRequest, m.id);
    rj.note = "unacceptable terms".into();
    assert_err(
        w.us.messages.reject_message(rj.clone()).await,
        Code::FailedPrecondition,
        "MESSAGE_NOT_DELIVERED",
    );
    for c in [&mut w.france, &mut w.japan] {
        c.messages
            .forward_message(move_req!(ForwardMessageRequest, m.id))
            .await
            .unwrap();
    }
    let mut empty = rj.clone();
    empty.note = String::new();
    assert_err(
        w.us.messages.reject_message(empty).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    assert_err(
        w.iran.messages.reject_message(rj.clone()).await,
        Code::PermissionDenied,
        "NOT_THE_RECIPIENT",
    );
    assert_err(
        w.japan.messages.reject_message(rj.clone()).await,
        Code::PermissionDenied,
        "NOT_THE_RECIPIENT",
    );
    let r = w.us.messages.reject_message(rj).await.unwrap().into_inner();
    assert_eq!(state(&r), S::Rejected);
    assert_eq!(
        hop_states(&r),
        hops(&[("france", H::Forwarded), ("japan", H::Forwarded)])
    );
    let evs = message_events(&mut w.admin, &m.id).await;
    assert_eq!(
        kinds(&evs),
        vec![
            T::MessageSent,
            T::MessageForwarded,
            T::MessageDelivered,
            T::MessageRejected
        ]
    );
    assert_eq!(evs[3].actor, "united-states");
    assert_eq!(evs[3].note, "unacceptable terms");
    // Final: no acknowledgement, no reply.
    assert_err(
        w.us.messages
            .acknowledge_message(move_req!(AcknowledgeMessageRequest, m.id))
            .await,
        Code::FailedPrecondition,
        "MESSAGE_NOT_DELIVERED",
    );
    let mut reply = send_req("", "on second thought");
    reply.in_reply_to = m.id.clone();
    assert_err(
        w.us.messages.send_message(reply).await,
        Code::FailedPrecondition,
        "MESSAGE_NOT_DELIVERED",
    );
}

#[tokio::test]
async fn a_passed_deadline_expires_the_message_by_system_within_two_seconds() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let deadline = now_plus(1500);
    let mut req = send_req(&w.channel.id, "answer by tonight");
    req.respond_by = Some(deadline);
    let m = w
        .iran
        .messages
        .send_message(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.respond_by, Some(deadline));
    w.france
        .messages
        .accept_message(move_req!(AcceptMessageRequest, m.id))
        .await
        .unwrap();

    let expired = eventually("the message to expire", || {
        let mut c = w.iran.clone();
        let id = m.id.clone();
        async move {
            let m = get(&mut c, &id).await;
            (state(&m) == S::Expired).then_some(m)
        }
    })
    .await;
    assert_eq!(
        hop_states(&expired),
        hops(&[("france", H::Cancelled), ("japan", H::Cancelled)]),
        "expiry cancels the hops still PENDING or ACCEPTED"
    );
    let evs = message_events(&mut w.admin, &m.id).await;
    assert_eq!(
        kinds(&evs),
        vec![T::MessageSent, T::MessageAccepted, T::MessageExpired]
    );
    let e = &evs[2];
    assert_eq!(e.actor, "system");
    assert_eq!(e.occur_time, Some(deadline), "occur_time is the deadline");
    assert_eq!(e.hop_index, None);
    let late = micros(e.record_time.as_ref().unwrap()) - micros(&deadline);
    assert!(
        (0..=2_000_000).contains(&late),
        "expired {late} µs after the deadline"
    );
    // Nothing moves an expired message.
    let r = w
        .france
        .messages
        .forward_message(move_req!(ForwardMessageRequest, m.id))
        .await;
    let s = r.expect_err("an expired message does not move");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(
        ["MESSAGE_EXPIRED", "MESSAGE_NOT_IN_TRANSIT"].contains(&reason(&s).as_str()),
        "{s:?}"
    );
}

#[tokio::test]
async fn respond_by_must_lie_ahead_and_occur_time_at_most_a_minute_ahead() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let ch = w.channel.id.clone();

    let mut past = send_req(&ch, "too late");
    past.respond_by = Some(now_plus(-1000));
    assert_err(
        w.iran.messages.send_message(past).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    let mut future = send_req(&ch, "from the future");
    future.occur_time = Some(now_plus(120_000));
    assert_err(
        w.iran.messages.send_message(future).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    let mut bad_nanos = send_req(&ch, "bad timestamp");
    bad_nanos.occur_time = Some(Timestamp {
        seconds: BIARRITZ,
        nanos: -1,
    });
    assert_err(
        w.iran.messages.send_message(bad_nanos).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    // Within the tolerated clock skew.
    let mut skew = send_req(&ch, "slightly ahead");
    skew.occur_time = Some(now_plus(30_000));
    w.iran.messages.send_message(skew).await.unwrap();

    // Back-dated steps are normal, even before the previous step.
    let mut old = send_req(&ch, "G7 note");
    old.occur_time = Some(ts(BIARRITZ, 0));
    let m = w
        .iran
        .messages
        .send_message(old)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.send_time, Some(ts(BIARRITZ, 0)));
    let mut a = move_req!(AcceptMessageRequest, m.id);
    a.occur_time = Some(now_plus(90_000));
    assert_err(
        w.france.messages.accept_message(a.clone()).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    let earlier = ts(BIARRITZ - 86_400, 0);
    a.occur_time = Some(earlier);
    let m1 = w
        .france
        .messages
        .accept_message(a)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m1.hops[0].accept_time, Some(earlier));
    let evs = message_events(&mut w.admin, &m.id).await;
    assert_eq!(evs[0].occur_time, Some(ts(BIARRITZ, 0)));
    assert_eq!(evs[1].occur_time, Some(earlier));
    assert!(
        micros(evs[1].record_time.as_ref().unwrap()) > micros(&now_plus(-60_000)),
        "record_time is the server's own clock"
    );
    assert!(evs[0].sequence < evs[1].sequence, "order is by sequence");
}

#[tokio::test]
async fn replies_may_use_another_channel_between_the_same_two_parties_only() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let open = |parties: [&str; 2], mediators: &[&str]| pb::CreateChannelRequest {
        display_name: "another".into(),
        parties: parties.iter().map(|p| p.to_string()).collect(),
        mediators: mediators.iter().map(|p| p.to_string()).collect(),
        request_id: String::new(),
    };
    // The same two parties, the other way round, through Japan only.
    let tokyo = w
        .admin
        .channels
        .create_channel(open(["united-states", "iran"], &["japan"]))
        .await
        .unwrap()
        .into_inner();
    // Washington and someone else.
    let elsewhere = w
        .admin
        .channels
        .create_channel(open(["united-states", "outsider"], &["france"]))
        .await
        .unwrap()
        .into_inner();

    let m = w
        .iran
        .messages
        .send_message(send_req(&w.channel.id, "question"))
        .await
        .unwrap()
        .into_inner();
    // The channel is suspended while the message travels: it goes on.
    w.iran
        .channels
        .suspend_channel(pb::SuspendChannelRequest {
            channel_id: w.channel.id.clone(),
            note: "pause".into(),
            expected_version: 0,
        })
        .await
        .unwrap();
    assert_err(
        w.iran
            .messages
            .send_message(send_req(&w.channel.id, "new"))
            .await,
        Code::FailedPrecondition,
        "CHANNEL_SUSPENDED",
    );
    for c in [&mut w.france, &mut w.japan] {
        c.messages
            .forward_message(move_req!(ForwardMessageRequest, m.id))
            .await
            .unwrap();
    }
    // Closed, too: in-flight messages still go on, nothing new starts.
    w.us.channels
        .close_channel(pb::CloseChannelRequest {
            channel_id: w.channel.id.clone(),
            note: "done here".into(),
            expected_version: 0,
        })
        .await
        .unwrap();
    w.us.messages
        .acknowledge_message(move_req!(AcknowledgeMessageRequest, m.id))
        .await
        .unwrap();
    let mut same = send_req("", "reply on the closed channel");
    same.in_reply_to = m.id.clone();
    assert_err(
        w.us.messages.send_message(same).await,
        Code::FailedPrecondition,
        "CHANNEL_CLOSED",
    );
    let mut wrong = send_req(&elsewhere.id, "reply elsewhere");
    wrong.in_reply_to = m.id.clone();
    assert_err(
        w.us.messages.send_message(wrong).await,
        Code::InvalidArgument,
        "REPLY_CHANNEL_MISMATCH",
    );
    let mut right = send_req(&tokyo.id, "reply via Tokyo");
    right.in_reply_to = m.id.clone();
    let reply =
        w.us.messages
            .send_message(right)
            .await
            .unwrap()
            .into_inner();
    assert_eq!(reply.channel_id, tokyo.id);
    assert_eq!(reply.recipient, "iran");
    assert_eq!(reply.thread_id, m.id);
    assert_eq!(hop_states(&reply), hops(&[("japan", H::Pending)]));
    assert_eq!(state(&get(&mut w.iran, &m.id).await), S::Answered);
    // France mediates the original but not the reply's channel.
    assert_err(
        w.france
            .messages
            .get_message(pb::GetMessageRequest {
                message_id: reply.id.clone(),
            })
            .await,
        Code::NotFound,
        "MESSAGE_NOT_FOUND",
    );
}
