//! `ErrorInfo.metadata` carries the facts a client acts on (DESIGN §4), and
//! `ListEvents` hands over to `Subscribe` at its `head_sequence`.

mod common;

use std::collections::HashMap;

use backchannel::pb;
use common::*;
use tonic::{Code, Status};
use tonic_types::StatusExt;

fn metadata(r: Result<impl std::fmt::Debug, Status>) -> (Code, String, HashMap<String, String>) {
    let s = r.expect_err("a refusal");
    let info = s.get_details_error_info().expect("an ErrorInfo");
    (s.code(), info.reason, info.metadata)
}

fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test]
async fn refusals_carry_the_state_version_mediator_field_and_head_they_name() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let m = w
        .iran
        .messages
        .send_message(send_req(&w.channel.id, "proposal"))
        .await
        .expect("send")
        .into_inner();

    // Not the current mediator: who is, and where the message stands.
    let got = metadata(
        w.japan
            .messages
            .accept_message(move_req!(AcceptMessageRequest, m.id))
            .await,
    );
    assert_eq!(got.0, Code::FailedPrecondition);
    assert_eq!(got.1, "NOT_CURRENT_MEDIATOR");
    assert_eq!(
        got.2,
        meta(&[
            ("current_mediator", "france"),
            ("current_state", "SUBMITTED"),
            ("current_version", "1")
        ])
    );

    // A stale version: the current one.
    let mut req = move_req!(AcceptMessageRequest, m.id);
    req.expected_version = 7;
    let got = metadata(w.france.messages.accept_message(req).await);
    assert_eq!((got.0, got.1.as_str()), (Code::Aborted, "VERSION_MISMATCH"));
    assert_eq!(got.2, meta(&[("current_version", "1")]));

    // Not in a state that allows the move.
    let got = metadata(
        w.us.messages
            .acknowledge_message(move_req!(AcknowledgeMessageRequest, m.id))
            .await,
    );
    assert_eq!(
        (got.0, got.1.as_str()),
        (Code::FailedPrecondition, "MESSAGE_NOT_DELIVERED")
    );
    assert_eq!(
        got.2,
        meta(&[("current_state", "SUBMITTED"), ("current_version", "1")])
    );

    // A channel's state refusals.
    let suspend = || pb::SuspendChannelRequest {
        channel_id: w.channel.id.clone(),
        ..Default::default()
    };
    w.admin
        .channels
        .suspend_channel(suspend())
        .await
        .expect("suspend");
    let got = metadata(w.admin.channels.suspend_channel(suspend()).await);
    assert_eq!(got.1, "CHANNEL_NOT_OPEN");
    assert_eq!(
        got.2,
        meta(&[("current_state", "SUSPENDED"), ("current_version", "2")])
    );
    let got = metadata(
        w.iran
            .messages
            .send_message(send_req(&w.channel.id, "more"))
            .await,
    );
    assert_eq!(got.1, "CHANNEL_SUSPENDED");
    assert_eq!(
        got.2,
        meta(&[("current_state", "SUSPENDED"), ("current_version", "2")])
    );

    // A bad field: which one.
    let got = metadata(
        w.iran
            .messages
            .get_message(pb::GetMessageRequest {
                message_id: "12345".into(),
            })
            .await,
    );
    assert_eq!(
        (got.0, got.1.as_str()),
        (Code::InvalidArgument, "INVALID_FIELD")
    );
    assert_eq!(got.2, meta(&[("field", "message_id")]));

    // Beyond the head: where the head is.
    let mut sub = pb::SubscribeRequest {
        start_after: Some(1_000),
        ..Default::default()
    };
    sub.heartbeat_seconds = 1;
    let got = metadata(w.iran.messages.subscribe(sub).await.map(|_| ()));
    assert_eq!(
        (got.0, got.1.as_str()),
        (Code::OutOfRange, "START_AFTER_BEYOND_HEAD")
    );
    // channel opened, message sent, channel suspended
    assert_eq!(got.2, meta(&[("head_sequence", "3")]));
}

#[tokio::test]
async fn a_listing_of_events_ends_at_the_head_its_first_page_was_read_at() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    for i in 0..3 {
        w.iran
            .messages
            .send_message(send_req(&w.channel.id, &format!("m{i}")))
            .await
            .expect("send");
    }
    let list = |page_token: String| pb::ListEventsRequest {
        channel_id: w.channel.id.clone(),
        page_size: 2,
        page_token,
        ..Default::default()
    };
    let first = w
        .iran
        .messages
        .list_events(list(String::new()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(first.head_sequence, 4, "one channel opened, three sent");
    assert_eq!(first.events.len(), 2);
    // Written between the pages: not in this listing, but after its head.
    for i in 3..5 {
        w.iran
            .messages
            .send_message(send_req(&w.channel.id, &format!("m{i}")))
            .await
            .expect("send");
    }
    let second = w
        .iran
        .messages
        .list_events(list(first.next_page_token))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        second.head_sequence, 4,
        "every page returns the first page's head"
    );
    let seqs: Vec<u64> = second.events.iter().map(|e| e.sequence).collect();
    assert_eq!(seqs, [3, 4]);
    assert!(
        second.next_page_token.is_empty(),
        "the listing ends at its head"
    );

    // Subscribing after the head gives exactly the rest.
    let mut stream = w
        .iran
        .messages
        .subscribe(pb::SubscribeRequest {
            start_after: Some(second.head_sequence),
            channel_ids: vec![w.channel.id.clone()],
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut rest = Vec::new();
    while rest.len() < 2 {
        let item = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("item");
        if let Some(pb::subscribe_response::Kind::Event(e)) = item.kind {
            rest.push(e.sequence);
        }
    }
    assert_eq!(rest, [5, 6]);

    // A fresh listing reads at the new head.
    let all = w
        .admin
        .messages
        .list_events(pb::ListEventsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.head_sequence, 6);
    assert_eq!(all.events.len(), 6);
}
