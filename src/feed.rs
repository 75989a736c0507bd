//! Fan-out of committed events to subscribers: one path for all of them.
//!
//! The writer publishes each committed event into a bounded broadcast ring
//! (the in-memory window of the last [`WINDOW_EVENTS`] events, and of at
//! most [`DEFAULT_WINDOW_BYTES`] of them: the ring carries weak references,
//! the window alone owns the events, so a subscriber that stops reading
//! pins nothing but its place). Each
//! subscription is a stream, polled by the connection that carries it, that
//! replays the durable log from its position, then follows the ring. Events
//! travel as the bytes they were encoded to at commit (see [`crate::wire`]):
//! no subscriber decodes or encodes them. A subscriber that falls behind the
//! ring (lagged) or sees a gap goes back to the log from its last sequence,
//! so it loses nothing, holds no queue of its own, and never slows the
//! writer or other subscribers.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::auth::{Authenticator, Identity};
use crate::convert;
use bytes::Bytes;

use crate::domain::{Caller, EventType, Id, PartyId, Reason, Rejection, Time};
use crate::pb;
use crate::store::{Committed, EventQuery, Frame, Store};

/// Events the in-memory window holds.
pub const WINDOW_EVENTS: usize = 8192;
/// Bytes of events the in-memory window holds by default.
pub const DEFAULT_WINDOW_BYTES: usize = 64 << 20;
/// Events read from the log per page during a replay.
pub const REPLAY_PAGE: usize = 256;
/// Stored bytes a replay page holds at most (plus the event that crosses
/// it): what a stream whose client stops reading can pin while replaying.
pub const REPLAY_PAGE_BYTES: usize = 512 << 10;
/// Default seconds of quiet between heartbeats.
pub const DEFAULT_HEARTBEAT_SECS: u32 = 15;
/// How often a subscription checks that its token is still valid.
pub const REVOCATION_CHECK: Duration = Duration::from_secs(1);
/// How long a subscription that must end (its token revoked or expired, or
/// the server stopping) has to send its end before its connection is closed
/// instead: a client that reads nothing never receives the end, which waits
/// behind flow control.
pub const END_GRACE: Duration = Duration::from_secs(2);

/// One committed event, as every subscriber receives it.
pub struct Published {
    /// Its routing columns and encoding.
    pub frame: Frame,
    /// The parties who may see it (principals and mediators).
    pub audience: Vec<PartyId>,
}

impl Published {
    fn of(c: Committed) -> Published {
        let audience = c.event.subject.audience().into_iter().cloned().collect();
        Published {
            frame: Frame::of(&c),
            audience,
        }
    }

    fn visible_to(&self, caller: &Caller) -> bool {
        caller.may_see(self.audience.iter())
    }
}

/// What the ring carries: an event's sequence, and the event, which the
/// window owns; a subscriber that finds it gone (and still needs it) has
/// fallen out of the window.
type Shared = (u64, std::sync::Weak<Published>);

/// The events the window owns, newest last, and their bytes.
#[derive(Default)]
struct Window {
    events: std::collections::VecDeque<Arc<Published>>,
    bytes: usize,
}

/// The fan-out hub.
pub struct Feed {
    ring: broadcast::Sender<Shared>,
    head: AtomicU64,
    /// Serialises publishers (the writer, and with a shared store the
    /// tailer), and owns the window's events.
    window: std::sync::Mutex<Window>,
    /// The window's byte budget.
    max_bytes: usize,
}

impl Feed {
    /// A hub whose log head is `head`, whose window holds at most
    /// `max_bytes` of events.
    pub fn new(head: u64, max_bytes: usize) -> Arc<Feed> {
        let (ring, _) = broadcast::channel(WINDOW_EVENTS);
        Arc::new(Feed {
            ring,
            head: AtomicU64::new(head),
            window: std::sync::Mutex::new(Window::default()),
            max_bytes,
        })
    }

    /// Publishes committed events, in sequence order, if they continue the
    /// window without a gap (events it already holds are skipped). Returns
    /// `false`, publishing nothing, when they do not: with replicas, events
    /// of another replica come first, and the tailer reads them all from
    /// the log instead.
    pub fn publish(&self, events: Vec<Committed>) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let head = self.head();
        let mut events = events
            .into_iter()
            .filter(|c| c.event.sequence > head)
            .peekable();
        match events.peek() {
            None => return true,
            Some(first) if first.event.sequence != head + 1 => return false,
            Some(_) => {}
        }
        for c in events {
            self.head.store(c.event.sequence, Ordering::SeqCst);
            let p = Arc::new(Published::of(c));
            // No receivers is fine: nobody is subscribed.
            let _ = self.ring.send((p.frame.sequence, Arc::downgrade(&p)));
            window.bytes += p.frame.data.len();
            window.events.push_back(p);
            while window.events.len() > WINDOW_EVENTS
                || (window.bytes > self.max_bytes && window.events.len() > 1)
            {
                if let Some(old) = window.events.pop_front() {
                    window.bytes -= old.frame.data.len();
                }
            }
        }
        metrics::gauge!(crate::observe::WINDOW_BYTES).set(window.bytes as f64);
        true
    }

    /// Raises the head to `head` (the log's head when the store opened).
    pub fn advance_head(&self, head: u64) {
        self.head.fetch_max(head, Ordering::SeqCst);
    }

    /// Listens to what is published from now on (for followers inside the
    /// server, such as the relay statistics).
    pub fn listen(&self) -> broadcast::Receiver<(u64, std::sync::Weak<Published>)> {
        self.ring.subscribe()
    }

    /// The last published sequence.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::SeqCst)
    }
}

/// What a subscription asks for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these channels (empty = all).
    pub channels: HashSet<Id>,
    /// Only these messages (empty = all).
    pub messages: HashSet<Id>,
    /// Only these threads (empty = all).
    pub threads: HashSet<Id>,
    /// Only these types (empty = all).
    pub types: HashSet<EventType>,
}

impl Filter {
    /// Whether `e` matches (AND across fields, OR within a field).
    pub fn matches(&self, e: &Frame) -> bool {
        (self.channels.is_empty() || self.channels.contains(&e.channel_id))
            && (self.messages.is_empty()
                || e.message_id.is_some_and(|m| self.messages.contains(&m)))
            && (self.threads.is_empty() || e.thread_id.is_some_and(|t| self.threads.contains(&t)))
            && (self.types.is_empty() || self.types.contains(&e.kind))
    }

    /// With exactly one channel, the log can be read by channel.
    fn only_channel(&self) -> Option<Id> {
        (self.channels.len() == 1)
            .then(|| self.channels.iter().next().copied())
            .flatten()
    }

    /// With exactly one message (and no channel filter), the log can be read by message.
    fn only_message(&self) -> Option<Id> {
        (self.messages.len() == 1 && self.channels.is_empty())
            .then(|| self.messages.iter().next().copied())
            .flatten()
    }
}

/// One subscription's settings.
pub struct Subscription {
    /// Who subscribes.
    pub who: Identity,
    /// What to send.
    pub filter: Filter,
    /// Send events after this sequence.
    pub start_after: u64,
    /// Quiet time before a heartbeat.
    pub heartbeat: Duration,
    /// The connection that carries it (absent only in tests of the feed).
    pub connection: Option<crate::connections::ConnectionHandle>,
}

/// What a subscription task needs besides its settings.
#[derive(Clone)]
pub struct Follow {
    /// The hub.
    pub feed: Arc<Feed>,
    /// The durable log.
    pub store: Store,
    /// For revocation checks.
    pub auth: Arc<Authenticator>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Most subscriptions open at once.
    pub max_subscriptions: usize,
    /// Subscriptions open now.
    pub open: Arc<AtomicUsize>,
    /// Per-party limits.
    pub quotas: Arc<crate::quota::Quotas>,
}

/// Counts one open subscription for as long as it lives.
struct OpenSubscription(Arc<AtomicUsize>);

impl OpenSubscription {
    fn new(open: &Arc<AtomicUsize>, max: usize) -> Result<OpenSubscription, Rejection> {
        let prev = open.fetch_add(1, Ordering::SeqCst);
        if prev >= max {
            open.fetch_sub(1, Ordering::SeqCst);
            metrics::counter!(crate::observe::SUBSCRIPTIONS_REFUSED, "limit" => "total")
                .increment(1);
            return Err(Rejection::new(
                Reason::TOO_MANY_SUBSCRIPTIONS,
                format!("the server holds its maximum of {max} subscriptions; retry later"),
            ));
        }
        // Added to and taken from, never set: set from a count read
        // before, a late write could leave the gauge at 1 with none open
        // (subscriptions closing on two threads at once).
        metrics::gauge!(crate::observe::SUBSCRIPTIONS_OPEN).increment(1.0);
        Ok(OpenSubscription(open.clone()))
    }
}

impl Drop for OpenSubscription {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!(crate::observe::SUBSCRIPTIONS_OPEN).decrement(1.0);
    }
}

type Out = Result<pb::SubscribeResponse, Status>;

/// The response stream of one subscription. It is polled by the connection
/// that carries it: no task and no queue of its own, so a client that stops
/// reading holds nothing but its place in the log.
pub type SubscriptionStream = Pin<Box<dyn Stream<Item = Out> + Send + 'static>>;

/// What one wake-up of a following subscription leads to. Built and
/// consumed at once, so the large variant costs no copy worth boxing.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// Nothing to send.
    Idle,
    /// Send this.
    Send(pb::SubscribeResponse),
    /// The window cannot serve it: read the log from the last sequence.
    Replay(&'static str),
    /// End the stream with this status.
    Stop(Status),
}

impl Follow {
    /// Starts a subscription. The caller has checked that `start_after` is
    /// not beyond the head.
    pub fn start(&self, sub: Subscription) -> Result<SubscriptionStream, Rejection> {
        let slot = self.quotas.subscription(&sub.who.caller)?;
        let open = OpenSubscription::new(&self.open, self.max_subscriptions)?;
        // Subscribe to the window before anything else, so nothing published
        // from now on can be missed.
        let ring = self.feed.ring.subscribe();
        let this = self.clone();
        let ended = CancellationToken::new();
        self.watch_end(&sub, ended.clone());
        // Made here, not in the stream, so that a stream dropped before it
        // is ever polled (its client's window was 0) still ends its watchdog.
        let ended = ended.drop_guard();
        Ok(Box::pin(async_stream::stream! {
            let _open = open;
            let _slot = slot;
            let _ended = ended;
            let mut ring = ring;
            let viewer = sub.who.caller.party().cloned();
            let mut last = sub.start_after;
            let mut caught_up_sent = false;
            let mut revocation = tokio::time::interval(REVOCATION_CHECK);
            revocation.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let stopping = this.shutdown.clone().cancelled_owned();
            tokio::pin!(stopping);
            let mut replay_reason = "start";
            'replay: loop {
                metrics::counter!(crate::observe::REPLAYS, "reason" => replay_reason).increment(1);
                // Replay the durable log from `last` until it is exhausted.
                loop {
                    if this.shutdown.is_cancelled() {
                        yield Err(shutting_down());
                        return;
                    }
                    if !this.auth.still_valid(&sub.who) {
                        yield Err(revoked());
                        return;
                    }
                    let head = match this.store.head().await {
                        Ok(h) => h,
                        Err(r) => {
                            yield Err(r.into());
                            return;
                        }
                    };
                    // Need-to-know is part of the query: only channels the
                    // viewer is part of (a message's parties are its channel's).
                    let query = EventQuery {
                        viewer: viewer.clone(),
                        channel: sub.filter.only_channel(),
                        message: sub.filter.only_message(),
                        after: last,
                        through: None,
                        limit: REPLAY_PAGE,
                        max_bytes: REPLAY_PAGE_BYTES,
                    };
                    let (page, cut_short) = match this.store.replay(query).await {
                        Ok(p) => p,
                        Err(r) => {
                            yield Err(r.into());
                            return;
                        }
                    };
                    // A page cut short by a damaged event is not the end:
                    // the next one starts at it, and ends the stream.
                    metrics::counter!(crate::observe::REPLAY_PAGES).increment(1);
                    let bytes: usize = page.iter().map(|f| f.data.len()).sum();
                    let full = page.len() == REPLAY_PAGE || bytes >= REPLAY_PAGE_BYTES || cut_short;
                    for f in page {
                        last = f.sequence;
                        if sub.filter.matches(&f) {
                            deliver(this.feed.head().saturating_sub(f.sequence));
                            yield Ok(event(f.data));
                        }
                    }
                    if !full {
                        // Everything committed up to `head` has been read.
                        last = last.max(head);
                        break;
                    }
                }
                if !caught_up_sent {
                    caught_up_sent = true;
                    yield Ok(heartbeat(last, this.store.clock().now()));
                }
                // Follow the in-memory window.
                let quiet = tokio::time::sleep(sub.heartbeat);
                tokio::pin!(quiet);
                loop {
                    let next = tokio::select! {
                        biased;
                        () = &mut stopping => Next::Stop(shutting_down()),
                        _ = revocation.tick() => {
                            if this.auth.still_valid(&sub.who) {
                                Next::Idle
                            } else {
                                Next::Stop(revoked())
                            }
                        }
                        r = ring.recv() => match r {
                            // Already read from the log (after a replay).
                            Ok((seq, _)) if seq <= last => Next::Idle,
                            Ok((_, p)) => match p.upgrade() {
                                Some(p) => this.route(&sub, &p, &mut last),
                                // Out of the window's byte budget already.
                                None => Next::Replay("lag"),
                            },
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                tracing::debug!(missed = n, last, "subscriber fell behind the window; replaying from the log");
                                Next::Replay("lag")
                            }
                            Err(broadcast::error::RecvError::Closed) => Next::Stop(shutting_down()),
                        },
                        () = &mut quiet => Next::Send(heartbeat(last, this.store.clock().now())),
                    };
                    match next {
                        Next::Idle => continue,
                        Next::Send(item) => {
                            yield Ok(item);
                            quiet.as_mut().reset(tokio::time::Instant::now() + sub.heartbeat);
                        }
                        Next::Replay(reason) => {
                            replay_reason = reason;
                            continue 'replay;
                        }
                        Next::Stop(status) => {
                            yield Err(status);
                            return;
                        }
                    }
                }
            }
        }))
    }

    /// Watches, beside the stream, for the moment it must end even if its
    /// client reads nothing: its token revoked or expired, or shutdown. The
    /// stream ends itself when it is polled; if it has not within
    /// [`END_GRACE`], its connection is closed.
    fn watch_end(&self, sub: &Subscription, ended: CancellationToken) {
        let Some(conn) = sub.connection.clone() else {
            return;
        };
        let (auth, who, shutdown) = (self.auth.clone(), sub.who.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REVOCATION_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let why = loop {
                tokio::select! {
                    () = ended.cancelled() => return,
                    () = shutdown.cancelled() => break "the server is stopping",
                    _ = tick.tick() => {
                        if !auth.still_valid(&who) {
                            break "its token was revoked or has expired";
                        }
                    }
                }
            };
            tokio::select! {
                () = ended.cancelled() => {}
                () = tokio::time::sleep(END_GRACE) => {
                    conn.close(&format!("a subscription that must end ({why}) is not read by its client"));
                }
            }
        });
    }

    /// What to do with one event from the window.
    fn route(&self, sub: &Subscription, p: &Published, last: &mut u64) -> Next {
        let seq = p.frame.sequence;
        if seq <= *last {
            return Next::Idle;
        }
        if seq != *last + 1 {
            // A gap: what is missing is in the log.
            return Next::Replay("gap");
        }
        *last = seq;
        if sub.filter.matches(&p.frame) && p.visible_to(&sub.who.caller) {
            deliver(self.feed.head().saturating_sub(seq));
            Next::Send(event(p.frame.data.clone()))
        } else {
            Next::Idle
        }
    }
}

/// Counts a delivery and how far behind the head it was.
fn deliver(lag: u64) {
    metrics::counter!(crate::observe::EVENTS_DELIVERED).increment(1);
    metrics::histogram!(crate::observe::SUBSCRIBER_LAG).record(lag as f64);
}

fn event(data: Bytes) -> pb::SubscribeResponse {
    pb::SubscribeResponse::encoded_event(data)
}

fn heartbeat(head: u64, now: Time) -> pb::SubscribeResponse {
    pb::SubscribeResponse::of(pb::subscribe_response::Kind::Heartbeat(pb::Heartbeat {
        head_sequence: head,
        time: Some(convert::timestamp(now)),
    }))
}

fn shutting_down() -> Status {
    Rejection::new(
        Reason::SHUTTING_DOWN,
        "the server is shutting down; reconnect with start_after set to your last sequence",
    )
    .into()
}

fn revoked() -> Status {
    Rejection::new(
        Reason::UNAUTHENTICATED,
        "the token was revoked or has expired",
    )
    .into()
}
