//! The embedded store: one SQLite database file in WAL mode with
//! `synchronous=FULL`, so a commit is on disk before it is acknowledged.
//! One writer thread owns the only write connection and commits whatever
//! has queued in one transaction (group commit); readers use a small pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::mpsc;

use super::exec::{WriteTx, run_batch};
use super::query::{self, Arg, Style};
use super::record::{corrupt, decode_channel, decode_event, decode_message, decode_party};
use super::{ChannelQuery, EventQuery, Frame, Job, MessageQuery, Publish, TokenRecord};
use crate::convert;
use crate::domain::{Channel, Event, Id, Message, Party, PartyId, Reason, Rejection, Time};
use crate::pb;

/// The schema migrations, in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[include_str!("../../migrations/sqlite/0001_init.sql")];

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "backchannel.db";

/// Most commands committed in one transaction.
pub const MAX_BATCH: usize = 512;

fn db_err(e: rusqlite::Error) -> Rejection {
    use rusqlite::ErrorCode::*;
    let unavailable = matches!(
        e.sqlite_error_code(),
        Some(DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure | CannotOpen | OutOfMemory)
    );
    tracing::error!(error = %e, "sqlite error");
    let reason = if unavailable {
        "STORE_UNAVAILABLE"
    } else {
        "INTERNAL"
    };
    metrics::counter!(crate::observe::STORE_ERRORS, "reason" => reason).increment(1);
    if unavailable {
        Rejection::new(
            Reason::STORE_UNAVAILABLE,
            format!("the store is unavailable: {e}"),
        )
    } else {
        Rejection::new(Reason::INTERNAL, "internal store error")
    }
}

fn open(path: &Path) -> Result<Connection, Rejection> {
    let conn = Connection::open(path).map_err(db_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(db_err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db_err)?;
    // Temporary structures (sorts, statement journals) stay in memory.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(db_err)?;
    Ok(conn)
}

/// The embedded store's read side; the write side is its writer thread.
pub struct Sqlite {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Bounds the readers working at once.
    readers: Arc<tokio::sync::Semaphore>,
    /// Dropped with the store, which ends the checkpoint thread.
    _stop_checkpoints: std::sync::mpsc::Sender<()>,
}

/// Most read connections (each with its own page cache) in use at once.
pub const READERS: usize = 8;

/// How often the WAL is checkpointed into the database file.
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Copies the WAL into the database file every [`CHECKPOINT_INTERVAL`]
/// without blocking the writer (PASSIVE), and once more when the store closes.
fn checkpointer(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    loop {
        let last = !matches!(
            stop.recv_timeout(CHECKPOINT_INTERVAL),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "checkpoint failed");
        }
        if last {
            return;
        }
    }
}

/// Opens (creating and migrating) the database in `dir` and starts the
/// writer thread. Returns the reader and the writer's queue.
pub fn start(
    dir: &Path,
    publish: Publish,
) -> Result<(Arc<Sqlite>, mpsc::Sender<Job>, u64), Rejection> {
    let path = dir.join(DB_FILE);
    let mut conn = open(&path)?;
    migrate(&mut conn)?;
    let head: u64 = conn
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(db_err)?
        .try_into()
        .map_err(corrupt)?;
    // Checkpoints run on their own thread, off the writer's path.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(db_err)?;
    // The writer touches the newest pages of every index: 16 MiB of cache
    // (readers keep SQLite's default 2 MiB; the OS caches the file too).
    conn.pragma_update(None, "cache_size", -16384)
        .map_err(db_err)?;
    let checkpoint_conn = open(&path)?;
    let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("backchannel-checkpoint".into())
        .spawn(move || checkpointer(checkpoint_conn, stopped))
        .map_err(|e| Rejection::new(Reason::INTERNAL, format!("cannot start checkpoints: {e}")))?;
    let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
    std::thread::Builder::new()
        .name("backchannel-writer".into())
        .spawn(move || writer(conn, rx, head, publish))
        .map_err(|e| Rejection::new(Reason::INTERNAL, format!("cannot start writer: {e}")))?;
    Ok((
        Arc::new(Sqlite {
            path,
            idle: Mutex::new(Vec::new()),
            readers: Arc::new(tokio::sync::Semaphore::new(READERS)),
            _stop_checkpoints: stop_checkpoints,
        }),
        tx,
        head,
    ))
}

fn migrate(conn: &mut Connection) -> Result<(), Rejection> {
    let applied: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(db_err)?
        .try_into()
        .map_err(corrupt)?;
    if applied > MIGRATIONS.len() {
        return Err(Rejection::new(
            Reason::INTERNAL,
            format!(
                "the database has schema version {applied}, newer than this binary knows ({})",
                MIGRATIONS.len()
            ),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction().map_err(db_err)?;
        tx.execute_batch(sql).map_err(db_err)?;
        tx.pragma_update(None, "user_version", i + 1)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::info!(version = i + 1, "applied schema migration");
    }
    let key: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = 'page_key'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db_err)?;
    if key.is_none() {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| corrupt(format!("no randomness: {e}")))?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('page_key', ?1)",
            [&k[..]],
        )
        .map_err(db_err)?;
    }
    Ok(())
}

/// Most channels the writer keeps in memory.
const CHANNEL_CACHE: usize = 10_000;
/// Most messages the writer keeps in memory (the recently touched ones,
/// which are the ones that move next).
const MESSAGE_CACHE: usize = 4_096;

/// What the writer has read or written. It is the only writer, so what it
/// holds stays true; cleared whenever a batch does not commit.
#[derive(Default)]
struct Cache {
    channels: HashMap<Id, Channel>,
    messages: HashMap<Id, Message>,
}

impl Cache {
    fn clear(&mut self) {
        self.channels.clear();
        self.messages.clear();
    }

    /// Keeps the cache bounded (crudely: a full cache starts over).
    fn trim(&mut self) {
        if self.channels.len() > CHANNEL_CACHE {
            self.channels.clear();
        }
        if self.messages.len() > MESSAGE_CACHE {
            self.messages.clear();
        }
    }
}

/// The writer thread: takes the first queued job, then whatever else has
/// queued (up to [`MAX_BATCH`]), runs each (a refused one has written
/// nothing), commits once, publishes the events, then answers.
fn writer(mut conn: Connection, mut rx: mpsc::Receiver<Job>, mut head: u64, publish: Publish) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    let mut cache = Cache::default();
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let start_head = head;
        let now = Time::now();
        let started = std::time::Instant::now();
        metrics::histogram!(crate::observe::WRITER_BATCH).record(jobs.len() as f64);
        let mut results = Vec::with_capacity(jobs.len());
        let mut events = Vec::new();
        cache.trim();
        let committed = (|| -> Result<(), Rejection> {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            let mut wt = Tx {
                conn: &tx,
                cache: Some(&mut cache),
            };
            run_batch(&mut wt, &jobs, &mut head, now, &mut results, &mut events)?;
            tx.commit().map_err(db_err)
        })();
        metrics::histogram!(crate::observe::WRITER_COMMIT).record(started.elapsed().as_secs_f64());
        match committed {
            Ok(()) => {
                publish(events);
                for (job, r) in jobs.drain(..).zip(results) {
                    let _ = job.reply.send(r);
                }
            }
            Err(e) => {
                head = start_head;
                cache.clear();
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
    tracing::info!("writer stopped");
}

/// A write transaction (or savepoint) on the writer's connection, with the
/// writer's cache; or, for reads, a plain connection without one.
struct Tx<'c> {
    conn: &'c Connection,
    cache: Option<&'c mut Cache>,
}

fn encode<T: prost::Message>(m: T) -> Vec<u8> {
    m.encode_to_vec()
}

fn i64_of(n: u64) -> Result<i64, Rejection> {
    i64::try_from(n).map_err(corrupt)
}

impl Tx<'_> {
    /// A read on a pooled connection: no cache.
    fn reader(conn: &Connection) -> Tx<'_> {
        Tx { conn, cache: None }
    }
}

impl WriteTx for Tx<'_> {
    fn party(&mut self, id: &PartyId) -> Result<Option<Party>, Rejection> {
        let b: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT data FROM parties WHERE id = ?1")
            .and_then(|mut s| s.query_row([id.as_str()], |r| r.get(0)).optional())
            .map_err(db_err)?;
        b.map(|b| decode_party(&b)).transpose()
    }

    fn insert_party(&mut self, p: &Party) -> Result<bool, Rejection> {
        let n = self
            .conn
            .prepare_cached("INSERT INTO parties (id, data) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
            .and_then(|mut s| s.execute(params![p.id.as_str(), encode(pb::Party::from(p))]))
            .map_err(db_err)?;
        Ok(n == 1)
    }

    fn insert_token(
        &mut self,
        id: Id,
        party: &PartyId,
        hash: &[u8; 32],
        now: Time,
    ) -> Result<(), Rejection> {
        self.conn
            .prepare_cached(
                "INSERT INTO tokens (id, party_id, secret_hash, create_time) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![id.to_string(), party.as_str(), &hash[..], now.0]))
            .map_err(db_err)?;
        Ok(())
    }

    fn revoke_token(&mut self, id: Id, now: Time) -> Result<Option<bool>, Rejection> {
        let revoked: Option<Option<i64>> = self
            .conn
            .prepare_cached("SELECT revoke_time FROM tokens WHERE id = ?1")
            .and_then(|mut s| s.query_row([id.to_string()], |r| r.get(0)).optional())
            .map_err(db_err)?;
        match revoked {
            None => Ok(None),
            Some(Some(_)) => Ok(Some(false)),
            Some(None) => {
                self.conn
                    .prepare_cached("UPDATE tokens SET revoke_time = ?2 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![id.to_string(), now.0]))
                    .map_err(db_err)?;
                Ok(Some(true))
            }
        }
    }

    fn channel(&mut self, id: Id) -> Result<Option<Channel>, Rejection> {
        if let Some(c) = self.cache.as_ref().and_then(|m| m.channels.get(&id)) {
            return Ok(Some(c.clone()));
        }
        let b: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT data FROM channels WHERE id = ?1")
            .and_then(|mut s| s.query_row([id.to_string()], |r| r.get(0)).optional())
            .map_err(db_err)?;
        let c = b.map(|b| decode_channel(&b)).transpose()?;
        if let (Some(c), Some(m)) = (&c, self.cache.as_mut()) {
            m.channels.insert(id, c.clone());
        }
        Ok(c)
    }

    fn save_channel(&mut self, c: &Channel, insert_seq: Option<u64>) -> Result<(), Rejection> {
        if let Some(m) = self.cache.as_mut() {
            m.channels.insert(c.id, c.clone());
        }
        let data = encode(pb::Channel::from(c));
        let state = convert::channel_state_pb(c.state) as i32;
        match insert_seq {
            Some(seq) => {
                let seq = i64_of(seq)?;
                self.conn
                    .prepare_cached(
                        "INSERT INTO channels (seq, id, state, data) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .and_then(|mut s| s.execute(params![seq, c.id.to_string(), state, data]))
                    .map_err(db_err)?;
                let mut s = self
            .conn
                    .prepare_cached(
                        "INSERT OR IGNORE INTO channel_members (party_id, channel_id) VALUES (?1, ?2)",
                    )
                    .map_err(db_err)?;
                for p in c.members() {
                    s.execute(params![p.as_str(), c.id.to_string()])
                        .map_err(db_err)?;
                }
            }
            None => {
                self.conn
                    .prepare_cached("UPDATE channels SET state = ?2, data = ?3 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![c.id.to_string(), state, data]))
                    .map_err(db_err)?;
            }
        }
        Ok(())
    }

    fn message(&mut self, id: Id) -> Result<Option<Message>, Rejection> {
        if let Some(m) = self.cache.as_ref().and_then(|c| c.messages.get(&id)) {
            return Ok(Some(m.clone()));
        }
        let b: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT data FROM messages WHERE id = ?1")
            .and_then(|mut s| s.query_row([id.to_string()], |r| r.get(0)).optional())
            .map_err(db_err)?;
        let m = b.map(|b| decode_message(&b)).transpose()?;
        if let (Some(m), Some(c)) = (&m, self.cache.as_mut()) {
            c.messages.insert(id, m.clone());
        }
        Ok(m)
    }

    fn save_message(&mut self, m: &Message, insert_seq: Option<u64>) -> Result<(), Rejection> {
        if let Some(c) = self.cache.as_mut() {
            c.messages.insert(m.id, m.clone());
        }
        let data = encode(pb::Message::from(m));
        let state = convert::message_state_pb(m.state) as i32;
        match insert_seq {
            Some(seq) => {
                let seq = i64_of(seq)?;
                self.conn
                .prepare_cached(
                    "INSERT INTO messages (seq, id, channel_id, thread_id, state, respond_by, data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        seq,
                        m.id.to_string(),
                        m.channel_id.to_string(),
                        m.thread_id.to_string(),
                        state,
                        m.respond_by.map(|t| t.0),
                        data
                    ])
                })
            }
            None => self
                .conn
                .prepare_cached("UPDATE messages SET state = ?2, data = ?3 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![m.id.to_string(), state, data])),
        }
        .map_err(db_err)?;
        Ok(())
    }

    fn overdue(&mut self, now: Time, limit: usize) -> Result<Vec<Id>, Rejection> {
        let mut s = self
            .conn
            .prepare_cached(
                "SELECT id FROM messages INDEXED BY messages_due
                 WHERE respond_by IS NOT NULL AND state IN (1, 2, 3, 4) AND respond_by <= ?1
                 ORDER BY respond_by LIMIT ?2",
            )
            .map_err(db_err)?;
        let ids = s
            .query_map(params![now.0, i64_of(limit as u64)?], |r| {
                r.get::<_, String>(0)
            })
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        ids.iter().map(|s| Id::parse(s).map_err(corrupt)).collect()
    }

    fn request(
        &mut self,
        caller: &str,
        method: &str,
        request_id: Id,
    ) -> Result<Option<([u8; 32], Id)>, Rejection> {
        let row: Option<(Vec<u8>, String)> = self
            .conn
            .prepare_cached(
                "SELECT fingerprint, resource_id FROM requests
                 WHERE caller = ?1 AND method = ?2 AND request_id = ?3",
            )
            .and_then(|mut s| {
                s.query_row(params![caller, method, request_id.to_string()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .map_err(db_err)?;
        match row {
            None => Ok(None),
            Some((fp, id)) => Ok(Some((
                fp.try_into().map_err(|_| corrupt("bad fingerprint"))?,
                Id::parse(&id).map_err(corrupt)?,
            ))),
        }
    }

    fn insert_request(
        &mut self,
        caller: &str,
        method: &str,
        request_id: Id,
        fingerprint: &[u8; 32],
        resource: Id,
    ) -> Result<(), Rejection> {
        self.conn
            .prepare_cached(
                "INSERT INTO requests (caller, method, request_id, fingerprint, resource_id)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    caller,
                    method,
                    request_id.to_string(),
                    &fingerprint[..],
                    resource.to_string()
                ])
            })
            .map_err(db_err)?;
        Ok(())
    }

    fn append(&mut self, e: &Event, data: &[u8]) -> Result<(), Rejection> {
        let m = e.message();
        let seq = i64_of(e.sequence)?;
        self.conn
            .prepare_cached(
                "INSERT INTO events (seq, channel_id, message_id, thread_id, type, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    seq,
                    e.channel_id.to_string(),
                    m.map(|m| m.id.to_string()),
                    m.map(|m| m.thread_id.to_string()),
                    convert::event_type_pb(e.kind) as i32,
                    data
                ])
            })
            .map_err(db_err)?;
        Ok(())
    }
}

impl Sqlite {
    /// Runs `f` on a pooled read connection, off the async threads.
    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Connection) -> Result<T, Rejection> + Send + 'static,
    ) -> Result<T, Rejection> {
        // At most READERS connections (and blocking threads) read at once.
        let permit = self
            .readers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Rejection::new(Reason::SHUTTING_DOWN, "the store is closing"))?;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = this.idle.lock().ok().and_then(|mut v| v.pop());
            let mut conn = match conn {
                Some(c) => c,
                None => open(&this.path)?,
            };
            let r = f(&mut conn);
            if let Ok(mut idle) = this.idle.lock() {
                idle.push(conn);
            }
            r
        })
        .await
        .map_err(|e| Rejection::new(Reason::INTERNAL, format!("reader failed: {e}")))?
    }

    /// The key that signs page tokens.
    pub async fn page_key(self: &Arc<Self>) -> Result<Vec<u8>, Rejection> {
        self.read(|c| {
            c.query_row("SELECT value FROM meta WHERE key = 'page_key'", [], |r| {
                r.get(0)
            })
            .map_err(db_err)
        })
        .await
    }

    /// Every token, for the authenticator's cache.
    pub async fn tokens(self: &Arc<Self>) -> Result<Vec<TokenRecord>, Rejection> {
        self.read(|c| {
            let mut s = c
                .prepare("SELECT id, party_id, secret_hash, revoke_time IS NOT NULL FROM tokens")
                .map_err(db_err)?;
            let rows = s
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, bool>(3)?,
                    ))
                })
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            rows.into_iter()
                .map(|(id, party, hash, revoked)| {
                    Ok(TokenRecord {
                        token_id: Id::parse(&id).map_err(corrupt)?,
                        party_id: PartyId::trusted(party),
                        secret_hash: hash.try_into().map_err(|_| corrupt("bad token hash"))?,
                        revoked,
                    })
                })
                .collect()
        })
        .await
    }

    /// One party.
    pub async fn party(self: &Arc<Self>, id: PartyId) -> Result<Option<Party>, Rejection> {
        self.read(move |c| Tx::reader(c).party(&id)).await
    }

    /// Parties ordered by id, after `after`.
    pub async fn parties(
        self: &Arc<Self>,
        after: String,
        limit: usize,
    ) -> Result<Vec<Party>, Rejection> {
        self.read(move |c| {
            let mut s = c
                .prepare_cached("SELECT data FROM parties WHERE id > ?1 ORDER BY id LIMIT ?2")
                .map_err(db_err)?;
            let rows = s
                .query_map(params![after, i64_of(limit as u64)?], |r| {
                    r.get::<_, Vec<u8>>(0)
                })
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            rows.iter().map(|b| decode_party(b)).collect()
        })
        .await
    }

    /// One channel.
    pub async fn channel(self: &Arc<Self>, id: Id) -> Result<Option<Channel>, Rejection> {
        self.read(move |c| Tx::reader(c).channel(id)).await
    }

    /// One message.
    pub async fn message(self: &Arc<Self>, id: Id) -> Result<Option<Message>, Rejection> {
        self.read(move |c| Tx::reader(c).message(id)).await
    }

    /// The last sequence in the log.
    pub async fn head(self: &Arc<Self>) -> Result<u64, Rejection> {
        self.read(|c| head(c)).await
    }

    /// A page of channels, newest first, with their creation sequences.
    pub async fn channels(
        self: &Arc<Self>,
        q: ChannelQuery,
    ) -> Result<Vec<(u64, Channel)>, Rejection> {
        self.read(move |c| {
            let sql = query::channels(&q, Style::Question)?;
            rows(c, &sql.text, &sql.args, |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?
            .iter()
            .map(|(seq, b)| Ok((u64::try_from(*seq).map_err(corrupt)?, decode_channel(b)?)))
            .collect()
        })
        .await
    }

    /// A page of messages, newest first, with their creation sequences, and
    /// the log head the page was read at.
    pub async fn messages(
        self: &Arc<Self>,
        q: MessageQuery,
    ) -> Result<(Vec<(u64, Message)>, u64), Rejection> {
        self.read(move |c| {
            // One read transaction: the page and the head come from one snapshot.
            let tx = c.transaction().map_err(db_err)?;
            let head = match q.head {
                Some(h) => h,
                None => head(&tx)?,
            };
            let sql = query::messages(&q, head, Style::Question)?;
            let found = rows(&tx, &sql.text, &sql.args, |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?;
            tx.commit().map_err(db_err)?;
            let page = found
                .iter()
                .map(|(seq, b)| Ok((u64::try_from(*seq).map_err(corrupt)?, decode_message(b)?)))
                .collect::<Result<Vec<_>, Rejection>>()?;
            Ok((page, head))
        })
        .await
    }

    /// A page of events as stored, oldest first.
    pub async fn frames(self: &Arc<Self>, q: EventQuery) -> Result<Vec<Frame>, Rejection> {
        self.read(move |c| {
            let sql = query::events(&q, Style::Question)?;
            rows(c, &sql.text, &sql.args, |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                ))
            })?
            .into_iter()
            .map(|(seq, ch, m, t, k, data)| {
                query::frame(seq, &ch, m.as_deref(), t.as_deref(), k, data)
            })
            .collect()
        })
        .await
    }

    /// A page of events, oldest first.
    pub async fn events(self: &Arc<Self>, q: EventQuery) -> Result<Vec<Event>, Rejection> {
        self.frames(q)
            .await?
            .iter()
            .map(|f| decode_event(&f.data))
            .collect()
    }
}

/// Runs a listing query and maps its rows.
fn rows<T>(
    c: &Connection,
    sql: &str,
    args: &[Arg],
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, Rejection> {
    let params = args.iter().map(|a| match a {
        Arg::Int(i) => rusqlite::types::Value::Integer(*i),
        Arg::Text(t) => rusqlite::types::Value::Text(t.clone()),
    });
    let mut s = c.prepare_cached(sql).map_err(db_err)?;
    s.query_map(rusqlite::params_from_iter(params), f)
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)
}

fn head(c: &Connection) -> Result<u64, Rejection> {
    let h: i64 = c
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
        .map_err(db_err)?;
    u64::try_from(h).map_err(corrupt)
}
