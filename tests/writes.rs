//! Write guarantees: idempotent retries with `request_id`, and optimistic
//! concurrency with `expected_version`.
mod common;
use backchannel::pb;
use common::*;
use pb::event::Type as T;
use pb::message::State as S;
use tonic::Code;

fn rid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn event_count(admin: &mut Clients) -> usize {
    all_events(admin, Default::default()).await.len()
}

fn kinds(events: &[pb::Event]) -> Vec<T> {
    events
        .iter()
        .map(|e| T::try_from(e.r#type).unwrap())
        .collect()
}

#[tokio::test]
async fn send_message_retried_with_the_same_request_id_creates_nothing_new() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let key = rid();
    let mut req = send_req(&w.channel.id, "once only");
    req.body = "retry me".into();
    req.labels.insert("topic".into(), "sanctions".into());
    req.labels.insert("round".into(), "1".into());
    req.request_id = key.clone();
    let first = w
        .iran
        .messages
        .send_message(req.clone())
        .await
        .unwrap()
        .into_inner();
    let n = event_count(&mut w.admin).await;

    let again = w
        .iran
        .messages
        .send_message(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first, "a retry returns what the first call created");
    assert_eq!(event_count(&mut w.admin).await, n, "no new event");

    // A retry after the message moved on returns its current state.
    w.france
        .messages
        .accept_message(move_req!(AcceptMessageRequest, first.id))
        .await
        .unwrap();
    let n = event_count(&mut w.admin).await;
    let current = w
        .iran
        .messages
        .send_message(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.id, first.id);
    assert_eq!(current.state, S::InTransit as i32);
    assert_eq!(current.version, 2);
    assert_eq!(event_count(&mut w.admin).await, n);

    // Same id, different request.
    let mut other = req.clone();
    other.subject = "something else".into();
    assert_err(
        w.iran.messages.send_message(other).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
    );
    let mut other = req.clone();
    other.labels.insert("round".into(), "2".into());
    assert_err(
        w.iran.messages.send_message(other).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
    );
    assert_eq!(event_count(&mut w.admin).await, n);

    // The id is scoped to the caller: Washington's use of it is its own.
    let mut theirs = send_req(&w.channel.id, "once only");
    theirs.request_id = key.clone();
    let us_msg =
        w.us.messages
            .send_message(theirs)
            .await
            .unwrap()
            .into_inner();
    assert_ne!(us_msg.id, first.id);
    assert_eq!(event_count(&mut w.admin).await, n + 1);

    // A request_id must be a UUID.
    let mut bad = send_req(&w.channel.id, "bad key");
    bad.request_id = "not-a-uuid".into();
    assert_err(
        w.iran.messages.send_message(bad).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );

    // A retry still answers after the channel stopped taking new messages.
    w.admin
        .channels
        .suspend_channel(pb::SuspendChannelRequest {
            channel_id: w.channel.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let n = event_count(&mut w.admin).await;
    let retried = w
        .iran
        .messages
        .send_message(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.id, first.id);
    assert_err(
        w.iran
            .messages
            .send_message(send_req(&w.channel.id, "new"))
            .await,
        Code::FailedPrecondition,
        "CHANNEL_SUSPENDED",
    );
    assert_eq!(event_count(&mut w.admin).await, n);
}

#[tokio::test]
async fn a_retried_reply_records_neither_a_second_reply_nor_a_second_answer() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let m = w
        .iran
        .messages
        .send_message(send_req(&w.channel.id, "question"))
        .await
        .unwrap()
        .into_inner();
    for c in [&mut w.france, &mut w.japan] {
        c.messages
            .forward_message(move_req!(ForwardMessageRequest, m.id))
            .await
            .unwrap();
    }
    let mut reply = send_req("", "answer");
    reply.in_reply_to = m.id.clone();
    reply.request_id = rid();
    let r1 =
        w.us.messages
            .send_message(reply.clone())
            .await
            .unwrap()
            .into_inner();
    let n = event_count(&mut w.admin).await;
    let r2 =
        w.us.messages
            .send_message(reply)
            .await
            .unwrap()
            .into_inner();
    assert_eq!(r2.id, r1.id);
    assert_eq!(event_count(&mut w.admin).await, n);
    let evs = all_events(
        &mut w.admin,
        pb::ListEventsRequest {
            message_id: m.id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        kinds(&evs)
            .iter()
            .filter(|k| **k == T::MessageAnswered)
            .count(),
        1
    );
}

#[tokio::test]
async fn create_channel_retried_with_the_same_request_id_returns_the_same_channel() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let req = pb::CreateChannelRequest {
        display_name: "Tokyo channel".into(),
        parties: vec!["iran".into(), "united-states".into()],
        mediators: vec!["japan".into()],
        request_id: rid(),
    };
    let c1 = w
        .iran
        .channels
        .create_channel(req.clone())
        .await
        .unwrap()
        .into_inner();
    let n = event_count(&mut w.admin).await;
    let c2 = w
        .iran
        .channels
        .create_channel(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c2, c1);
    assert_eq!(event_count(&mut w.admin).await, n);
    let mut other = req.clone();
    other.mediators = vec!["france".into()];
    assert_err(
        w.iran.channels.create_channel(other).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
    );
    // Another caller with the same id opens its own channel.
    let c3 = w
        .admin
        .channels
        .create_channel(req)
        .await
        .unwrap()
        .into_inner();
    assert_ne!(c3.id, c1.id);
    assert_eq!(event_count(&mut w.admin).await, n + 1);
}

#[tokio::test]
async fn a_move_retried_after_success_returns_the_current_state_and_records_nothing() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let m = w
        .iran
        .messages
        .send_message(send_req(&w.channel.id, "carry me"))
        .await
        .unwrap()
        .into_inner();
    let key = rid();
    let mut accept = move_req!(AcceptMessageRequest, m.id);
    accept.request_id = key.clone();
    accept.expected_version = 1;
    let a1 = w
        .france
        .messages
        .accept_message(accept.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a1.version, 2);
    let n = event_count(&mut w.admin).await;
    // The retry is answered before the version check: no ABORTED, no
    // HOP_ALREADY_ACCEPTED.
    let a2 = w
        .france
        .messages
        .accept_message(accept.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a2, a1);
    assert_eq!(event_count(&mut w.admin).await, n);

    // The same key on another method is another request.
    let mut fwd = move_req!(ForwardMessageRequest, m.id);
    fwd.request_id = key.clone();
    let f = w
        .france
        .messages
        .forward_message(fwd)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.version, 3);
    let n = event_count(&mut w.admin).await;
    assert_eq!(n, 4, "opened, sent, accepted, forwarded");

    // Retrying the accept now returns the message as it is now.
    let a3 = w
        .france
        .messages
        .accept_message(accept.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a3, f);
    assert_eq!(event_count(&mut w.admin).await, n);

    // Same key with a different request: another note, or another message.
    let mut other = accept.clone();
    other.note = "different".into();
    assert_err(
        w.france.messages.accept_message(other).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
    );
    let m2 = w
        .iran
        .messages
        .send_message(send_req(&w.channel.id, "another"))
        .await
        .unwrap()
        .into_inner();
    let mut other = move_req!(AcceptMessageRequest, m2.id);
    other.request_id = key.clone();
    other.expected_version = 1;
    assert_err(
        w.france.messages.accept_message(other).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
    );
    assert_eq!(event_count(&mut w.admin).await, n + 1);
}

#[tokio::test]
async fn expected_version_guards_message_moves() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let m = w
        .iran
        .messages
        .send_message(send_req(&w.channel.id, "versioned"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.version, 1);
    let mut a = move_req!(AcceptMessageRequest, m.id);
    a.expected_version = 2;
    assert_err(
        w.france.messages.accept_message(a.clone()).await,
        Code::Aborted,
        "VERSION_MISMATCH",
    );
    // ABORTED comes before FAILED_PRECONDITION.
    let mut early = move_req!(AcceptMessageRequest, m.id);
    early.expected_version = 7;
    assert_err(
        w.japan.messages.accept_message(early).await,
        Code::Aborted,
        "VERSION_MISMATCH",
    );
    a.expected_version = 1;
    let m1 = w
        .france
        .messages
        .accept_message(a)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m1.version, 2);
    let mut f = move_req!(ForwardMessageRequest, m.id);
    f.expected_version = 1;
    assert_err(
        w.france.messages.forward_message(f.clone()).await,
        Code::Aborted,
        "VERSION_MISMATCH",
    );
    f.expected_version = 2;
    let m2 = w
        .france
        .messages
        .forward_message(f)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m2.version, 3);
    // 0 is unchecked.
    let m3 = w
        .japan
        .messages
        .forward_message(move_req!(ForwardMessageRequest, m.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m3.version, 4);
    let evs = all_events(&mut w.admin, Default::default()).await;
    assert_eq!(evs.len(), 5, "refused moves record nothing");
}

#[tokio::test]
async fn expected_version_guards_channel_changes() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let id = w.channel.id.clone();
    assert_eq!(w.channel.version, 1);
    let req = |v: u64| pb::SuspendChannelRequest {
        channel_id: id.clone(),
        note: "pause".into(),
        expected_version: v,
    };
    assert_err(
        w.iran.channels.suspend_channel(req(2)).await,
        Code::Aborted,
        "VERSION_MISMATCH",
    );
    let c = w
        .iran
        .channels
        .suspend_channel(req(1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.state, pb::channel::State::Suspended as i32);
    assert_eq!(c.version, 2);
    // A stale version is ABORTED even where the state would also refuse.
    assert_err(
        w.iran.channels.suspend_channel(req(1)).await,
        Code::Aborted,
        "VERSION_MISMATCH",
    );
    assert_err(
        w.iran.channels.suspend_channel(req(2)).await,
        Code::FailedPrecondition,
        "CHANNEL_NOT_OPEN",
    );
    let resume = |v: u64| pb::ResumeChannelRequest {
        channel_id: id.clone(),
        note: String::new(),
        expected_version: v,
    };
    assert_err(
        w.us.channels.resume_channel(resume(1)).await,
        Code::Aborted,
        "VERSION_MISMATCH",
    );
    let c =
        w.us.channels
            .resume_channel(resume(2))
            .await
            .unwrap()
            .into_inner();
    assert_eq!(c.state, pb::channel::State::Open as i32);
    assert_eq!(c.version, 3);
    assert_err(
        w.us.channels.resume_channel(resume(3)).await,
        Code::FailedPrecondition,
        "CHANNEL_NOT_SUSPENDED",
    );
    let close = |v: u64| pb::CloseChannelRequest {
        channel_id: id.clone(),
        note: "done".into(),
        expected_version: v,
    };
    assert_err(
        w.admin.channels.close_channel(close(2)).await,
        Code::Aborted,
        "VERSION_MISMATCH",
    );
    let c = w
        .admin
        .channels
        .close_channel(close(3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.state, pb::channel::State::Closed as i32);
    assert_eq!(c.version, 4);
    assert_err(
        w.admin.channels.close_channel(close(0)).await,
        Code::FailedPrecondition,
        "CHANNEL_ALREADY_CLOSED",
    );
    let evs = all_events(
        &mut w.admin,
        pb::ListEventsRequest {
            channel_id: id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        kinds(&evs),
        vec![
            T::ChannelOpened,
            T::ChannelSuspended,
            T::ChannelResumed,
            T::ChannelClosed
        ]
    );
    let actors: Vec<&str> = evs.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(actors, vec!["admin", "iran", "united-states", "admin"]);
    assert_eq!(evs[1].note, "pause");
}

/// The embedded store keeps its newest idempotency records in memory and
/// moves them, in key order, into a run of their own once enough have
/// gathered (here: every 16), and merges eight runs into one. Retries find each record before, during and after a
/// move, and after a restart; nothing is created twice.
#[tokio::test]
async fn request_ids_are_kept_across_moves_merges_and_restarts() {
    let server = Server::start_with(Options {
        env: vec![("BACKCHANNEL_REQUESTS_MOVE_AT".into(), "16".into())],
        ..Default::default()
    })
    .await;
    let w = world(&server).await;
    // 400 sends, 5 at a time, so that batches and moves interleave and
    // each move makes a run of about 16.
    let reqs: Vec<pb::SendMessageRequest> = (0..400)
        .map(|i| {
            let mut r = send_req(&w.channel.id, &format!("message {i}"));
            r.request_id = rid();
            r
        })
        .collect();
    async fn send_all(
        server: &Server,
        token: &str,
        reqs: &[pb::SendMessageRequest],
    ) -> Vec<String> {
        let mut ids = Vec::new();
        for chunk in reqs.chunks(5) {
            let calls = chunk.iter().map(|r| {
                let r = r.clone();
                async move {
                    let mut c = server.clients(token).await;
                    c.messages.send_message(r).await.map(|m| m.into_inner().id)
                }
            });
            for id in futures_util::future::join_all(calls).await {
                ids.push(id.expect("send"));
            }
        }
        ids
    }
    let token = w.tokens["iran"].clone();
    let first = send_all(&server, &token, &reqs).await;
    let mut admin = server.admin().await;
    let n = event_count(&mut admin).await;
    assert_eq!(
        first.iter().collect::<std::collections::HashSet<_>>().len(),
        400
    );

    let again = send_all(&server, &token, &reqs).await;
    assert_eq!(again, first, "every retry returns the message it created");
    if !backend_is_postgres() {
        // Some twenty runs of sixteen: eight of them are merged into one
        // while the retries run (a step in each batch's commit), so the
        // later retries, and those after the restart, read a merged run.
        eventually("runs of idempotency records merged", || async {
            server
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("runs of idempotency records merged"))
                .then_some(())
        })
        .await;
    }
    assert_eq!(
        event_count(&mut admin).await,
        n,
        "no retry created an event"
    );
    // The same id with another request is still recognised as reused.
    let mut other = reqs[3].clone();
    other.subject = "something else".into();
    let mut iran = server.clients(&token).await;
    assert_err(
        iran.messages.send_message(other.clone()).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
    );

    let server = server.restart().await;
    let after = send_all(&server, &token, &reqs).await;
    assert_eq!(after, first, "after a restart too");
    let mut admin = server.admin().await;
    assert_eq!(event_count(&mut admin).await, n);
    let mut iran = server.clients(&token).await;
    assert_err(
        iran.messages.send_message(other).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
    );
}

/// A store from before idempotency records were kept in runs (schema
/// version 4: one `requests` index) keeps them through the migration.
#[tokio::test]
async fn request_ids_of_a_store_from_before_runs_are_kept_by_the_migration() {
    if backend_is_postgres() {
        eprintln!("runs migration: skipped on the PostgreSQL backend (embedded store only)");
        return;
    }
    let mut server = Server::start().await;
    let w = world(&server).await;
    let token = w.tokens["iran"].clone();
    let reqs: Vec<pb::SendMessageRequest> = (0..5)
        .map(|i| {
            let mut r = send_req(&w.channel.id, &format!("message {i}"));
            r.request_id = rid();
            r
        })
        .collect();
    let mut iran = server.clients(&token).await;
    let mut first = Vec::new();
    for r in &reqs {
        first.push(
            iran.messages
                .send_message(r.clone())
                .await
                .expect("send")
                .into_inner()
                .id,
        );
    }
    let mut admin = server.admin().await;
    let n = event_count(&mut admin).await;
    assert_eq!(server.stop().await, Some(0));
    {
        let db = rusqlite::Connection::open(server.data_dir.join("backchannel.db")).expect("open");
        db.execute_batch(REQUESTS_BEFORE_RUNS).expect("runs undone");
        db.execute_batch(
            "INSERT INTO requests
                 SELECT caller, method, request_id, fingerprint, resource_id FROM requests_recent;
             DELETE FROM requests_recent;
             DROP TABLE tree_nodes;
             PRAGMA user_version = 4;",
        )
        .expect("back to version 4");
        let held: i64 = db
            .query_row("SELECT count(*) FROM requests", [], |r| r.get(0))
            .expect("count");
        assert_eq!(held, 5);
    }
    let server = server.restart().await;
    let mut iran = server.clients(&token).await;
    for (r, id) in reqs.iter().zip(&first) {
        let again = iran
            .messages
            .send_message(r.clone())
            .await
            .expect("retry")
            .into_inner()
            .id;
        assert_eq!(
            &again, id,
            "a retry after the migration returns the message it created"
        );
    }
    let mut admin = server.admin().await;
    assert_eq!(
        event_count(&mut admin).await,
        n,
        "no retry created an event"
    );
    let mut other = reqs[2].clone();
    other.subject = "something else".into();
    assert_err(
        iran.messages.send_message(other).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
    );
}

/// Sends by `clients`, one each, all at once.
async fn busy(clients: &mut [Clients], channel: &str) -> Vec<Result<(), tonic::Status>> {
    let calls = clients.iter_mut().map(|c| {
        let r = send_req(channel, "meanwhile");
        async move { c.messages.send_message(r).await.map(|_| ()) }
    });
    futures_util::future::join_all(calls).await
}

/// Calls that land in one batch see each other's writes: the same send
/// retried 32 times at once, then the same accept 32 times at once, each
/// create one record and one event, and every call gets the same answer.
/// (The PostgreSQL writer holds a batch's rows until its end and answers
/// its own reads from them. Whether a retry shares a batch with the first
/// call depends on timing; other sends keep the writer busy so that most
/// do. With the writer's own reads of the held messages removed, this
/// failed in one of two runs.)
#[tokio::test]
async fn retries_at_once_in_one_batch_create_one_record_each() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let mut send = send_req(&w.channel.id, "all at once");
    send.request_id = rid();
    // Connected first, so that the calls go out together.
    let mut iran = Vec::new();
    let mut france = Vec::new();
    for _ in 0..32 {
        iran.push(server.clients(&w.tokens["iran"]).await);
        france.push(server.clients(&w.tokens["france"]).await);
    }
    // Other sends keep the writer busy meanwhile, so that the calls queue
    // up and most of them go into one batch with the first.
    let mut others = Vec::new();
    for _ in 0..64 {
        others.push(server.clients(&w.tokens["united-states"]).await);
    }
    let calls = iran.iter_mut().map(|c| {
        let r = send.clone();
        async move { c.messages.send_message(r).await.map(|m| m.into_inner()) }
    });
    let (sent, meanwhile) = tokio::join!(
        futures_util::future::join_all(calls),
        busy(&mut others, &w.channel.id)
    );
    assert!(meanwhile.iter().all(Result::is_ok), "{meanwhile:?}");
    let sent: Vec<pb::Message> = sent.into_iter().map(|r| r.expect("send")).collect();
    assert!(
        sent.iter().all(|m| *m == sent[0]),
        "every retry answers the one message: {:?}",
        sent.iter().map(|m| (&m.id, m.version)).collect::<Vec<_>>()
    );

    let mut accept = move_req!(AcceptMessageRequest, sent[0].id);
    accept.request_id = rid();
    accept.expected_version = 1;
    let calls = france.iter_mut().map(|c| {
        let r = accept.clone();
        async move { c.messages.accept_message(r).await.map(|m| m.into_inner()) }
    });
    let (accepted, meanwhile) = tokio::join!(
        futures_util::future::join_all(calls),
        busy(&mut others, &w.channel.id)
    );
    assert!(meanwhile.iter().all(Result::is_ok), "{meanwhile:?}");
    let accepted: Vec<pb::Message> = accepted.into_iter().map(|r| r.expect("accept")).collect();
    assert!(
        accepted.iter().all(|m| *m == accepted[0]),
        "every retry answers the message as accepted: versions {:?}",
        accepted.iter().map(|m| m.version).collect::<Vec<_>>()
    );
    assert_eq!(accepted[0].version, 2);

    let events = all_events(
        &mut w.admin,
        pb::ListEventsRequest {
            message_id: sent[0].id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(kinds(&events), [T::MessageSent, T::MessageAccepted]);
    let stored = w
        .admin
        .messages
        .get_message(pb::GetMessageRequest {
            message_id: sent[0].id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        stored, accepted[0],
        "the message as stored is the one answered"
    );
}
