//! The embedded store: one SQLite database file in WAL mode with
//! `synchronous=FULL`, so a commit is on disk before it is acknowledged.
//! One writer thread owns the only write connection and commits whatever
//! has queued in one transaction (group commit); readers use a small pool.

use crate::store::error::{Fault, StoreError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::mpsc;

use super::disk::DataDir;
use super::exec::{WriteTx, run_batch};
use super::query::{self, Arg, Sql, Style};
use super::read::{Reads, Row, Value};
use super::recent::{self, Recent};
use super::record::{corrupt, decode_channel, decode_message, decode_party, leaf_hash};
use super::runs::{self, Runs};
use super::{Job, Publish, TokenRecord, WriterState};
use crate::convert;
use crate::domain::{Channel, Event, Id, Message, Party, PartyId, Time};
use crate::domain::{Outcome, Rejection};
use crate::pb;

/// One schema migration.
enum Migration {
    /// A script.
    Sql(&'static str),
    /// A script, then the leaf hash of every event stored before it.
    LeafHashes(&'static str),
}

/// The schema migrations, in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[Migration] = &[
    Migration::Sql(include_str!("../../migrations/sqlite/0001_init.sql")),
    Migration::LeafHashes(include_str!("../../migrations/sqlite/0002_leaf_hash.sql")),
    Migration::Sql(include_str!(
        "../../migrations/sqlite/0003_token_scopes.sql"
    )),
    Migration::Sql(include_str!(
        "../../migrations/sqlite/0004_recent_requests.sql"
    )),
    Migration::Sql(include_str!(
        "../../migrations/sqlite/0005_request_runs.sql"
    )),
];

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "backchannel.db";

/// Most commands committed in one transaction. It bounds what one commit
/// adds to the WAL: a command writes at most its event and its message
/// record, each under about 80 KiB at the default limits (a 64 KiB body,
/// its subject and labels), so 128 of them add well under 32 MiB.
pub const MAX_BATCH: usize = 128;

/// The write-ahead log's bound: it never grows past this, however long
/// writes go on (DESIGN §5 "Bounded disk").
pub const WAL_LIMIT: u64 = 64 << 20;

/// When the WAL is this large after a commit, the writer itself checkpoints
/// it and restarts it (the next commit writes from its start again) before it
/// commits again. A quarter of the
/// bound, so that one more batch (at most [`MAX_BATCH`] commands, under
/// 32 MiB) cannot carry it past [`WAL_LIMIT`].
pub const WAL_CHECKPOINT_AT: u64 = WAL_LIMIT / 4;

/// How long the writer's checkpoint waits for readers still on an old
/// snapshot.
const CHECKPOINT_BUSY: Duration = Duration::from_millis(100);
/// How long the writer waits before trying a blocked checkpoint again.
const CHECKPOINT_RETRY: Duration = Duration::from_millis(250);

/// The newest events whose leaf hashes the start-up check verifies.
pub const DEFAULT_STARTUP_CHECK_EVENTS: u64 = 100_000;
/// Events the start-up check also verifies, spread evenly over the older
/// part of the log.
pub const STARTUP_CHECK_SAMPLE: u64 = 10_000;

/// Maps a SQLite error to the fault it names. The writer refines a bare I/O
/// error by asking the file system ([`DataDir::fault`]).
fn db_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    let (reason, message) = match e.sqlite_error_code() {
        Some(DiskFull) => (
            Fault::Full,
            format!("the store's disk is full; nothing was written ({e})"),
        ),
        Some(ReadOnly) => (
            Fault::ReadOnly,
            format!("the store's file system refuses writes; nothing was written ({e})"),
        ),
        Some(DatabaseCorrupt | NotADatabase) => (
            Fault::Corrupt,
            format!("the store's file is damaged ({e}); the operator must restore a backup"),
        ),
        Some(
            DatabaseBusy
            | DatabaseLocked
            | SystemIoFailure
            | CannotOpen
            | OutOfMemory
            | FileLockingProtocolFailed
            | PermissionDenied,
        ) => (Fault::Unavailable, format!("the store is unavailable: {e}")),
        _ => (Fault::Internal, format!("internal store error: {e}")),
    };
    StoreError::new(reason, message).caused_by(e)
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(db_err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(db_err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db_err)?;
    // Temporary structures (sorts, statement journals) stay in memory.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(db_err)?;
    // Whoever resets the WAL truncates a larger file back to the bound.
    conn.pragma_update(None, "journal_size_limit", WAL_LIMIT as i64)
        .map_err(db_err)?;
    persist_wal(&conn);
    Ok(conn)
}

/// Keeps the WAL and shared-memory files when the last connection closes
/// (emptied, not deleted), so a restart on a full disk does not need to
/// allocate them again.
fn persist_wal(conn: &Connection) {
    let mut on: std::ffi::c_int = 1;
    // SAFETY: the handle is this open connection's; "main" is a valid
    // NUL-terminated schema name; SQLITE_FCNTL_PERSIST_WAL reads and writes
    // one int through the pointer, which lives across the call.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&raw mut on).cast(),
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(rc, "cannot keep the WAL file across restarts");
    }
}

/// The embedded store's read side; the write side is its writer thread.
pub struct Sqlite {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Bounds the readers working at once.
    readers: Arc<tokio::sync::Semaphore>,
}

/// Most read connections (each with its own page cache) in use at once.
pub const READERS: usize = 8;

/// What [`start`] gives the store.
pub struct Started {
    /// The read side.
    pub reader: Arc<Sqlite>,
    /// The writer's queue.
    pub writer: mpsc::Sender<Job>,
    /// The log's head at opening.
    pub head: u64,
    /// The writer's health.
    pub state: WriterState,
    /// The writer thread.
    pub thread: std::thread::JoinHandle<()>,
}

/// Opens (creating and migrating) the database in `dir`, checks it, and
/// starts the writer thread. The data directory stays locked until the
/// writer stops.
/// How the embedded store opens.
#[derive(Debug, Clone)]
pub struct Options {
    /// The time source of the writer.
    pub clock: crate::clock::Clock,
    /// The newest events whose leaf hashes the start-up check verifies.
    pub check_events: u64,
    /// Recent idempotency records held before they are moved into
    /// their runs (see [`recent`]).
    pub requests_move_at: usize,
}

pub fn start(dir: &Path, publish: Publish, options: Options) -> Result<Started, StoreError> {
    let mut data_dir = DataDir::lock(dir)?;
    let path = data_dir.database(DB_FILE)?;
    let mut conn = open(&path)?;
    migrate(&mut conn)?;
    let head = head(&conn)?;
    integrity_check(&conn, head, options.check_events)?;
    // The writer checkpoints on its own terms (see `Writer::bound_wal`).
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(db_err)?;
    conn.busy_timeout(CHECKPOINT_BUSY).map_err(db_err)?;
    // The writer touches the newest pages of every index: 16 MiB of cache
    // (readers keep SQLite's default 2 MiB; the OS caches the file too).
    // 64 MiB was measured: within the noise, for 48 MiB more memory.
    conn.pragma_update(None, "cache_size", -16384)
        .map_err(db_err)?;
    let requests = recent_requests(&conn, options.requests_move_at)?;
    let runs = Runs::load(&conn, options.requests_move_at).map_err(db_err)?;
    let page_size: u64 = conn
        .pragma_query_value(None, "page_size", |r| r.get::<_, i64>(0))
        .map_err(db_err)?
        .try_into()
        .map_err(corrupt)?;
    let state = WriterState::default();
    // A write probe at start: a full or read-only disk is reported now, and
    // the server still starts, serving reads.
    if let Err(e) = probe(&conn, &data_dir, options.clock.now()) {
        state.failed(&e);
    }
    let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
    let writer_state = state.clone();
    let clock = options.clock;
    let thread = std::thread::Builder::new()
        .name("backchannel-writer".into())
        .spawn(move || {
            let mut writer = Writer {
                conn,
                dir: data_dir,
                cache: Cache {
                    requests,
                    runs,
                    ..Cache::default()
                },
                next_checkpoint: std::time::Instant::now(),
                filter_build: None,
                page_size,
                head,
            };
            writer.start();
            super::writer::run(writer, rx, publish, writer_state, clock, MAX_BATCH)
        })
        .map_err(|e| StoreError::new(Fault::Internal, format!("cannot start writer: {e}")))?;
    Ok(Started {
        reader: Arc::new(Sqlite {
            path,
            idle: Mutex::new(Vec::new()),
            readers: Arc::new(tokio::sync::Semaphore::new(READERS)),
        }),
        writer: tx,
        head,
        state,
        thread,
    })
}

/// Every record of `requests_recent`, for the writer to hold.
fn recent_requests(conn: &Connection, move_at: usize) -> Result<Recent, StoreError> {
    let mut s = conn
        .prepare(
            "SELECT seq, caller, method, request_id, fingerprint, resource_id
             FROM requests_recent",
        )
        .map_err(db_err)?;
    let rows = s
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .map_err(db_err)?;
    let mut held = Recent::new(move_at);
    for row in rows {
        let (seq, caller, method, request_id, fingerprint, resource) = row.map_err(db_err)?;
        held.load(
            &caller,
            &method,
            Id::parse(&request_id).map_err(corrupt)?,
            recent::Record {
                fingerprint: fingerprint
                    .try_into()
                    .map_err(|_| corrupt("bad fingerprint"))?,
                resource: Id::parse(&resource).map_err(corrupt)?,
                row: seq,
            },
        );
    }
    Ok(held)
}

/// One step of moving the recent idempotency records into a run of their
/// own (see [`recent`] and [`runs`]), inside the batch's transaction, so
/// that it costs no commit of its own: the next `budget` records in key
/// order (see [`recent::move_budget`]), or, once all are there, the removal
/// of the next [`recent::MOVE_CHUNK`] of the move's own rows from
/// `requests_recent`.
fn move_step(
    tx: &Connection,
    held: &mut Recent,
    budget: usize,
) -> Result<recent::StepDone, StoreError> {
    match held.step(budget) {
        recent::Step::Idle => Ok(recent::StepDone::Idle),
        recent::Step::Remove(rows) => {
            let mut s = tx
                .prepare_cached("DELETE FROM requests_recent WHERE seq = ?1")
                .map_err(db_err)?;
            for row in rows {
                s.execute([row]).map_err(db_err)?;
            }
            Ok(recent::StepDone::Removed)
        }
        recent::Step::Insert {
            run,
            entries,
            first,
            last,
            records,
        } => {
            if first {
                runs::move_started(tx, run).map_err(db_err)?;
            }
            let mut s = tx
                .prepare_cached(
                    "INSERT INTO request_runs (run, caller, method, request_id, fingerprint, resource_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                )
                .map_err(db_err)?;
            for e in &entries {
                s.execute(params![
                    run,
                    e.caller,
                    e.method,
                    e.request_id.to_string(),
                    &e.record.fingerprint[..],
                    e.record.resource.to_string()
                ])
                .map_err(db_err)?;
            }
            drop(s);
            let records = i64::try_from(records).map_err(corrupt)?;
            if last {
                runs::move_ended(tx, run, records).map_err(db_err)?;
            }
            Ok(recent::StepDone::Inserted {
                keys: held.chunk_written(budget),
                completed: last.then_some((run, records)),
            })
        }
    }
}

/// Builds the filter of the keys in `request_runs` (see [`recent`]) on a
/// connection of its own, a page of keys per read, so that no snapshot is
/// held for long (the writer's checkpoints wait for none). Keys the writer
/// moves meanwhile may be missed here: the writer adds those itself. (A
/// key in two runs, or in a dead one, only costs the filter room.)
fn build_filter(path: &Path, stop: &AtomicBool) -> Result<recent::Keys, StoreError> {
    const PAGE: i64 = 10_000;
    let started = std::time::Instant::now();
    let conn = open(path)?;
    let count: i64 = conn
        .query_row("SELECT count(*) FROM request_runs", [], |r| r.get(0))
        .map_err(db_err)?;
    let mut filter = recent::Keys::new(usize::try_from(count).unwrap_or(0));
    type RunKey = (i64, String, String, String);
    let mut after: Option<RunKey> = None;
    let mut first = conn
        .prepare(
            "SELECT run, caller, method, request_id FROM request_runs
             ORDER BY run, caller, method, request_id LIMIT ?1",
        )
        .map_err(db_err)?;
    let mut next = conn
        .prepare(
            "SELECT run, caller, method, request_id FROM request_runs
             WHERE (run, caller, method, request_id) > (?1, ?2, ?3, ?4)
             ORDER BY run, caller, method, request_id LIMIT ?5",
        )
        .map_err(db_err)?;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(StoreError::new(Fault::Closing, "the store is closing"));
        }
        let row = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?));
        let page: Vec<RunKey> = match &after {
            None => first.query_map([PAGE], row),
            Some((run, c, m, id)) => next.query_map(params![run, c, m, id, PAGE], row),
        }
        .and_then(|rows| rows.collect())
        .map_err(db_err)?;
        for (_, caller, method, id) in &page {
            let id = Id::parse(id).map_err(corrupt)?;
            filter.insert(&recent::filter_item(caller, method, &id));
        }
        match page.into_iter().last() {
            Some(last) => after = Some(last),
            None => break,
        }
    }
    tracing::info!(
        keys = filter.len(),
        capacity = filter.capacity(),
        ms = started.elapsed().as_millis() as u64,
        "filter of idempotency records built"
    );
    Ok(filter)
}

/// One small committed write outside the record, to learn whether the
/// store can commit.
fn probe(conn: &Connection, dir: &DataDir, now: Time) -> Result<(), StoreError> {
    dir.check()?;
    dir.writable()?;
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('write_probe', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [now.0],
    )
    .map_err(db_err)
    .map_err(|e| refine(e, dir))?;
    dir.check()
}

/// A bare I/O error, named by what the file system says.
fn refine(e: StoreError, dir: &DataDir) -> StoreError {
    if e.fault != Fault::Unavailable {
        return e;
    }
    match dir.fault() {
        Some(Fault::Lost) => dir.check().err().unwrap_or(e),
        Some(Fault::Full) => StoreError::new(
            Fault::Full,
            format!(
                "the store's disk is full; nothing was written ({})",
                e.message
            ),
        ),
        Some(Fault::ReadOnly) => StoreError::new(
            Fault::ReadOnly,
            format!(
                "the store's file system refuses writes; nothing was written ({})",
                e.message
            ),
        ),
        _ => e,
    }
}

/// Verifies the leaf hashes of the newest `newest` events and of
/// [`STARTUP_CHECK_SAMPLE`] events spread over the rest, and that the log
/// has no gap. Refuses to serve a damaged store.
fn integrity_check(conn: &Connection, head: u64, newest: u64) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let count: i64 = conn
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .map_err(db_err)?;
    let damaged = |what: String| {
        StoreError::new(
            Fault::Corrupt,
            format!(
                "the store in this data directory is damaged: {what}. It is not served. \
                 Stop here, keep the damaged directory for inspection, and restore the \
                 latest backup (see the README, \"Backup and restore\")"
            ),
        )
    };
    if u64::try_from(count).ok() != Some(head) {
        return Err(damaged(format!(
            "the log holds {count} events but its last sequence is {head} (events are missing)"
        )));
    }
    let mut checked = 0u64;
    let mut verify = |seq: i64, data: Vec<u8>, hash: Option<Vec<u8>>| -> Result<(), StoreError> {
        if hash.as_deref() != Some(&leaf_hash(&data)[..]) {
            tracing::error!(sequence = seq, "event failed its integrity check at start");
            return Err(damaged(format!(
                "event #{seq} does not match its leaf hash"
            )));
        }
        checked += 1;
        Ok(())
    };
    // The newest events, in one range scan.
    let recent_from = head.saturating_sub(newest) + 1;
    {
        let mut s = conn
            .prepare("SELECT seq, data, leaf_hash FROM events WHERE seq >= ?1 ORDER BY seq")
            .map_err(db_err)?;
        let mut rows = s.query([query::int(recent_from)?]).map_err(db_err)?;
        while let Some(r) = rows.next().map_err(db_err)? {
            verify(
                r.get(0).map_err(db_err)?,
                r.get(1).map_err(db_err)?,
                r.get(2).map_err(db_err)?,
            )?;
        }
    }
    // A sample of the older ones, each looked up by its sequence: the cost
    // does not grow with the log.
    let older = recent_from.saturating_sub(1);
    if older > 0 && newest > 0 {
        let step = (older / STARTUP_CHECK_SAMPLE).max(1);
        let mut s = conn
            .prepare("SELECT seq, data, leaf_hash FROM events WHERE seq = ?1")
            .map_err(db_err)?;
        let mut seq = step;
        while seq <= older {
            let row: Option<(i64, Vec<u8>, Option<Vec<u8>>)> = s
                .query_row([query::int(seq)?], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
                .map_err(db_err)?;
            match row {
                Some((seq, data, hash)) => verify(seq, data, hash)?,
                None => {
                    return Err(damaged(format!("event #{seq} is missing from the log")));
                }
            }
            seq += step;
        }
    }
    tracing::info!(
        events = head,
        checked,
        ms = started.elapsed().as_millis() as u64,
        "start-up integrity check passed"
    );
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(db_err)?;
    for i in super::schema::pending(applied, MIGRATIONS.len())? {
        let m = &MIGRATIONS[i];
        let tx = conn.transaction().map_err(db_err)?;
        match m {
            Migration::Sql(sql) => tx.execute_batch(sql).map_err(db_err)?,
            Migration::LeafHashes(sql) => {
                tx.execute_batch(sql).map_err(db_err)?;
                fill_leaf_hashes(&tx)?;
            }
        }
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
        let k = super::schema::new_page_key()?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('page_key', ?1)",
            [&k[..]],
        )
        .map_err(db_err)?;
    }
    Ok(())
}

/// Computes the leaf hash of every event that has none (a store made before
/// schema version 2), with a progress line every 100,000 events.
fn fill_leaf_hashes(tx: &Connection) -> Result<(), StoreError> {
    let total: i64 = tx
        .query_row(
            "SELECT COUNT(*) FROM events WHERE leaf_hash IS NULL",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    if total == 0 {
        return Ok(());
    }
    tracing::info!(
        events = total,
        "computing the leaf hash of every stored event"
    );
    let mut after = 0i64;
    let mut done = 0i64;
    loop {
        let batch: Vec<(i64, Vec<u8>)> = tx
            .prepare_cached("SELECT seq, data FROM events WHERE seq > ?1 ORDER BY seq LIMIT 10000")
            .and_then(|mut s| {
                s.query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(db_err)?;
        let Some(last) = batch.last().map(|(seq, _)| *seq) else {
            break;
        };
        let mut update = tx
            .prepare_cached("UPDATE events SET leaf_hash = ?2 WHERE seq = ?1")
            .map_err(db_err)?;
        for (seq, data) in &batch {
            update
                .execute(params![seq, &leaf_hash(data)[..]])
                .map_err(db_err)?;
        }
        done += batch.len() as i64;
        if done % 100_000 < 10_000 {
            tracing::info!(done, total, "leaf hashes computed");
        }
        after = last;
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
    /// The idempotency records of `requests_recent`: all of them, not a
    /// cache (see [`recent`]).
    requests: Recent,
    /// The runs of `request_runs` (see [`runs`]).
    runs: Runs,
}

impl Cache {
    /// The batch did not commit: forgets what it read or wrote.
    fn clear(&mut self) {
        self.channels.clear();
        self.messages.clear();
        self.requests.rolled_back();
        self.runs.rolled_back();
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

/// The writer thread's state: the only write connection, the data
/// directory it watches, and what it has read or written.
struct Writer {
    conn: Connection,
    dir: DataDir,
    cache: Cache,
    /// No restarting checkpoint before this: one was just blocked by a
    /// reader on an old snapshot (a long listing, a backup), and trying
    /// after every commit would stall the writer for nothing.
    next_checkpoint: std::time::Instant,
    /// The filter of the idempotency records' keys being built, if it is.
    filter_build: Option<FilterBuild>,
    /// The database's page size: a WAL frame holds one page.
    page_size: u64,
    /// The last sequence committed.
    head: u64,
}

/// The bytes of a WAL frame's header, before its page.
const WAL_FRAME_HEADER: u64 = 24;

thread_local! {
    /// The frames in the writer's WAL after its last commit (SQLite's WAL
    /// hook tells; the writer thread is the one that commits).
    static WAL_FRAMES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// SQLite's WAL hook: called on the committing thread after each commit.
fn note_wal_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(u64::try_from(frames).unwrap_or(0)));
    Ok(())
}

/// The thread building the filter of the idempotency records' keys hands it over here.
struct FilterBuild {
    /// Where the thread hands the filter over.
    built: std::sync::mpsc::Receiver<Option<recent::Keys>>,
    /// Asks the thread to stop (the store is closing).
    stop: Arc<AtomicBool>,
    /// The thread, joined before the writer's last checkpoint (its read
    /// snapshot would keep the WAL from being emptied).
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    /// Prepares the writer's thread: the WAL hook (it keeps its count in a
    /// thread-local of the committing thread) and the filter's build.
    fn start(&mut self) {
        self.conn.wal_hook(Some(note_wal_frames));
        self.build_filter();
    }

    /// One transaction over `jobs`; `Ok` only once it is durable in the
    /// data directory the server opened.
    fn commit_batch(
        &mut self,
        jobs: &[Job],
        head: &mut u64,
        now: Time,
        results: &mut Vec<Result<Outcome, Rejection>>,
        events: &mut Vec<super::Committed>,
    ) -> Result<(recent::StepDone, runs::Done), StoreError> {
        self.dir.check()?;
        self.dir.writable()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let mut wt = Tx {
            conn: &tx,
            cache: Some(&mut self.cache),
        };
        run_batch(&mut wt, jobs, head, now, results, events)?;
        let budget = recent::move_budget(jobs.len());
        let step = move_step(&tx, &mut self.cache.requests, budget)?;
        let runs_done = self
            .cache
            .runs
            .step(
                &tx,
                runs::merge_budget(jobs.len(), self.cache.runs.live_count()),
            )
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        // Committed into files that are no longer the data directory's
        // (removed or replaced meanwhile): not acknowledged.
        self.dir.check()?;
        Ok((step, runs_done))
    }

    /// Checkpoints and restarts the WAL once it reaches
    /// [`WAL_CHECKPOINT_AT`]. It is restarted, not truncated: the next
    /// commits overwrite blocks the file already has, which costs the file
    /// system far less than growing it again (measured: +13 % sustained
    /// sends, docs/PERFORMANCE.md); the file stays at about
    /// [`WAL_CHECKPOINT_AT`] and is emptied at a clean stop. The writer does it itself, between commits:
    /// a checkpoint that runs beside a writer that never pauses never
    /// catches up (the WAL restarts only when a checkpoint has copied all of
    /// it and no reader is on it), so under sustained writes the WAL grew
    /// without end. A background checkpoint beside this one was measured
    /// too: it took the checkpoint lock when this one needed it, and the
    /// WAL went over its bound again (docs/PERFORMANCE.md).
    fn bound_wal(&mut self) {
        let wal = self.dir.path().join(format!("{DB_FILE}-wal"));
        let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        metrics::gauge!(crate::observe::WAL_BYTES).set(size as f64);
        // What the WAL holds since it was last restarted, not the file's
        // size: a restarted WAL keeps its size, and judged by it every
        // commit after the first checkpoint checkpointed again (two more
        // fsyncs per commit).
        let held = WAL_FRAMES.with(std::cell::Cell::get) * (self.page_size + WAL_FRAME_HEADER);
        let started = std::time::Instant::now();
        if held < WAL_CHECKPOINT_AT || started < self.next_checkpoint {
            return;
        }
        let done = match self
            .conn
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0))
        {
            Ok(0) => {
                // The next commit writes from the WAL's start again.
                WAL_FRAMES.with(|f| f.set(0));
                true
            }
            Ok(_) => {
                tracing::debug!(bytes = size, "WAL checkpoint blocked by a reader");
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "WAL checkpoint failed");
                false
            }
        };
        if !done {
            self.next_checkpoint = started + CHECKPOINT_RETRY;
            if size > WAL_LIMIT {
                tracing::warn!(
                    bytes = size,
                    "the WAL is over its bound: a reader (a long listing or a backup) holds an old snapshot"
                );
            }
        }
        metrics::histogram!(crate::observe::WAL_CHECKPOINT).record(started.elapsed().as_secs_f64());
    }

    /// Has a thread of its own build the filter of the idempotency records' keys.
    fn build_filter(&mut self) {
        let path = self.dir.path().join(DB_FILE);
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("backchannel-filter".into())
            .spawn(move || {
                let built = build_filter(&path, &stopped)
                    .inspect_err(|e| {
                        if e.fault == Fault::Closing {
                            return;
                        }
                        tracing::warn!(
                            error = %e,
                            "cannot build the filter of idempotency records; every lookup reads the runs"
                        );
                    })
                    .ok();
                let _ = tx.send(built);
            });
        match spawned {
            Ok(thread) => {
                self.filter_build = Some(FilterBuild {
                    built: rx,
                    stop,
                    thread,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the thread that builds the filter of idempotency records");
                self.cache.requests.filter_built(None);
            }
        }
    }

    /// Installs the filter once it is built.
    fn poll_filter(&mut self) {
        if let Some(f) = &self.filter_build {
            match f.built.try_recv() {
                Ok(built) => {
                    self.cache.requests.filter_built(built);
                    self.filter_build = None;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.cache.requests.filter_built(None);
                    self.filter_build = None;
                }
            }
        }
    }

    /// Empties the WAL into the database file on a clean stop.
    fn shut(mut self) {
        if let Some(f) = self.filter_build.take() {
            f.stop.store(true, Ordering::Relaxed);
            if f.thread.join().is_err() {
                tracing::warn!("the thread building the filter of idempotency records panicked");
            }
        }
        // Readers finishing their last page may still need a moment.
        let _ = self.conn.busy_timeout(Duration::from_secs(5));
        if !self.dir.is_lost() {
            match self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                }) {
                Ok(0) => {}
                Ok(_) => tracing::warn!("the WAL could not be emptied at stop (a reader was busy)"),
                Err(e) => tracing::warn!(error = %e, "the WAL could not be emptied at stop"),
            }
        }
        tracing::info!("writer stopped");
    }
}

impl super::writer::Commit for Writer {
    type Done = (recent::StepDone, runs::Done);

    fn commit(
        &mut self,
        jobs: &[Job],
        now: Time,
        results: &mut Vec<Result<Outcome, Rejection>>,
        events: &mut Vec<super::Committed>,
    ) -> Result<Self::Done, StoreError> {
        self.cache.trim();
        // The head moves only with a commit.
        let mut head = self.head;
        let done = self
            .commit_batch(jobs, &mut head, now, results, events)
            .map_err(|e| refine(e, &self.dir))?;
        self.head = head;
        Ok(done)
    }

    fn committed(&mut self, (step, runs_done): Self::Done) {
        self.cache.requests.committed();
        if let recent::StepDone::Inserted {
            completed: Some((run, records)),
            ..
        } = step
        {
            self.cache.runs.added(run, records);
        }
        if let Some((merged, records, took)) = self.cache.runs.committed(runs_done) {
            tracing::info!(
                merged,
                records,
                ms = took.as_millis() as u64,
                live = self.cache.runs.live_count(),
                "runs of idempotency records merged"
            );
        }
        if let Some((moved, took)) = self.cache.requests.step_committed(step) {
            tracing::info!(
                moved,
                ms = took.as_millis() as u64,
                held = self.cache.requests.len(),
                live = self.cache.runs.live_count(),
                "recent idempotency records moved into a run"
            );
        }
        let runs = &mut self.cache.runs;
        self.cache.requests.start_move(|| runs.allocate());
    }

    fn failed(&mut self, _e: &StoreError) {
        // What the cache learned in the batch was not committed.
        self.cache.clear();
    }

    fn after_batch(&mut self, ok: bool) {
        if ok {
            self.bound_wal();
        }
        self.poll_filter();
    }

    fn close(self) {
        self.shut();
    }
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

fn i64_of(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(corrupt)
}

impl WriteTx for Tx<'_> {
    fn party(&mut self, id: &PartyId) -> Result<Option<Party>, StoreError> {
        let b: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT data FROM parties WHERE id = ?1")
            .and_then(|mut s| s.query_row([id.as_str()], |r| r.get(0)).optional())
            .map_err(db_err)?;
        b.map(|b| decode_party(&b)).transpose()
    }

    fn insert_party(&mut self, p: &Party) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT INTO parties (id, data) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![p.id.as_str(), encode(pb::Party::from(p))]))
            .map_err(db_err)?;
        Ok(())
    }

    fn insert_token(&mut self, t: &TokenRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO tokens (id, party_id, secret_hash, create_time, read_only, expire_time)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    t.token_id.to_string(),
                    t.party_id.as_str(),
                    &t.secret_hash[..],
                    t.create_time.0,
                    t.read_only,
                    t.expire_time.map(|e| e.0)
                ])
            })
            .map_err(db_err)?;
        Ok(())
    }

    fn touch_token(&mut self, id: Id, at: Time) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE tokens SET last_use_time = MAX(COALESCE(last_use_time, 0), ?2) WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id.to_string(), at.0]))
            .map_err(db_err)?;
        Ok(())
    }

    fn token_revoked(&mut self, id: Id) -> Result<Option<bool>, StoreError> {
        let revoked: Option<Option<i64>> = self
            .conn
            .prepare_cached("SELECT revoke_time FROM tokens WHERE id = ?1")
            .and_then(|mut s| s.query_row([id.to_string()], |r| r.get(0)).optional())
            .map_err(db_err)?;
        Ok(revoked.map(|t| t.is_some()))
    }

    fn revoke_token(&mut self, id: Id, at: Time) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE tokens SET revoke_time = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id.to_string(), at.0]))
            .map_err(db_err)?;
        Ok(())
    }

    fn channel(&mut self, id: Id) -> Result<Option<Channel>, StoreError> {
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

    fn save_channel(&mut self, c: &Channel, insert_seq: Option<u64>) -> Result<(), StoreError> {
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

    fn message(&mut self, id: Id) -> Result<Option<Message>, StoreError> {
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

    fn save_message(&mut self, m: &Message, insert_seq: Option<u64>) -> Result<(), StoreError> {
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

    fn overdue(&mut self, now: Time, limit: usize) -> Result<Vec<Id>, StoreError> {
        let mut s = self
            .conn
            .prepare_cached(query::overdue(Style::Question))
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
    ) -> Result<Option<([u8; 32], Id)>, StoreError> {
        if let Some(r) = self
            .cache
            .as_ref()
            .and_then(|c| c.requests.get(caller, method, request_id))
        {
            return Ok(Some((r.fingerprint, r.resource)));
        }
        if self
            .cache
            .as_ref()
            .is_some_and(|c| !c.requests.may_be_indexed(caller, method, request_id))
        {
            return Ok(None);
        }
        let id = request_id.to_string();
        let row = match self.cache.as_ref() {
            Some(c) => runs::find(self.conn, c.runs.live(), caller, method, &id),
            None => runs::listed(self.conn)
                .and_then(|live| runs::find(self.conn, live.into_iter(), caller, method, &id)),
        }
        .map_err(db_err)?;
        match row {
            None => Ok(None),
            Some((fp, id)) => Ok(Some((
                fp.try_into().map_err(|_| corrupt("bad fingerprint"))?,
                Id::parse(&id).map_err(corrupt)?,
            ))),
        }
    }

    /// Appends the record to `requests_recent` (see [`recent`]).
    fn insert_request(
        &mut self,
        caller: &str,
        method: &str,
        request_id: Id,
        fingerprint: &[u8; 32],
        resource: Id,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO requests_recent (caller, method, request_id, fingerprint, resource_id)
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
        let row = self.conn.last_insert_rowid();
        if let Some(c) = self.cache.as_mut() {
            c.requests.insert(
                caller,
                method,
                request_id,
                recent::Record {
                    fingerprint: *fingerprint,
                    resource,
                    row,
                },
            );
        }
        Ok(())
    }

    fn probe(&mut self, now: Time) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('write_probe', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut s| s.execute([now.0]))
            .map_err(db_err)?;
        Ok(())
    }

    fn append(&mut self, e: &Event, data: &[u8], leaf_hash: &[u8; 32]) -> Result<(), StoreError> {
        let m = e.message();
        let seq = i64_of(e.sequence)?;
        self.conn
            .prepare_cached(
                "INSERT INTO events (seq, channel_id, message_id, thread_id, type, data, leaf_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    seq,
                    e.channel_id.to_string(),
                    m.map(|m| m.id.to_string()),
                    m.map(|m| m.thread_id.to_string()),
                    convert::event_type_pb(e.kind) as i32,
                    data,
                    &leaf_hash[..]
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
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        // At most READERS connections (and blocking threads) read at once.
        let permit = self
            .readers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::new(Fault::Closing, "the store is closing"))?;
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
        .map_err(|e| StoreError::new(Fault::Internal, format!("reader failed: {e}")))?
    }
}

/// A rusqlite row as the read side's [`Row`].
fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    use rusqlite::types::ValueRef;
    let n = r.as_ref().column_count();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(match r.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Real(v) => Value::Text(v.to_string()),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
        });
    }
    Ok(Row(out))
}

fn params(args: &[Arg]) -> impl Iterator<Item = rusqlite::types::Value> + '_ {
    args.iter().map(|a| match a {
        Arg::Int(i) => rusqlite::types::Value::Integer(*i),
        Arg::Text(t) => rusqlite::types::Value::Text(t.clone()),
    })
}

/// The rows of `sql` on `c`.
fn sql_rows(c: &Connection, sql: &Sql) -> Result<Vec<Row>, StoreError> {
    let mut s = c.prepare_cached(&sql.text).map_err(db_err)?;
    s.query_map(rusqlite::params_from_iter(params(&sql.args)), row_of)
        .map_err(db_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db_err)
}

impl Reads for Arc<Sqlite> {
    const STYLE: Style = Style::Question;

    async fn rows(&self, sql: Sql) -> Result<Vec<Row>, StoreError> {
        self.read(move |c| sql_rows(c, &sql)).await
    }

    async fn at_head(
        &self,
        known: Option<u64>,
        page: impl FnOnce(u64) -> Result<Sql, StoreError> + Send + 'static,
    ) -> Result<(Vec<Row>, u64), StoreError> {
        self.read(move |c| {
            // One read transaction: the page and the head come from one snapshot.
            let tx = c.transaction().map_err(db_err)?;
            let head = match known {
                Some(h) => h,
                None => head(&tx)?,
            };
            let rows = sql_rows(&tx, &page(head)?)?;
            tx.commit().map_err(db_err)?;
            Ok((rows, head))
        })
        .await
    }

    async fn event_rows(&self, sql: Sql, max_bytes: usize) -> Result<Vec<Row>, StoreError> {
        self.read(move |c| {
            let mut s = c.prepare_cached(&sql.text).map_err(db_err)?;
            let mut rows = s
                .query(rusqlite::params_from_iter(params(&sql.args)))
                .map_err(db_err)?;
            // Rows are read one at a time, and no more once the page holds
            // `max_bytes`.
            let (mut out, mut bytes) = (Vec::new(), 0usize);
            while bytes < max_bytes
                && let Some(r) = rows.next().map_err(db_err)?
            {
                let row = row_of(r).map_err(db_err)?;
                bytes = bytes.saturating_add(row.bytes(5).map_or(0, <[u8]>::len));
                out.push(row);
            }
            Ok(out)
        })
        .await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.read(|c| head(c)).await
    }
}

fn head(c: &Connection) -> Result<u64, StoreError> {
    let h: i64 = c
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
        .map_err(db_err)?;
    u64::try_from(h).map_err(corrupt)
}
