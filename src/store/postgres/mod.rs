//! The PostgreSQL store: several stateless replicas share one record.
//!
//! Writes: each replica has one writer thread with its own connection that
//! commits whatever has queued in one transaction (group commit). Every
//! writing transaction (but a batch of health probes alone, which appends
//! nothing) first locks the one-row `log_head` table and holds the lock
//! until it commits, so sequences are handed out in commit order
//! across all replicas and a reader of "everything after N" cannot skip an
//! event that commits late. The transaction also sends a `NOTIFY` so other
//! replicas wake up; the log stays the source of truth, so a lost
//! notification costs latency, never an event.
//!
//! Reads: a pool of async connections. Every failure to reach the database
//! is `UNAVAILABLE`; the writer and the pool reconnect by themselves.

use crate::store::error::{Fault, StoreError};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt as _;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls};

use super::exec::{Statements, WriteTx, run_batch};
use super::query::{self, Arg, Sql, Style, int};
use super::read::{Reads, Row, Value};
use super::record::{corrupt, decode_channel, decode_message};
use super::{Job, Publish, WriterState};
use crate::audit::merkle::{Frontier, Hash};
use crate::convert;
use crate::domain::{Channel, Command, Event, Id, Message, Time};
use crate::domain::{Outcome, Rejection};
use crate::pb;

mod listen;
mod read;
mod tx;
mod writer;

use tx::{Deferred, PgTx};
use writer::PgWriter;

/// The schema migrations, in order.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/postgres/0001_init.sql"),
    include_str!("../../../migrations/postgres/0002_leaf_hash.sql"),
    include_str!("../../../migrations/postgres/0003_token_scopes.sql"),
    include_str!("../../../migrations/postgres/0004_merkle_tree.sql"),
];

/// Most commands committed in one transaction.
pub const MAX_BATCH: usize = 512;
/// Read connections per replica.
pub const POOL_SIZE: usize = 16;
/// How long a call waits for the database before `UNAVAILABLE`.
pub const DB_TIMEOUT: Duration = Duration::from_secs(5);
/// The `NOTIFY` channel that announces new events.
pub const EVENTS_CHANNEL: &str = "backchannel_events";
/// The `NOTIFY` channel that announces token changes.
pub const TOKENS_CHANNEL: &str = "backchannel_tokens";
/// Advisory lock key that serialises migrations of replicas starting at once.
const MIGRATION_LOCK: i64 = 0x6263_6d69_6772_6174;

/// Something another replica changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// New events were committed.
    Events,
    /// A token was issued or revoked.
    Tokens,
    /// The notification connection was (re)established: anything may have changed.
    Reconnected,
}

/// What went wrong, with PostgreSQL's SQLSTATE, message, detail and hint
/// when the server sent them (tokio-postgres's own `Display` says only
/// "db error").
pub fn pg_cause(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                s += &format!(" (detail: {d})");
            }
            if let Some(h) = db.hint() {
                s += &format!(" (hint: {h})");
            }
            s
        }
        None => match e.source() {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    // Errors without a SQLSTATE are I/O or a closed connection; classes 08
    // (connection), 53 (resources), 57 (operator intervention) and 40
    // (serialization) are transient too.
    let code = e.code().map(|c| c.code().to_owned());
    let transient = match &code {
        None => true,
        Some(c) => matches!(&c[..2], "08" | "53" | "57" | "40"),
    };
    let cause = pg_cause(&e);
    // 53100: disk full on the database server.
    let reason = match code.as_deref() {
        Some("53100") => Fault::Full,
        Some("25006") => Fault::ReadOnly,
        _ if transient => Fault::Unavailable,
        _ => Fault::Internal,
    };
    let message = match reason {
        Fault::Full => "the database server has no disk space left; nothing was written".to_owned(),
        Fault::ReadOnly => {
            "the database refuses writes (read-only); nothing was written".to_owned()
        }
        Fault::Unavailable => format!(
            "the database is unavailable ({cause}); retry (with the same request_id for writes)"
        ),
        _ => format!("database error: {cause}"),
    };
    StoreError::new(reason, message).caused_by(e)
}

/// The startup failure for a database that cannot be reached or used:
/// names the cause, and for a missing database or role, the command that
/// creates it.
fn connect_err(cfg: &tokio_postgres::Config, e: tokio_postgres::Error) -> StoreError {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("postgres");
    let dbname = cfg.get_dbname().unwrap_or(user);
    let cause = pg_cause(&e);
    let advice = match e.code().map(|c| c.code()) {
        Some("3D000") => format!(
            "; the database '{dbname}' does not exist: create it with \
             `createdb -h {host} -p {port} -U {user} {dbname}` \
             (or `CREATE DATABASE \"{dbname}\";` in psql)"
        ),
        Some("28000") if cause.contains("role") => format!(
            "; the role '{user}' does not exist: create it with \
             `createuser -h {host} -p {port} -U postgres --createdb {user}`"
        ),
        Some("28P01") => "; the password was refused: check the URL's user and password".into(),
        Some("42501") => format!(
            "; the role '{user}' lacks a privilege the schema needs (CREATE on database '{dbname}')"
        ),
        None => format!("; is PostgreSQL running and reachable at {host}:{port}?"),
        _ => String::new(),
    };
    let message = format!("cannot use PostgreSQL at {host}:{port}/{dbname}: {cause}{advice}");
    StoreError::new(Fault::Unavailable, message)
}

fn unavailable(what: impl std::fmt::Display) -> StoreError {
    StoreError::new(
        Fault::Unavailable,
        format!(
            "the database is unavailable ({what}); retry (with the same request_id for writes)"
        ),
    )
}

fn config(url: &str) -> Result<tokio_postgres::Config, StoreError> {
    let mut c = tokio_postgres::Config::from_str(url)
        .map_err(|e| StoreError::new(Fault::Unavailable, format!("bad database URL: {e}")))?;
    if c.get_connect_timeout().is_none() {
        c.connect_timeout(DB_TIMEOUT);
    }
    c.keepalives(true).keepalives_idle(Duration::from_secs(30));
    if c.get_application_name().is_none() {
        c.application_name("backchannel");
    }
    Ok(c)
}

/// The PostgreSQL store's read side; the write side is its writer thread.
pub struct Postgres {
    pool: Pool,
    config: tokio_postgres::Config,
}

/// Connects, applies migrations (one replica at a time), and starts the
/// writer thread. Returns the reader, the writer's queue and the log head.
pub async fn start(
    url: &str,
    publish: Publish,
    state: WriterState,
    clock: crate::clock::Clock,
) -> Result<
    (
        Arc<Postgres>,
        mpsc::Sender<Job>,
        u64,
        std::thread::JoinHandle<()>,
    ),
    StoreError,
> {
    let cfg = config(url)?;
    migrate(&cfg).await?;
    let mgr = Manager::from_config(
        cfg.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(mgr)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(DB_TIMEOUT))
        .create_timeout(Some(DB_TIMEOUT))
        .recycle_timeout(Some(DB_TIMEOUT))
        .build()
        .map_err(|e| StoreError::new(Fault::Internal, format!("pool: {e}")))?;
    let store = Arc::new(Postgres {
        pool,
        config: cfg.clone(),
    });
    let head = store.head().await?;
    let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
    let writer_cfg = postgres::Config::from(cfg);
    let thread = std::thread::Builder::new()
        .name("backchannel-writer".into())
        .spawn(move || {
            let writer = PgWriter {
                cfg: writer_cfg,
                conn: None,
                stmts: HashMap::new(),
                tree: None,
            };
            super::writer::run(writer, rx, publish, state, clock, MAX_BATCH)
        })
        .map_err(|e| StoreError::new(Fault::Internal, format!("cannot start writer: {e}")))?;
    Ok((store, tx, head, thread))
}

async fn migrate(cfg: &tokio_postgres::Config) -> Result<(), StoreError> {
    let (mut client, conn) = cfg.connect(NoTls).await.map_err(|e| connect_err(cfg, e))?;
    let driver = tokio::spawn(conn);
    let result = async {
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_err)?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version BIGINT PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await
            .map_err(pg_err)?;
        let applied: i64 = client
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await
            .map_err(pg_err)?
            .get(0);
        for i in super::schema::pending(applied, MIGRATIONS.len())? {
            let sql = MIGRATIONS[i];
            let tx = client.transaction().await.map_err(pg_err)?;
            tx.batch_execute(sql).await.map_err(pg_err)?;
            let version = int(i as u64 + 1)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            tracing::info!(version, "applied schema migration");
        }
        let key = super::schema::new_page_key()?;
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ('page_key', $1) ON CONFLICT DO NOTHING",
                &[&&key[..]],
            )
            .await
            .map_err(pg_err)?;
        // The log's id, made once with the store (it names the log in
        // checkpoints by default).
        let log_id = crate::domain::Id::new().to_string().into_bytes();
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ('log_id', $1) ON CONFLICT DO NOTHING",
                &[&log_id],
            )
            .await
            .map_err(pg_err)?;
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_err)?;
        Ok(())
    }
    .await;
    drop(client);
    let _ = driver.await;
    result
}
