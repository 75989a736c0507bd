//! Crashes: the server is killed with SIGKILL at random moments while
//! several clients write with request ids and a subscriber follows the log.
//! After each restart on the same store, nothing acknowledged is lost, a
//! write whose outcome was unknown takes effect exactly once when retried
//! with its request id, the log has no gap and no duplicate, and the
//! subscriber, resuming from the last sequence it saw, receives every event
//! exactly once, in order. On the embedded store the kills also land while
//! the idempotency records move into runs and the runs are merged.
//!
//! The kill moments and the writers' choices come from a seeded generator;
//! the seed is printed, and `CRASH_SEED=<seed>` repeats those choices (the
//! exact interleaving with the server still varies from run to run).
mod common;

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backchannel::pb;
use backchannel::pb::subscribe_response::Kind;
use common::*;
use pb::event::Type as T;
use tokio::sync::watch;
use tokio::time::timeout;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Rounds that end in a SIGKILL; one more round then ends cleanly, so the
/// last retries and the subscriber's catching up are checked too.
const KILLS: usize = 5;

/// Clients writing at once: each sends its own messages and moves them
/// along their route, one write at a time. Half send iran → united-states,
/// half the other way.
const WRITERS: usize = 4;

/// The kill comes this many milliseconds after the writers start, drawn
/// uniformly: long enough for a few hundred writes, short enough that the
/// test stays well under a minute per backend.
const KILL_AFTER_MS: Range<u64> = 100..1200;

/// SplitMix64: a small seeded generator, enough to place kills and choose
/// moves reproducibly without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn within(&mut self, r: Range<u64>) -> u64 {
        r.start + self.below(r.end - r.start)
    }
}

/// `CRASH_SEED` if set, else a fresh random seed.
fn seed() -> u64 {
    match std::env::var("CRASH_SEED") {
        Ok(s) => s.parse().expect("CRASH_SEED must be a u64"),
        Err(_) => uuid::Uuid::new_v4().as_u64_pair().0,
    }
}

/// The call of one write, exactly as sent: a retry sends it again.
#[derive(Clone, Debug)]
enum Call {
    Send(pb::SendMessageRequest),
    Accept(pb::AcceptMessageRequest),
    Forward(pb::ForwardMessageRequest),
}

/// One write a client made.
#[derive(Clone, Debug)]
struct Write {
    /// The party calling.
    party: &'static str,
    call: Call,
    /// The subject of the message it writes (unique to that message).
    subject: String,
    /// The message's version once it is done: with the subject, it names
    /// the one event the write records.
    version: u64,
    /// That event's type and hop.
    event: (T, Option<i32>),
}

/// The event a write records: (subject, version) of the message after it.
type Key = (String, u64);

impl Write {
    fn key(&self) -> Key {
        (self.subject.clone(), self.version)
    }
}

/// A write and the reply that confirmed it.
#[derive(Debug)]
struct Done {
    write: Write,
    /// The message as the reply showed it.
    message: pb::Message,
    /// Confirmed by a retry after a restart, not by its first call.
    retried: bool,
}

/// Sends `call` as `client`.
async fn perform(client: &mut Clients, call: &Call) -> Result<pb::Message, Status> {
    let m = &mut client.messages;
    match call {
        Call::Send(r) => m.send_message(r.clone()).await,
        Call::Accept(r) => m.accept_message(r.clone()).await,
        Call::Forward(r) => m.forward_message(r.clone()).await,
    }
    .map(|r| r.into_inner())
}

/// What a client sees of a call in flight when the server dies: it cannot
/// tell whether the write committed.
fn outcome_unknown(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled)
}

/// The message a writer is moving along its route.
struct Moving {
    id: String,
    subject: String,
    version: u64,
    /// Moves made, and moves planned (0 to 3: accept, forward, deliver).
    made: usize,
    planned: usize,
}

/// A client that sends messages and moves some of them, one write at a
/// time, and remembers every write that was confirmed.
struct Writer {
    n: usize,
    /// Sender, first mediator, second mediator.
    route: [&'static str; 3],
    rng: Rng,
    sent: usize,
    moving: Option<Moving>,
    /// The write in flight when the server was killed.
    in_doubt: Option<Write>,
    done: Vec<Done>,
}

impl Writer {
    fn new(n: usize, rng: Rng) -> Writer {
        let route = if n.is_multiple_of(2) {
            ["iran", "france", "japan"]
        } else {
            ["united-states", "japan", "france"]
        };
        Writer {
            n,
            route,
            rng,
            sent: 0,
            moving: None,
            in_doubt: None,
            done: Vec::new(),
        }
    }

    /// The next write: a move of the current message, or a new message.
    fn next_write(&mut self, channel_id: &str) -> Write {
        let request_id = uuid::Uuid::new_v4().to_string();
        let Some(m) = &self.moving else {
            let subject = format!("writer {} message {}", self.n, self.sent);
            self.sent += 1;
            let mut req = send_req(channel_id, &subject);
            req.body = format!("body of {subject}");
            req.request_id = request_id;
            return Write {
                party: self.route[0],
                call: Call::Send(req),
                subject,
                version: 1,
                event: (T::MessageSent, None),
            };
        };
        // Half the moves also guard against lost updates: a retry must
        // find its request id before the (by then stale) version.
        let expected_version = if self.rng.below(2) == 0 { m.version } else { 0 };
        let message_id = m.id.clone();
        let note = format!("move {}", m.made);
        let (party, call, event) = match m.made {
            0 => (
                self.route[1],
                Call::Accept(pb::AcceptMessageRequest {
                    message_id,
                    note,
                    expected_version,
                    request_id,
                    ..Default::default()
                }),
                (T::MessageAccepted, Some(0)),
            ),
            made => (
                self.route[made],
                Call::Forward(pb::ForwardMessageRequest {
                    message_id,
                    note,
                    expected_version,
                    request_id,
                    ..Default::default()
                }),
                if made == 1 {
                    (T::MessageForwarded, Some(0))
                } else {
                    (T::MessageDelivered, Some(1))
                },
            ),
        };
        Write {
            party,
            call,
            subject: m.subject.clone(),
            version: m.version + 1,
            event,
        }
    }

    /// Records a confirmed write and moves on to the next one.
    fn confirm(&mut self, write: Write, message: pb::Message, retried: bool) {
        assert_eq!(
            (message.subject.as_str(), message.version),
            (write.subject.as_str(), write.version),
            "the reply to {write:?}"
        );
        if matches!(write.call, Call::Send(_)) {
            self.moving = Some(Moving {
                id: message.id.clone(),
                subject: write.subject.clone(),
                version: 1,
                made: 0,
                planned: self.rng.below(4) as usize,
            });
        } else if let Some(m) = &mut self.moving {
            m.made += 1;
            m.version = message.version;
        }
        if self.moving.as_ref().is_some_and(|m| m.made == m.planned) {
            self.moving = None;
        }
        self.done.push(Done {
            write,
            message,
            retried,
        });
    }

    /// Writes until `stop` is set, or until a call fails because the server
    /// was killed; that call's write is then in doubt.
    async fn write(
        mut self,
        conn: Channel,
        tokens: Arc<HashMap<String, String>>,
        channel_id: String,
        stop: Arc<AtomicBool>,
        killed: Arc<AtomicBool>,
    ) -> Writer {
        let mut clients = as_parties(&conn, &tokens);
        while !stop.load(Ordering::SeqCst) {
            let w = self.next_write(&channel_id);
            let client = clients.get_mut(w.party).expect("a client for every party");
            match perform(client, &w.call).await {
                Ok(m) => self.confirm(w, m, false),
                Err(s) if killed.load(Ordering::SeqCst) && outcome_unknown(s.code()) => {
                    self.in_doubt = Some(w);
                    break;
                }
                Err(s) => panic!("writer {}: {w:?} refused: {s:?}", self.n),
            }
        }
        self
    }
}

/// Clients for the four parties of the route, over one connection.
fn as_parties(conn: &Channel, tokens: &HashMap<String, String>) -> HashMap<&'static str, Clients> {
    ["iran", "united-states", "france", "japan"]
        .into_iter()
        .map(|p| (p, Clients::new(conn.clone(), Some(&tokens[p]))))
        .collect()
}

/// Follows the log as the admin from the last event in `seen` until the
/// server dies (once `killed` is set) or until it has seen the sequence
/// `until` names; checks each event continues the sequence.
async fn follow(
    mut admin: Clients,
    mut seen: Vec<pb::Event>,
    killed: Arc<AtomicBool>,
    until: watch::Receiver<Option<u64>>,
) -> Vec<pb::Event> {
    let mut last = seen.last().map_or(0, |e| e.sequence);
    let mut sub = admin
        .messages
        .subscribe(pb::SubscribeRequest {
            start_after: Some(last),
            heartbeat_seconds: 1,
            ..Default::default()
        })
        .await
        .expect("subscribe after the last sequence seen")
        .into_inner();
    loop {
        let item = timeout(DEADLINE, sub.message())
            .await
            .expect("no stream item within the deadline");
        match item.map(|r| r.and_then(|r| r.kind)) {
            Ok(Some(Kind::Event(e))) => {
                assert_eq!(
                    e.sequence,
                    last + 1,
                    "the subscriber got sequence {} after {last}",
                    e.sequence
                );
                last = e.sequence;
                seen.push(e);
            }
            Ok(Some(Kind::Heartbeat(h))) => {
                assert!(
                    h.head_sequence <= last,
                    "a heartbeat vouched for {} when the subscriber had {last}",
                    h.head_sequence
                );
                if until.borrow().is_some_and(|u| last >= u) {
                    return seen;
                }
            }
            Err(s) if killed.load(Ordering::SeqCst) && outcome_unknown(s.code()) => return seen,
            Err(s) => panic!("the subscription failed while the server was up: {s:?}"),
            Ok(None) => panic!("the subscription ended without a status"),
        }
    }
}

/// Checks that the log's sequences are 1..=n and its event ids unique.
fn check_log(events: &[pb::Event]) {
    for (i, e) in events.iter().enumerate() {
        let around: Vec<u64> = events[i.saturating_sub(3)..(i + 3).min(events.len())]
            .iter()
            .map(|e| e.sequence)
            .collect();
        assert_eq!(
            e.sequence,
            i as u64 + 1,
            "the log has a gap or a duplicate at position {i}: …{around:?}…"
        );
    }
    let ids: HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "an event id is repeated");
}

/// The message events by the write that recorded them; two events for one
/// write (the same message subject and version) fail.
fn by_write(events: &[pb::Event]) -> HashMap<Key, &pb::Event> {
    let mut index = HashMap::new();
    for e in events {
        if let Some(pb::event::Subject::Message(m)) = &e.subject
            && let Some(first) = index.insert((m.subject.clone(), m.version), e)
        {
            panic!(
                "two events for {:?} version {}: sequences {} and {} (a write recorded twice)",
                m.subject, m.version, first.sequence, e.sequence
            );
        }
    }
    index
}

fn subject_message(e: &pb::Event) -> &pb::Message {
    match &e.subject {
        Some(pb::event::Subject::Message(m)) => m,
        other => panic!("event {} has no message: {other:?}", e.sequence),
    }
}

/// Checks that every confirmed write's event is in the log, as its reply
/// described it.
fn check_confirmed(index: &HashMap<Key, &pb::Event>, writers: &[Writer]) {
    for d in writers.iter().flat_map(|w| &w.done) {
        let what = if d.retried {
            "a write confirmed by its retry"
        } else {
            "an acknowledged write"
        };
        let e = index
            .get(&d.write.key())
            .unwrap_or_else(|| panic!("{what} is lost: {:?}", d.write));
        let (ty, hop) = d.write.event;
        assert_eq!(
            (e.r#type, e.hop_index, e.actor.as_str()),
            (ty as i32, hop, d.write.party),
            "the event of {what}: {:?}",
            d.write
        );
        assert_eq!(
            subject_message(e),
            &d.message,
            "event {} records what the reply to {what} said",
            e.sequence
        );
    }
}

/// Checks one message's events, oldest first: one MESSAGE_SENT, then one
/// event per version, none missing or repeated.
fn check_history(history: &[&pb::Event]) {
    let sent = history
        .iter()
        .filter(|e| e.r#type == T::MessageSent as i32)
        .count();
    let versions: Vec<u64> = history.iter().map(|e| subject_message(e).version).collect();
    let want: Vec<u64> = (1..=history.len() as u64).collect();
    assert!(
        sent == 1 && history[0].r#type == T::MessageSent as i32 && versions == want,
        "message {}: {sent} MESSAGE_SENT, versions {versions:?}",
        history[0].message_id
    );
}

/// The whole record, once no write is in doubt: the log is contiguous,
/// every confirmed write is in it exactly once, it holds nothing else, and
/// GetMessage shows each message as its last write left it. Returns the log.
async fn check_record(admin: &mut Clients, writers: &[Writer], setup: usize) -> Vec<pb::Event> {
    let events = all_events(admin, Default::default()).await;
    check_log(&events);
    let index = by_write(&events);
    check_confirmed(&index, writers);
    let confirmed: HashSet<Key> = writers
        .iter()
        .flat_map(|w| &w.done)
        .map(|d| d.write.key())
        .collect();
    for (key, e) in &index {
        assert!(
            confirmed.contains(key),
            "event {} ({key:?}) answers no write a client made or retried",
            e.sequence
        );
    }
    assert_eq!(
        events.len(),
        setup + index.len(),
        "events beside the setup's and the writes'"
    );
    let mut histories: HashMap<&str, Vec<&pb::Event>> = HashMap::new();
    for e in events.iter().filter(|e| !e.message_id.is_empty()) {
        histories.entry(&e.message_id).or_default().push(e);
    }
    for history in histories.values() {
        check_history(history);
    }
    let mut last: HashMap<&str, &pb::Message> = HashMap::new();
    for d in writers.iter().flat_map(|w| &w.done) {
        last.insert(&d.message.id, &d.message);
    }
    for (id, m) in last {
        let got = admin
            .messages
            .get_message(pb::GetMessageRequest {
                message_id: id.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("GetMessage {id}: {s:?}"))
            .into_inner();
        assert_eq!(&got, m, "GetMessage shows the last confirmed state");
    }
    events
}

/// How the kills fell.
#[derive(Default, Debug)]
struct Tally {
    /// Writes whose reply came back OK.
    acknowledged: usize,
    /// Writes in doubt at a kill that had committed (the retry found them).
    in_doubt_committed: usize,
    /// Writes in doubt at a kill that had not committed (the retry made them).
    in_doubt_absent: usize,
}

/// After a restart: checks nothing acknowledged was lost, then retries each
/// write in doubt with its request id (it must take effect exactly once) and
/// one acknowledged write per writer (it must create nothing), and checks
/// the whole record.
async fn recover(
    server: &Server,
    tokens: &HashMap<String, String>,
    writers: &mut [Writer],
    seen: &[pb::Event],
    setup: usize,
    tally: &mut Tally,
) {
    let mut admin = server.admin().await;
    let events = all_events(&mut admin, Default::default()).await;
    check_log(&events);
    let index = by_write(&events);
    check_confirmed(&index, writers);
    for e in seen {
        assert_eq!(
            events.get(e.sequence as usize - 1),
            Some(e),
            "the subscriber got event {} before the kill; the log after it differs",
            e.sequence
        );
    }

    let conn = server.connect().await;
    let mut clients = as_parties(&conn, tokens);
    let mut made = 0;
    for wr in writers.iter_mut() {
        let Some(w) = wr.in_doubt.take() else {
            continue;
        };
        let found = index.get(&w.key()).copied();
        if found.is_some() {
            tally.in_doubt_committed += 1;
        } else {
            tally.in_doubt_absent += 1;
            made += 1;
        }
        let client = clients.get_mut(w.party).expect("client");
        let m = perform(client, &w.call)
            .await
            .unwrap_or_else(|s| panic!("the retry of {w:?} after the restart: {s:?}"));
        if let Some(e) = found {
            assert_eq!(
                &m,
                subject_message(e),
                "the retry of {w:?} returns what its first call recorded (event {})",
                e.sequence
            );
        }
        let retried = all_events(
            &mut admin,
            pb::ListEventsRequest {
                message_id: m.id.clone(),
                ..Default::default()
            },
        )
        .await;
        check_history(&retried.iter().collect::<Vec<_>>());
        assert_eq!(
            retried.len() as u64,
            m.version,
            "the history of {} after the retry of {w:?}",
            m.id
        );
        wr.confirm(w, m, true);
    }
    for wr in writers.iter_mut() {
        if wr.done.is_empty() {
            continue;
        }
        let d = &wr.done[wr.rng.below(wr.done.len() as u64) as usize];
        let client = clients.get_mut(d.write.party).expect("client");
        let m = perform(client, &d.write.call)
            .await
            .unwrap_or_else(|s| panic!("the repeat of {:?}: {s:?}", d.write));
        assert_eq!(m.id, d.message.id, "the repeat of {:?}", d.write);
        assert!(m.version >= d.write.version, "the repeat of {:?}", d.write);
    }
    let now = check_record(&mut admin, writers, setup).await;
    assert_eq!(
        now.len(),
        events.len() + made,
        "retries made only the writes that had not committed"
    );
}

#[tokio::test]
async fn sigkill_during_acknowledged_writes_loses_duplicates_and_gaps_nothing() {
    let seed = seed();
    println!("crash seed {seed} (CRASH_SEED={seed} repeats its choices)");
    let began = Instant::now();
    let mut rng = Rng(seed);
    // The embedded store moves its recent idempotency records into their
    // index every 64 here (131,072 by default), so kills land in the
    // middle of moves too.
    let mut server = Server::start_with(Options {
        env: vec![("BACKCHANNEL_REQUESTS_MOVE_AT".into(), "16".into())],
        ..Default::default()
    })
    .await;
    let w = world(&server).await;
    let channel_id = w.channel.id.clone();
    let tokens = Arc::new(w.tokens.clone());
    let mut admin = server.admin().await;
    let setup = all_events(&mut admin, Default::default()).await.len();
    let mut writers: Vec<Writer> = (0..WRITERS)
        .map(|n| Writer::new(n, Rng(rng.next())))
        .collect();
    let mut seen = Vec::new();
    let mut tally = Tally::default();

    for round in 0..=KILLS {
        let crash = round < KILLS;
        let killed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (until_tx, until_rx) = watch::channel(None);
        let follower = tokio::spawn(follow(server.admin().await, seen, killed.clone(), until_rx));
        let mut tasks = Vec::new();
        for wr in writers.drain(..) {
            tasks.push(tokio::spawn(wr.write(
                server.connect().await,
                tokens.clone(),
                channel_id.clone(),
                stop.clone(),
                killed.clone(),
            )));
        }
        let after = rng.within(KILL_AFTER_MS);
        tokio::time::sleep(Duration::from_millis(after)).await;
        if crash {
            killed.store(true, Ordering::SeqCst);
            server.kill().await;
        } else {
            stop.store(true, Ordering::SeqCst);
        }
        for t in tasks {
            let wr = timeout(DEADLINE, t)
                .await
                .expect("a writer stops within the deadline")
                .expect("writer");
            writers.push(wr);
        }
        if crash {
            seen = timeout(DEADLINE, follower)
                .await
                .expect("the subscription ends with the server")
                .expect("follower");
            println!(
                "round {round}: killed after {after} ms; {} events seen so far",
                seen.len()
            );
            server = server.restart().await;
            recover(&server, &tokens, &mut writers, &seen, setup, &mut tally).await;
        } else {
            tally.acknowledged = writers
                .iter()
                .flat_map(|w| &w.done)
                .filter(|d| !d.retried)
                .count();
            let mut admin = server.admin().await;
            let events = check_record(&mut admin, &writers, setup).await;
            until_tx
                .send(Some(events.len() as u64))
                .expect("the follower listens");
            seen = timeout(DEADLINE, follower)
                .await
                .expect("the subscriber catches up")
                .expect("follower");
            assert_eq!(
                seen.len(),
                events.len(),
                "the subscriber saw every event once"
            );
            for (got, want) in seen.iter().zip(&events) {
                assert_eq!(got, want, "the subscriber's event {}", want.sequence);
            }
            println!(
                "round {round}: stopped after {after} ms; {} events, {tally:?}, {:.1} s",
                events.len(),
                began.elapsed().as_secs_f64()
            );
        }
    }
}
