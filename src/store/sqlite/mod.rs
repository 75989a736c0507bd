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
use super::exec::{Statements, WriteTx, run_batch};
use super::query::{self, Arg, Sql, Style};
use super::read::{Reads, Row, Value};
use super::recent::{self, Recent};
use super::record::{corrupt, decode_channel, decode_message, leaf_hash};
use super::runs::{self, Runs};
use super::tree;
use super::{Job, Publish, WriterState};
use crate::audit::merkle::{Frontier, Hash};
use crate::convert;
use crate::domain::{Channel, Event, Id, Message, Time};
use crate::domain::{Outcome, Rejection};
use crate::pb;

mod check;
mod read;
mod requests;
mod tx;
mod writer;

use check::{integrity_check, migrate};
use requests::{build_filter, move_step, recent_requests};
use tx::Tx;
use writer::{Cache, Writer};

/// One schema migration.
enum Migration {
    /// A script.
    Sql(&'static str),
    /// A script, then the leaf hash of every event stored before it.
    LeafHashes(&'static str),
    /// A script, then the Merkle tree of the events stored before it.
    Tree(&'static str),
}

/// The schema migrations, in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[Migration] = &[
    Migration::Sql(include_str!("../../../migrations/sqlite/0001_init.sql")),
    Migration::LeafHashes(include_str!(
        "../../../migrations/sqlite/0002_leaf_hash.sql"
    )),
    Migration::Sql(include_str!(
        "../../../migrations/sqlite/0003_token_scopes.sql"
    )),
    Migration::Sql(include_str!(
        "../../../migrations/sqlite/0004_recent_requests.sql"
    )),
    Migration::Sql(include_str!(
        "../../../migrations/sqlite/0005_request_runs.sql"
    )),
    Migration::Tree(include_str!(
        "../../../migrations/sqlite/0006_merkle_tree.sql"
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
    // Room for every statement the server runs (the listings', the tree's
    // few shapes, the writer's): SQLite's default of 16 made the proofs
    // prepare some of theirs again on every call.
    conn.set_prepared_statement_cache_capacity(64);
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
    let tree = tree::frontier(
        &mut Tx {
            conn: &conn,
            cache: None,
        },
        head,
    )?;
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
                tree,
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

fn head(c: &Connection) -> Result<u64, StoreError> {
    let h: i64 = c
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
        .map_err(db_err)?;
    u64::try_from(h).map_err(corrupt)
}
