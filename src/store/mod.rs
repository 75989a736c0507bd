//! The record: one interface over the storage backends, and the one writer
//! path. Every write is a [`Command`] queued to the backend's writer, which
//! commits queued commands together (group commit), publishes their events,
//! and only then answers.

pub mod disk;
pub mod error;
pub mod exec;
pub mod postgres;
pub mod query;
pub mod read;
pub mod recent;
pub mod record;
pub mod runs;
pub mod schema;
pub mod sqlite;
pub mod tree;
pub mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use read::Reader;

use crate::clock::Clock;
use tokio::sync::{mpsc, oneshot};

pub use crate::domain::{Outcome, TokenRecord};
pub use error::{Fault, StoreError, WriteError};
pub use postgres::Change;

use crate::domain::{
    Caller, Channel, ChannelState, Command, Event, EventType, Id, Message, MessageState, Party,
    PartyId,
};

/// An event as committed: the value, and its encoding as stored in the log
/// (and sent to subscribers as it is).
#[derive(Debug, Clone)]
pub struct Committed {
    /// The event.
    pub event: Event,
    /// Its protobuf encoding.
    pub data: Bytes,
}

/// An event as read back from the log for a subscriber: the columns that
/// route it, and its stored encoding, never decoded.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Its sequence.
    pub sequence: u64,
    /// Its channel.
    pub channel_id: Id,
    /// Its message, on message events.
    pub message_id: Option<Id>,
    /// Its message's thread, on message events.
    pub thread_id: Option<Id>,
    /// Its type.
    pub kind: EventType,
    /// Its protobuf encoding.
    pub data: Bytes,
}

impl Frame {
    /// The routing columns and encoding of a committed event.
    pub fn of(c: &Committed) -> Frame {
        let m = c.event.message();
        Frame {
            sequence: c.event.sequence,
            channel_id: c.event.channel_id,
            message_id: m.map(|m| m.id),
            thread_id: m.map(|m| m.thread_id),
            kind: c.event.kind,
            data: c.data.clone(),
        }
    }
}

/// What the writer last learned of its ability to commit, shared with the
/// health reporter. The writer logs each change once (a fault with its
/// cause, then its end), never once per request.
#[derive(Clone, Default)]
pub struct WriterState {
    log: Arc<Mutex<FaultLog>>,
    /// Set by [`Store::close`]: the writer stops after its current batch.
    closing: Arc<std::sync::atomic::AtomicBool>,
}

/// The writer's current fault, and when each kind was last logged.
#[derive(Default)]
struct FaultLog {
    now: Option<Fault>,
    /// Whether the current fault was logged (a fault that comes back soon
    /// after it cleared, as a full disk does while it has a few free
    /// pages, is one fault, logged once).
    logged: bool,
    last: Vec<(Fault, std::time::Instant)>,
}

/// A fault of the same kind within this long of the last is not logged again.
pub const FAULT_LOG_QUIET: std::time::Duration = std::time::Duration::from_secs(60);

/// The name of a fault in logs and metrics: the reason a client is given.
pub fn fault_name(f: Fault) -> &'static str {
    crate::error::fault_reason(f).as_str()
}

/// Counts a store failure met by a read or a commit (`store_errors_total`).
pub fn count_failure(e: &StoreError) {
    metrics::counter!(crate::observe::STORE_ERRORS, "reason" => fault_name(e.fault)).increment(1);
}

impl WriterState {
    /// Whether the store is closing (the writer stops after this batch).
    pub fn closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The fault the last commit met, if it failed.
    pub fn fault(&self) -> Option<Fault> {
        self.log
            .lock()
            .map(|f| f.now)
            .unwrap_or(Some(Fault::Internal))
    }

    /// A commit failed with `e`: counted, and logged once per fault.
    pub fn failed(&self, e: &StoreError) {
        count_failure(e);
        let Ok(mut f) = self.log.lock() else {
            return;
        };
        if f.now == Some(e.fault) {
            return;
        }
        f.now = Some(e.fault);
        let now = std::time::Instant::now();
        let recent = f
            .last
            .iter()
            .any(|(k, at)| *k == e.fault && now.duration_since(*at) < FAULT_LOG_QUIET);
        f.logged = !recent;
        let reason = fault_name(e.fault);
        if recent {
            tracing::debug!(reason, "store fault again");
            return;
        }
        f.last.retain(|(k, _)| *k != e.fault);
        f.last.push((e.fault, now));
        match e.fault {
            Fault::Lost => tracing::error!(reason, "{}", e.message),
            _ => tracing::error!(
                reason,
                cause = %e.message,
                source = ?e.source,
                "the store cannot commit: writes are refused ({reason}) until this clears",
            ),
        }
    }

    /// A commit succeeded.
    pub fn committed(&self) {
        let Ok(mut f) = self.log.lock() else {
            return;
        };
        if let Some(old) = f.now.take()
            && f.logged
        {
            tracing::info!(
                was = fault_name(old),
                "the store commits again: writes are accepted"
            );
        }
    }
}

/// Called by the writer, after a commit and before answering, with the
/// events it committed (in sequence order).
pub type Publish = Box<dyn Fn(Vec<Committed>) + Send + 'static>;

/// A queued write.
pub struct Job {
    /// Who asks.
    pub caller: Caller,
    /// What to do.
    pub command: Command,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<Outcome, WriteError>>,
}

/// Filters of a channel listing. `viewer` `None` is the admin.
#[derive(Debug, Clone)]
pub struct ChannelQuery {
    /// Only channels this party is part of (need-to-know).
    pub viewer: Option<PartyId>,
    /// Only channels this party is part of (the request's filter).
    pub party: Option<PartyId>,
    /// Only channels in this state.
    pub state: Option<ChannelState>,
    /// Only channels created before this sequence.
    pub before: u64,
    /// Most items.
    pub limit: usize,
}

/// Filters of a message listing. `viewer` `None` is the admin.
#[derive(Debug, Clone)]
pub struct MessageQuery {
    /// Only messages this party is part of (need-to-know).
    pub viewer: Option<PartyId>,
    /// Only messages on this channel.
    pub channel: Option<Id>,
    /// Only messages this party is part of (the request's filter).
    pub party: Option<PartyId>,
    /// Only messages of this thread.
    pub thread: Option<Id>,
    /// Only messages in this state.
    pub state: Option<MessageState>,
    /// Only messages sent before this sequence.
    pub before: u64,
    /// The log position of the listing's first page; `None` reads the head.
    pub head: Option<u64>,
    /// Most items.
    pub limit: usize,
}

/// Filters of an event listing. `viewer` `None` is the admin.
#[derive(Debug, Clone)]
pub struct EventQuery {
    /// Only events this party may see.
    pub viewer: Option<PartyId>,
    /// Only events of this channel.
    pub channel: Option<Id>,
    /// Only events of this message.
    pub message: Option<Id>,
    /// Only events after this sequence.
    pub after: u64,
    /// Only events up to this sequence (a read of one event looks no
    /// further than it, however little of the log the viewer may see).
    pub through: Option<u64>,
    /// Most items.
    pub limit: usize,
    /// Stop after the event that brings the page's stored bytes to this
    /// (a replay page is bounded in bytes as well as in events).
    pub max_bytes: usize,
}

/// The storage backends.
#[derive(Clone)]
enum Backend {
    /// One SQLite file.
    Sqlite(Reader<Arc<sqlite::Sqlite>>),
    /// PostgreSQL, shared by replicas.
    Postgres(Reader<Arc<postgres::Postgres>>),
}

/// Calls the same read on whichever backend is in use.
macro_rules! read {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(b) => b.$method($($arg),*).await,
            Backend::Postgres(b) => b.$method($($arg),*).await,
        }
        .inspect_err(count_failure)
    };
}

/// The record: reads go to the backend, writes to its writer.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    writer: mpsc::Sender<Job>,
    state: WriterState,
    /// The writer thread, joined by [`Store::close`].
    writer_thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// The time of recording of every write.
    clock: Clock,
}

impl Store {
    /// Opens the embedded store in `dir` (created if needed, and locked
    /// for this process), after the start-up check `options` ask for.
    /// Returns the store and the log's head.
    pub fn open_embedded(
        dir: &Path,
        publish: Publish,
        options: sqlite::Options,
    ) -> Result<(Store, u64), StoreError> {
        let clock = options.clock.clone();
        let s = sqlite::start(dir, publish, options)?;
        Ok((
            Store {
                clock,
                backend: Backend::Sqlite(Reader(s.reader)),
                writer: s.writer,
                state: s.state,
                writer_thread: Arc::new(Mutex::new(Some(s.thread))),
            },
            s.head,
        ))
    }

    /// Opens the PostgreSQL store at `url`, applying migrations. Returns the
    /// store and the log's head at opening.
    pub async fn open_postgres(
        url: &str,
        publish: Publish,
        clock: Clock,
    ) -> Result<(Store, u64), StoreError> {
        let state = WriterState::default();
        let (backend, writer, head, thread) =
            postgres::start(url, publish, state.clone(), clock.clone()).await?;
        Ok((
            Store {
                clock,
                backend: Backend::Postgres(Reader(backend)),
                writer,
                state,
                writer_thread: Arc::new(Mutex::new(Some(thread))),
            },
            head,
        ))
    }

    /// The clock that times every write.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Stops the writer once what is queued is committed, and waits for it:
    /// the embedded store empties its WAL into the database file, so a
    /// clean stop leaves it empty. Writes after this are `SHUTTING_DOWN`.
    pub async fn close(&self) {
        self.state
            .closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // Wakes a writer that waits for work; it stops after this batch.
        let _ = self.write(Caller::Admin, Command::Probe).await;
        let thread = self.writer_thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// The fault the writer's last commit met, if it failed: while there is
    /// one, writes are refused and health is NOT_SERVING.
    pub fn write_fault(&self) -> Option<Fault> {
        self.state.fault()
    }

    /// Whether other processes may write to this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Changes made by other replicas, for a store shared by replicas;
    /// `None` for the embedded store, whose only writer is this process.
    pub fn watch(&self) -> Option<mpsc::Receiver<Change>> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(b) => Some(b.0.watch()),
        }
    }

    /// Queues a write and waits until it is durable (or refused).
    pub async fn write(&self, caller: Caller, command: Command) -> Result<Outcome, WriteError> {
        let (reply, rx) = oneshot::channel();
        let gone = || StoreError::new(Fault::Closing, "the server is shutting down");
        self.writer
            .send(Job {
                caller,
                command,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// The key that signs page tokens.
    pub async fn page_key(&self) -> Result<Vec<u8>, StoreError> {
        read!(self.page_key())
    }

    /// Every token.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        read!(self.tokens())
    }

    /// One party.
    pub async fn party(&self, id: PartyId) -> Result<Option<Party>, StoreError> {
        read!(self.party(id))
    }

    /// Parties ordered by id, after `after`.
    pub async fn parties(&self, after: String, limit: usize) -> Result<Vec<Party>, StoreError> {
        read!(self.parties(after, limit))
    }

    /// One channel.
    pub async fn channel(&self, id: Id) -> Result<Option<Channel>, StoreError> {
        read!(self.channel(id))
    }

    /// A page of channels, newest first.
    pub async fn channels(&self, q: ChannelQuery) -> Result<Vec<(u64, Channel)>, StoreError> {
        read!(self.channels(q))
    }

    /// One message.
    pub async fn message(&self, id: Id) -> Result<Option<Message>, StoreError> {
        read!(self.message(id))
    }

    /// Whether any message is past its deadline at `now`, in a state that
    /// expires. Read without the writer (on PostgreSQL, without the lock
    /// that orders every replica's appends).
    pub async fn due(&self, now: crate::domain::Time) -> Result<bool, StoreError> {
        read!(self.due(now))
    }

    /// A page of messages, newest first, and the head it was read at.
    pub async fn messages(
        &self,
        q: MessageQuery,
    ) -> Result<(Vec<(u64, Message)>, u64), StoreError> {
        read!(self.messages(q))
    }

    /// A page of events as stored, oldest first: `RECORD_CORRUPT` if any
    /// of them is damaged.
    pub async fn frames(&self, q: EventQuery) -> Result<Vec<Frame>, StoreError> {
        read!(self.frame_rows(q))?
            .into_iter()
            .collect::<Result<_, _>>()
            .inspect_err(count_failure)
    }

    /// A page of a subscriber's replay, oldest first, and whether it was cut
    /// short: it ends just before a damaged event, so what precedes it is
    /// still streamed, and the next page (which starts at the damaged
    /// event) is `RECORD_CORRUPT`.
    pub async fn replay(&self, q: EventQuery) -> Result<(Vec<Frame>, bool), StoreError> {
        let rows = read!(self.frame_rows(q))?;
        if let Some(Err(e)) = rows.iter().find(|f| f.is_err()) {
            count_failure(e);
        }
        query::intact(rows)
    }

    /// A page of events, oldest first.
    pub async fn events(&self, q: EventQuery) -> Result<Vec<Event>, StoreError> {
        read!(self.events(q))
    }

    /// The last sequence in the log.
    pub async fn head(&self) -> Result<u64, StoreError> {
        read!(self.head())
    }

    /// The log's id.
    pub async fn log_id(&self) -> Result<String, StoreError> {
        read!(self.log_id())
    }

    /// The head of the log's Merkle tree at `size` (at most the head).
    pub async fn tree_root(&self, size: u64) -> Result<tree::Hash, StoreError> {
        read!(self.tree_root(size))
    }

    /// The inclusion proof of leaf `index` at tree size `size`, and the
    /// tree's head at that size.
    pub async fn inclusion(
        &self,
        index: u64,
        size: u64,
    ) -> Result<(Vec<tree::Hash>, tree::Hash), StoreError> {
        read!(self.inclusion(index, size))
    }

    /// The consistency proof between two tree sizes, and the head at the
    /// second.
    pub async fn consistency(
        &self,
        first: u64,
        second: u64,
    ) -> Result<(Vec<tree::Hash>, tree::Hash), StoreError> {
        read!(self.consistency(first, second))
    }
}
