//! Several `backchannel` processes on one PostgreSQL database: one record,
//! one global order, and recovery from the database going away. These
//! always run on PostgreSQL, whatever the suite's backend.

mod common;

use std::time::{Duration, Instant};

use backchannel::pb;
use common::stream::*;
use common::*;
use tonic::Code;

/// Waits until `token` is accepted by the server behind `c` (tokens issued
/// through another replica arrive by notification).
async fn wait_for_token(c: &mut Clients) {
    eventually("the token to reach every replica", || {
        let mut c = c.clone();
        async move {
            c.parties
                .who_am_i(pb::WhoAmIRequest {})
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_one_gap_free_order_seen_identically_by_every_subscriber() {
    if !postgres_available() {
        return;
    }
    let replicas = Server::start_postgres_replicas(3).await;
    let w = world(&replicas[0]).await;
    let tokyo = open_channel(&mut w.admin.clone(), "united-states", "iran", &["japan"]).await;

    // Clients of every party on every replica.
    let mut on = Vec::new();
    for r in &replicas {
        let mut per = std::collections::HashMap::new();
        for p in ["iran", "united-states", "france", "japan"] {
            let mut c = r.clients(&w.tokens[p]).await;
            wait_for_token(&mut c).await;
            per.insert(p, c);
        }
        per.insert("admin", r.admin().await);
        on.push(per);
    }

    // Subscribers on all three: the admin from the start, and france live.
    let mut subs = Vec::new();
    for per in &on {
        let mut admin = per["admin"].clone();
        let mut s = subscribe(&mut admin, from(Some(0))).await;
        let (replayed, _) = caught_up(&mut s).await;
        subs.push((None, s, replayed, 0));
        let mut fr = per["france"].clone();
        let req = from(None);
        let mut s = subscribe(&mut fr, req.clone()).await;
        let (replayed, mark) = caught_up(&mut s).await;
        let start = starting_point(&req, &replayed, mark);
        subs.push((Some("france"), s, replayed, start));
    }

    // Writers on all three replicas at once.
    let writers: Vec<_> = on
        .iter()
        .enumerate()
        .map(|(k, per)| {
            let (mut iran, mut us, fr, jp) = (
                per["iran"].clone(),
                per["united-states"].clone(),
                per["france"].clone(),
                per["japan"].clone(),
            );
            let (elysee, tokyo) = (w.channel.id.clone(), tokyo.id.clone());
            tokio::spawn(async move {
                for i in 0..8 {
                    let subject = format!("r{k}-{i}");
                    if i % 2 == 0 {
                        relay(
                            &mut iran,
                            &mut [fr.clone(), jp.clone()],
                            &mut us,
                            &elysee,
                            &subject,
                        )
                        .await;
                    } else {
                        relay(&mut us, &mut [jp.clone()], &mut iran, &tokyo, &subject).await;
                    }
                }
            })
        })
        .collect();
    for wr in writers {
        wr.await.expect("writer");
    }

    let mut admin0 = on[0]["admin"].clone();
    let all = all_events(&mut admin0, Default::default()).await;
    let head = all.last().expect("events").sequence;
    assert_eq!(seqs(&all), (1..=head).collect::<Vec<_>>(), "gap-free log");
    for per in &on {
        let mut admin = per["admin"].clone();
        assert_eq!(
            all_events(&mut admin, Default::default()).await,
            all,
            "ListEvents agrees on every replica"
        );
    }
    let mut seen_by_admins = Vec::new();
    for (who, mut s, mut got, start) in subs {
        got.extend(read_through(&mut s, head).await);
        let want: Vec<u64> = all
            .iter()
            .filter(|e| e.sequence > start && visible(e, who))
            .map(|e| e.sequence)
            .collect();
        assert_eq!(seqs(&got), want, "subscriber {who:?}");
        if who.is_none() {
            seen_by_admins.push(got);
        }
    }
    // The admins on the three replicas received the identical sequence.
    assert!(seen_by_admins.iter().all(|s| *s == all));
}

/// Sends with a request id, retrying through outages; returns the message
/// and how many attempts were refused with UNAVAILABLE.
async fn send_surely(c: &mut Clients, channel: &str, subject: &str) -> (pb::Message, usize) {
    let req = pb::SendMessageRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        ..send_req(channel, subject)
    };
    let start = Instant::now();
    let mut refused = 0;
    loop {
        match c.messages.send_message(req.clone()).await {
            Ok(m) => return (m.into_inner(), refused),
            Err(s) if s.code() == Code::Unavailable => {
                refused += 1;
                assert!(start.elapsed() < DEADLINE, "still unavailable: {s:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("send {subject}: {s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_database_connections_loses_nothing_duplicates_nothing_and_needs_no_restart() {
    if !postgres_available() {
        return;
    }
    let replicas = Server::start_postgres_replicas(2).await;
    let db_name = replicas[0].database().expect("postgres").name.clone();
    let w = world(&replicas[0]).await;
    let mut iran_b = replicas[1].clients(&w.tokens["iran"]).await;
    wait_for_token(&mut iran_b).await;

    // A subscriber that reconnects from its last position whenever its
    // stream ends with UNAVAILABLE.
    let subscriber = {
        let admin = replicas[1].admin().await;
        tokio::spawn(async move {
            let mut admin = admin;
            let mut got: Vec<pb::Event> = Vec::new();
            let mut position = 0;
            let mut reconnects = 0;
            loop {
                let s = admin.messages.subscribe(from(Some(position))).await;
                let mut s = match s {
                    Ok(s) => s.into_inner(),
                    Err(e) if e.code() == Code::Unavailable => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(e) => panic!("subscribe: {e:?}"),
                };
                loop {
                    match next(&mut s).await {
                        Ok(Item::Event(e)) => {
                            position = e.sequence;
                            let done = e.r#type == pb::event::Type::ChannelClosed as i32;
                            got.push(*e);
                            if done {
                                return (got, reconnects);
                            }
                        }
                        Ok(Item::Heartbeat(h)) => position = position.max(h),
                        Err(e) if e.code() == Code::Unavailable => {
                            reconnects += 1;
                            break;
                        }
                        Err(e) => panic!("stream: {e:?}"),
                    }
                }
            }
        })
    };

    // Writers through both replicas, while every database connection of
    // the servers is killed again and again.
    let writers: Vec<_> = (0..4)
        .map(|k| {
            let mut c = if k % 2 == 0 {
                w.iran.clone()
            } else {
                iran_b.clone()
            };
            let ch = w.channel.id.clone();
            tokio::spawn(async move {
                let (mut acked, mut refused) = (Vec::new(), 0);
                for i in 0..30 {
                    let (m, r) = send_surely(&mut c, &ch, &format!("w{k}-{i}")).await;
                    acked.push(m.id);
                    refused += r;
                }
                (acked, refused)
            })
        })
        .collect();
    let mut killed = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let n = db_name.clone();
        killed += with_admin_db(move |c| {
            c.query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&n],
            )
            .expect("terminate")
            .len()
        });
    }
    let (mut acked, mut refused) = (Vec::new(), 0);
    for wr in writers {
        let (a, r) = wr.await.expect("writer");
        acked.extend(a);
        refused += r;
    }
    assert!(killed > 0, "the fault was injected");
    assert!(refused > 0, "some writes met the outage and were retried");

    // The service recovered by itself: a channel change goes through.
    let mut admin = replicas[0].admin().await;
    eventually("the service to recover", || {
        let mut admin = admin.clone();
        let id = w.channel.id.clone();
        async move {
            admin
                .channels
                .close_channel(pb::CloseChannelRequest {
                    channel_id: id,
                    ..Default::default()
                })
                .await
                .ok()
        }
    })
    .await;

    let all = all_events(&mut admin, Default::default()).await;
    let head = all.last().expect("events").sequence;
    assert_eq!(seqs(&all), (1..=head).collect::<Vec<_>>(), "gap-free log");
    let sent: Vec<&pb::Event> = all
        .iter()
        .filter(|e| e.r#type == pb::event::Type::MessageSent as i32)
        .collect();
    let mut sent_ids: Vec<&str> = sent.iter().map(|e| e.message_id.as_str()).collect();
    sent_ids.sort();
    let mut acked_ids: Vec<&str> = acked.iter().map(String::as_str).collect();
    acked_ids.sort();
    assert_eq!(
        sent_ids, acked_ids,
        "every acknowledged send once, nothing else"
    );
    let mut subjects: Vec<String> = sent
        .iter()
        .map(|e| match &e.subject {
            Some(pb::event::Subject::Message(m)) => m.subject.clone(),
            _ => String::new(),
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), 120, "no subject recorded twice");

    let (got, reconnects) = tokio::time::timeout(DEADLINE, subscriber)
        .await
        .expect("subscriber finished")
        .expect("subscriber task");
    eprintln!(
        "killed {killed} connections; {refused} sends refused and retried; \
         subscriber reconnected {reconnects} times"
    );
    assert_eq!(
        seqs(&got),
        (1..=head).collect::<Vec<_>>(),
        "subscriber saw no gap"
    );
}

/// The transaction id that last locked or changed the `log_head` row, and
/// how many transactions the database has committed.
fn log_lock_and_commits(url: &str, db: &str) -> (String, i64) {
    let db = db.to_owned();
    let xmax = backchannel_testkit::on_server(url, |c| {
        c.query_one("SELECT xmax::text FROM log_head", &[])
            .map(|r| r.get::<_, String>(0))
    })
    .expect("read log_head");
    let commits = with_admin_db(move |c| {
        c.query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
            &[&db],
        )
        .expect("read pg_stat_database")
        .get::<_, i64>(0)
    });
    (xmax, commits)
}

/// Every replica orders its appends by locking the one `log_head` row. An
/// idle replica must not take that lock: not to look for messages past
/// their deadline when none is due, and not for its health probe. (Each
/// replica used to take it on every expiry tick, twice a second, and on
/// every probe, holding up the others' writes for nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_never_takes_the_global_log_lock() {
    if !postgres_available() {
        return;
    }
    let s = Server::start_postgres_with(Options {
        args: vec!["--expiry-interval-ms".into(), "20".into()],
        ..Options::default()
    })
    .await;
    let db = s.database().expect("a database");
    let (url, name) = (db.url.clone(), db.name.clone());
    let (lock0, commits0) = log_lock_and_commits(&url, &name);
    // Fifty checks' worth of transactions: at 20 ms a tick, every check
    // of a second and more.
    eventually("the server to run its checks", || {
        let (url, name) = (url.clone(), name.clone());
        async move {
            let (_, commits) =
                tokio::task::spawn_blocking(move || log_lock_and_commits(&url, &name))
                    .await
                    .expect("read");
            (commits >= commits0 + 50).then_some(())
        }
    })
    .await;
    let (lock1, _) = log_lock_and_commits(&url, &name);
    assert_eq!(lock1, lock0, "an idle replica locked log_head");
}

/// The connections to `db` that wait on LISTEN.
fn listening(db: &str) -> i64 {
    let db = db.to_owned();
    with_admin_db(move |c| {
        c.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%'",
            &[&db],
        )
        .expect("read pg_stat_activity")
        .get::<_, i64>(0)
    })
}

/// A store's change notifications end when nobody follows them any more:
/// at shutdown the server drops its tailer, and the LISTEN connection must
/// close with it (it used to stay open until the process exited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notification_connection_closes_when_nobody_follows_it() {
    if !postgres_available() {
        return;
    }
    let db = TestDb::create();
    let (store, _) = backchannel::store::Store::open_postgres(
        &db.url,
        Box::new(|_| {}),
        backchannel::clock::Clock::system(),
    )
    .await
    .expect("open the store");
    let changes = store.watch().expect("a shared log is watched");
    let name = db.name.clone();
    eventually("the LISTEN connection", || {
        let name = name.clone();
        async move {
            let n = tokio::task::spawn_blocking(move || listening(&name))
                .await
                .expect("read");
            (n == 1).then_some(())
        }
    })
    .await;
    drop(changes);
    eventually("the LISTEN connection to close", || {
        let name = name.clone();
        async move {
            let n = tokio::task::spawn_blocking(move || listening(&name))
                .await
                .expect("read");
            (n == 0).then_some(())
        }
    })
    .await;
    store.close().await;
}
