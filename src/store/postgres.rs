//! The PostgreSQL store: several stateless replicas share one record.
//!
//! Writes: each replica has one writer thread with its own connection that
//! commits whatever has queued in one transaction (group commit). Every
//! writing transaction first locks the one-row `log_head` table and holds
//! the lock until it commits, so sequences are handed out in commit order
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

use super::exec::{WriteTx, run_batch};
use super::query::{self, Arg, Sql, Style, int};
use super::read::{Reads, Row, Value};
use super::record::{corrupt, decode_channel, decode_message, decode_party};
use super::{Job, Publish, TokenRecord, WriterState};
use crate::convert;
use crate::domain::{Channel, Command, Event, Id, Message, Party, PartyId, Time};
use crate::domain::{Outcome, Rejection};
use crate::pb;

/// The schema migrations, in order.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_leaf_hash.sql"),
    include_str!("../../migrations/postgres/0003_token_scopes.sql"),
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

/// The writer: like the embedded store's, plus the `log_head` lock that
/// orders every replica's appends, and a connection re-established after
/// the database goes away.
struct PgWriter {
    cfg: postgres::Config,
    conn: Option<postgres::Client>,
    stmts: HashMap<&'static str, postgres::Statement>,
}

impl super::writer::Commit for PgWriter {
    type Done = ();

    fn commit(
        &mut self,
        jobs: &[Job],
        now: Time,
        results: &mut Vec<Result<Outcome, Rejection>>,
        events: &mut Vec<super::Committed>,
    ) -> Result<(), StoreError> {
        let client = match &mut self.conn {
            Some(c) if !c.is_closed() => c,
            _ => {
                self.stmts.clear();
                let c = self
                    .cfg
                    .connect(postgres::NoTls)
                    .and_then(keyed_plans)
                    .map_err(|e| unavailable(pg_cause(&e)))?;
                self.conn.insert(c)
            }
        };
        commit_batch(client, &mut self.stmts, jobs, now, results, events)
    }

    fn failed(&mut self, e: &StoreError) {
        if e.fault == Fault::Unavailable || self.conn.as_ref().is_some_and(|c| c.is_closed()) {
            self.conn = None;
        }
    }

    fn close(self) {}
}

/// Every statement of the writer finds its rows by key, the batch's
/// statements over arrays too (`unnest` joined to a table's key). Given a
/// few hundred keys, the planner chose to hash the keys and scan the whole
/// table instead, so each batch got slower as the table grew (sends fell
/// from 4,600/s to under 1,000/s within 300,000 messages). On the writer's
/// connection joins are nested loops over the index.
fn keyed_plans(mut c: postgres::Client) -> Result<postgres::Client, postgres::Error> {
    c.batch_execute("SET enable_hashjoin = off; SET enable_mergejoin = off")?;
    Ok(c)
}

fn commit_batch(
    client: &mut postgres::Client,
    stmts: &mut HashMap<&'static str, postgres::Statement>,
    jobs: &[Job],
    now: Time,
    results: &mut Vec<Result<Outcome, Rejection>>,
    events: &mut Vec<super::Committed>,
) -> Result<(), StoreError> {
    let mut tx = client.transaction().map_err(pg_err)?;
    // A batch that only probes the store or stores token uses (which only
    // ever move forward) appends nothing and decides nothing on what it
    // reads: it leaves the other replicas' lock alone.
    let ordered = jobs
        .iter()
        .any(|j| !matches!(j.command, Command::Probe | Command::TouchTokens(_)));
    let mut head = 0;
    if ordered {
        let h: i64 = tx
            .query_one("SELECT head FROM log_head FOR UPDATE", &[])
            .map_err(pg_err)?
            .get(0);
        head = u64::try_from(h).map_err(corrupt)?;
    }
    let mut wt = PgTx {
        tx: &mut tx,
        stmts: &mut *stmts,
        channels: HashMap::new(),
        deferred: Deferred::default(),
        known_requests: HashMap::new(),
    };
    wt.load_requests(jobs)?;
    run_batch(&mut wt, jobs, &mut head, now, results, events)?;
    wt.flush()?;
    let tokens_changed = results.iter().any(|r| {
        matches!(
            r,
            Ok(Outcome::TokenIssued(_) | Outcome::TokenRevoked { .. })
        )
    });
    if !events.is_empty() {
        let h = int(head)?;
        // The new head, and the notification of it, in one round trip.
        tx.execute(
            "WITH moved AS (UPDATE log_head SET head = $1 RETURNING head)
             SELECT pg_notify($2, moved.head::text) FROM moved",
            &[&h, &EVENTS_CHANNEL],
        )
        .map_err(pg_err)?;
    }
    if tokens_changed {
        tx.execute("SELECT pg_notify($1, '')", &[&TOKENS_CHANNEL])
            .map_err(pg_err)?;
    }
    tx.commit().map_err(pg_err)
}

/// A write transaction (or savepoint) on the writer's connection, with the
/// writer's prepared statements.
struct PgTx<'a, 'b> {
    tx: &'a mut postgres::Transaction<'b>,
    stmts: &'a mut HashMap<&'static str, postgres::Statement>,
    /// Channels read or written in this batch. While the batch holds the
    /// log-head lock no other replica can commit, so they stay current for
    /// the batch (and only for it).
    channels: HashMap<Id, Channel>,
    /// The batch's appends, message saves and idempotency records, written
    /// at its end in one statement per kind (see [`Deferred`]).
    deferred: Deferred,
    /// The idempotency records of the batch's request ids as stored before
    /// it (`None`: none), read in one statement at its start.
    known_requests: HashMap<RequestKey, Option<([u8; 32], Id)>>,
}

/// The hot writes of a batch, held until its end and then written with one
/// statement per kind over arrays (`unnest`), instead of one round trip to
/// the database per row: a send with a `request_id` cost four statements,
/// three of them writes. What the batch reads back (a message it saved, a
/// request id it recorded) is answered from here first. Nothing in the
/// schema refers to these rows, and a failed flush fails the batch as a
/// failed statement did.
#[derive(Default)]
struct Deferred {
    /// Events, in sequence order.
    events: Vec<DeferredEvent>,
    /// Messages inserted by this batch, as they now are, with their
    /// `MESSAGE_SENT` sequence.
    inserted: HashMap<Id, (u64, Message)>,
    /// Messages stored before this batch that it changed, as they now are.
    updated: HashMap<Id, Message>,
    /// Idempotency records, by key: (fingerprint, resource).
    requests: HashMap<RequestKey, ([u8; 32], Id)>,
}

/// An idempotency record's key: caller, method, request id.
type RequestKey = (String, String, Id);

struct DeferredEvent {
    seq: i64,
    channel_id: String,
    message_id: Option<String>,
    thread_id: Option<String>,
    kind: i64,
    data: Vec<u8>,
    leaf_hash: Vec<u8>,
}

impl PgTx<'_, '_> {
    fn st(&mut self, sql: &'static str) -> Result<postgres::Statement, StoreError> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql).map_err(pg_err)?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }

    fn opt_bytes(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let st = self.st(sql)?;
        let row = self.tx.query_opt(&st, params).map_err(pg_err)?;
        Ok(row.map(|r| r.get(0)))
    }

    fn exec(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let st = self.st(sql)?;
        self.tx.execute(&st, params).map_err(pg_err)
    }
}

impl PgTx<'_, '_> {
    /// Reads the stored idempotency records of every request id in `jobs`
    /// in one statement, where each command looked its own up.
    fn load_requests(&mut self, jobs: &[Job]) -> Result<(), StoreError> {
        let (mut callers, mut methods, mut ids) = (Vec::new(), Vec::new(), Vec::new());
        for job in jobs {
            if let Some((method, request_id)) = job.command.request_key() {
                let caller = job.caller.actor().to_owned();
                callers.push(caller.clone());
                methods.push(method.to_owned());
                ids.push(request_id.to_string());
                self.known_requests
                    .insert((caller, method.to_owned(), request_id), None);
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        let st = self.st(
            "SELECT r.caller, r.method, r.request_id, r.fingerprint, r.resource_id
             FROM requests r
             JOIN unnest($1::text[], $2::text[], $3::text[]) AS k (caller, method, request_id)
               ON r.caller = k.caller AND r.method = k.method AND r.request_id = k.request_id",
        )?;
        let rows = self
            .tx
            .query(&st, &[&callers, &methods, &ids])
            .map_err(pg_err)?;
        for r in rows {
            let key = (
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                Id::parse(r.get::<_, &str>(2)).map_err(corrupt)?,
            );
            let fingerprint: [u8; 32] = r
                .get::<_, Vec<u8>>(3)
                .try_into()
                .map_err(|_| corrupt("bad fingerprint"))?;
            let resource = Id::parse(r.get::<_, &str>(4)).map_err(corrupt)?;
            self.known_requests
                .insert(key, Some((fingerprint, resource)));
        }
        Ok(())
    }

    /// Writes what [`Deferred`] holds: one statement per kind.
    fn flush(&mut self) -> Result<(), StoreError> {
        let d = std::mem::take(&mut self.deferred);
        for chunk in in_chunks(d.events) {
            let mut cols = (
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            );
            for e in chunk {
                cols.0.push(e.seq);
                cols.1.push(e.channel_id);
                cols.2.push(e.message_id);
                cols.3.push(e.thread_id);
                cols.4.push(e.kind);
                cols.5.push(e.data);
                cols.6.push(e.leaf_hash);
            }
            self.exec(
                "INSERT INTO events (seq, channel_id, message_id, thread_id, type, data, leaf_hash)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                                      $5::bigint[], $6::bytea[], $7::bytea[])",
                &[
                    &cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &cols.5, &cols.6,
                ],
            )?;
        }
        let mut inserted: Vec<(u64, Message)> = d.inserted.into_values().collect();
        inserted.sort_by_key(|(seq, _)| *seq);
        for chunk in in_chunks(inserted) {
            let mut cols = (
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            );
            for (seq, m) in &chunk {
                cols.0.push(int(*seq)?);
                cols.1.push(m.id.to_string());
                cols.2.push(m.channel_id.to_string());
                cols.3.push(m.thread_id.to_string());
                cols.4.push(message_state(m));
                cols.5.push(m.respond_by.map(|t| t.0));
                cols.6.push(pb::Message::from(m).encode_to_vec());
            }
            self.exec(
                "INSERT INTO messages (seq, id, channel_id, thread_id, state, respond_by, data)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                                      $5::bigint[], $6::bigint[], $7::bytea[])",
                &[
                    &cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &cols.5, &cols.6,
                ],
            )?;
        }
        // One row per message: the map holds each message's last state.
        for chunk in in_chunks(d.updated.into_values().collect()) {
            let (mut ids, mut states, mut data) = (Vec::new(), Vec::new(), Vec::new());
            for m in &chunk {
                ids.push(m.id.to_string());
                states.push(message_state(m));
                data.push(pb::Message::from(m).encode_to_vec());
            }
            self.exec(
                "UPDATE messages SET state = u.state, data = u.data
                 FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS u (id, state, data)
                 WHERE messages.id = u.id",
                &[&ids, &states, &data],
            )?;
        }
        for chunk in in_chunks(d.requests.into_iter().collect()) {
            let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((caller, method, request_id), (fingerprint, resource)) in chunk {
                cols.0.push(caller);
                cols.1.push(method);
                cols.2.push(request_id.to_string());
                cols.3.push(fingerprint.to_vec());
                cols.4.push(resource.to_string());
            }
            self.exec(
                "INSERT INTO requests (caller, method, request_id, fingerprint, resource_id)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[])",
                &[&cols.0, &cols.1, &cols.2, &cols.3, &cols.4],
            )?;
        }
        Ok(())
    }
}

/// Most rows one deferred statement writes: its arrays stay far below
/// PostgreSQL's 1 GB bound on a value even with 1 MiB bodies (an expiry of
/// 1,000 such messages is four statements).
const FLUSH_ROWS: usize = 256;

/// `rows` in pieces of at most [`FLUSH_ROWS`], in order.
fn in_chunks<T>(mut rows: Vec<T>) -> impl Iterator<Item = Vec<T>> {
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let rest = rows.split_off(rows.len().min(FLUSH_ROWS));
        Some(std::mem::replace(&mut rows, rest))
    })
}

/// A message's state as the `state` column holds it.
fn message_state(m: &Message) -> i64 {
    i64::from(convert::message_state_pb(m.state) as i32)
}

impl WriteTx for PgTx<'_, '_> {
    fn party(&mut self, id: &PartyId) -> Result<Option<Party>, StoreError> {
        self.opt_bytes("SELECT data FROM parties WHERE id = $1", &[&id.as_str()])?
            .map(|b| decode_party(&b))
            .transpose()
    }

    fn insert_party(&mut self, p: &Party) -> Result<(), StoreError> {
        let data = pb::Party::from(p).encode_to_vec();
        self.exec(
            "INSERT INTO parties (id, data) VALUES ($1, $2)",
            &[&p.id.as_str(), &data],
        )?;
        Ok(())
    }

    fn insert_token(&mut self, t: &TokenRecord) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO tokens (id, party_id, secret_hash, create_time, read_only, expire_time)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &t.token_id.to_string(),
                &t.party_id.as_str(),
                &&t.secret_hash[..],
                &t.create_time.0,
                &t.read_only,
                &t.expire_time.map(|e| e.0),
            ],
        )?;
        Ok(())
    }

    fn touch_token(&mut self, id: Id, at: Time) -> Result<(), StoreError> {
        self.exec(
            "UPDATE tokens SET last_use_time = GREATEST(COALESCE(last_use_time, 0), $2) WHERE id = $1",
            &[&id.to_string(), &at.0],
        )?;
        Ok(())
    }

    fn token_revoked(&mut self, id: Id) -> Result<Option<bool>, StoreError> {
        let st = self.st("SELECT revoke_time FROM tokens WHERE id = $1")?;
        let row = self.tx.query_opt(&st, &[&id.to_string()]).map_err(pg_err)?;
        Ok(row.map(|r| r.get::<_, Option<i64>>(0).is_some()))
    }

    fn revoke_token(&mut self, id: Id, at: Time) -> Result<(), StoreError> {
        self.exec(
            "UPDATE tokens SET revoke_time = $2 WHERE id = $1",
            &[&id.to_string(), &at.0],
        )?;
        Ok(())
    }

    fn channel(&mut self, id: Id) -> Result<Option<Channel>, StoreError> {
        if let Some(c) = self.channels.get(&id) {
            return Ok(Some(c.clone()));
        }
        let c = self
            .opt_bytes(
                "SELECT data FROM channels WHERE id = $1",
                &[&id.to_string()],
            )?
            .map(|b| decode_channel(&b))
            .transpose()?;
        if let Some(c) = &c {
            self.channels.insert(id, c.clone());
        }
        Ok(c)
    }

    fn save_channel(&mut self, c: &Channel, insert_seq: Option<u64>) -> Result<(), StoreError> {
        self.channels.insert(c.id, c.clone());
        let data = pb::Channel::from(c).encode_to_vec();
        let state = i64::from(convert::channel_state_pb(c.state) as i32);
        let id = c.id.to_string();
        match insert_seq {
            Some(seq) => {
                self.exec(
                    "INSERT INTO channels (seq, id, state, data) VALUES ($1, $2, $3, $4)",
                    &[&int(seq)?, &id, &state, &data],
                )?;
                for p in c.members() {
                    self.exec(
                        "INSERT INTO channel_members (party_id, channel_id) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING",
                        &[&p.as_str(), &id],
                    )?;
                }
            }
            None => {
                self.exec(
                    "UPDATE channels SET state = $2, data = $3 WHERE id = $1",
                    &[&id, &state, &data],
                )?;
            }
        }
        Ok(())
    }

    fn message(&mut self, id: Id) -> Result<Option<Message>, StoreError> {
        if let Some((_, m)) = self.deferred.inserted.get(&id) {
            return Ok(Some(m.clone()));
        }
        if let Some(m) = self.deferred.updated.get(&id) {
            return Ok(Some(m.clone()));
        }
        self.opt_bytes(
            "SELECT data FROM messages WHERE id = $1",
            &[&id.to_string()],
        )?
        .map(|b| decode_message(&b))
        .transpose()
    }

    fn save_message(&mut self, m: &Message, insert_seq: Option<u64>) -> Result<(), StoreError> {
        match (insert_seq, self.deferred.inserted.get_mut(&m.id)) {
            (Some(seq), _) => {
                self.deferred.inserted.insert(m.id, (seq, m.clone()));
            }
            // Inserted by this batch: it is inserted as it ends up.
            (None, Some((_, inserted))) => *inserted = m.clone(),
            (None, None) => {
                self.deferred.updated.insert(m.id, m.clone());
            }
        }
        Ok(())
    }

    fn overdue(&mut self, now: Time, limit: usize) -> Result<Vec<Id>, StoreError> {
        let st = self.st(query::overdue(Style::Dollar))?;
        let rows = self
            .tx
            .query(&st, &[&now.0, &int(limit as u64)?])
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| Id::parse(r.get::<_, &str>(0)).map_err(corrupt))
            .collect()
    }

    fn request(
        &mut self,
        caller: &str,
        method: &str,
        request_id: Id,
    ) -> Result<Option<([u8; 32], Id)>, StoreError> {
        let key = (caller.to_owned(), method.to_owned(), request_id);
        if let Some(r) = self.deferred.requests.get(&key) {
            return Ok(Some(*r));
        }
        if let Some(r) = self.known_requests.get(&key) {
            return Ok(*r);
        }
        let st = self.st("SELECT fingerprint, resource_id FROM requests
             WHERE caller = $1 AND method = $2 AND request_id = $3")?;
        let row = self
            .tx
            .query_opt(&st, &[&caller, &method, &request_id.to_string()])
            .map_err(pg_err)?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some((
                r.get::<_, Vec<u8>>(0)
                    .try_into()
                    .map_err(|_| corrupt("bad fingerprint"))?,
                Id::parse(r.get::<_, &str>(1)).map_err(corrupt)?,
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
    ) -> Result<(), StoreError> {
        self.deferred.requests.insert(
            (caller.to_owned(), method.to_owned(), request_id),
            (*fingerprint, resource),
        );
        Ok(())
    }

    fn probe(&mut self, _now: Time) -> Result<(), StoreError> {
        // The writer's transaction commits: that is the probe.
        Ok(())
    }

    fn append(&mut self, e: &Event, data: &[u8], leaf_hash: &[u8; 32]) -> Result<(), StoreError> {
        let m = e.message();
        self.deferred.events.push(DeferredEvent {
            seq: int(e.sequence)?,
            channel_id: e.channel_id.to_string(),
            message_id: m.map(|m| m.id.to_string()),
            thread_id: m.map(|m| m.thread_id.to_string()),
            kind: i64::from(convert::event_type_pb(e.kind) as i32),
            data: data.to_vec(),
            leaf_hash: leaf_hash.to_vec(),
        });
        Ok(())
    }
}

fn bind(args: &[Arg]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter()
        .map(|a| match a {
            Arg::Int(i) => i as &(dyn ToSql + Sync),
            Arg::Text(t) => t as &(dyn ToSql + Sync),
        })
        .collect()
}

impl Postgres {
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// Runs a read with a deadline, so a call never hangs on the database.
    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(DB_TIMEOUT, f)
            .await
            .map_err(|_| unavailable("read timed out"))?
    }

    async fn pg_rows(
        &self,
        sql: &str,
        args: &[Arg],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.timed(async {
            let c = self.client().await?;
            let st = c.prepare_cached(sql).await.map_err(pg_err)?;
            c.query(&st, &bind(args)).await.map_err(pg_err)
        })
        .await
    }
}

/// A tokio-postgres row as the read side's [`Row`].
fn row_of(r: &tokio_postgres::Row) -> Result<Row, StoreError> {
    use tokio_postgres::types::Type;
    let mut out = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let t = col.type_();
        let v = if *t == Type::INT8 {
            r.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int))
        } else if *t == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)
                .map(|v| v.map(|n| Value::Int(n.into())))
        } else if *t == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)
                .map(|v| v.map(|n| Value::Int(n.into())))
        } else if *t == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)
                .map(|v| v.map(|b| Value::Int(b.into())))
        } else if *t == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)
                .map(|v| v.map(Value::Bytes))
        } else {
            r.try_get::<_, Option<String>>(i)
                .map(|v| v.map(Value::Text))
        };
        out.push(v.map_err(corrupt)?.unwrap_or(Value::Null));
    }
    Ok(Row(out))
}

impl Reads for Arc<Postgres> {
    const STYLE: Style = Style::Dollar;

    async fn rows(&self, sql: Sql) -> Result<Vec<Row>, StoreError> {
        self.pg_rows(&sql.text, &sql.args)
            .await?
            .iter()
            .map(row_of)
            .collect()
    }

    async fn at_head(
        &self,
        known: Option<u64>,
        page: impl FnOnce(u64) -> Result<Sql, StoreError> + Send + 'static,
    ) -> Result<(Vec<Row>, u64), StoreError> {
        self.timed(async {
            let mut c = self.client().await?;
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg_err)?;
            let head = match known {
                Some(h) => h,
                None => {
                    let h: i64 = tx
                        .query_one("SELECT head FROM log_head", &[])
                        .await
                        .map_err(pg_err)?
                        .get(0);
                    u64::try_from(h).map_err(corrupt)?
                }
            };
            let sql = page(head)?;
            let st = tx.prepare_cached(&sql.text).await.map_err(pg_err)?;
            let rows = tx.query(&st, &bind(&sql.args)).await.map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            let rows = rows.iter().map(row_of).collect::<Result<Vec<_>, _>>()?;
            Ok((rows, head))
        })
        .await
    }

    async fn event_rows(&self, mut sql: Sql, max_bytes: usize) -> Result<Vec<Row>, StoreError> {
        if let Ok(max) = i64::try_from(max_bytes) {
            // The server sends only the rows before the one that crosses
            // `max_bytes` (and that one): a page of large events is not
            // sent whole to be cut here.
            let p = sql.arg(Arg::Int(max));
            sql.text = format!(
                "SELECT seq, channel_id, message_id, thread_id, type, data, leaf_hash FROM (
                     SELECT page.*, (SUM(octet_length(page.data)) OVER (ORDER BY page.seq)
                                     - octet_length(page.data))::bigint AS before_bytes
                     FROM ({}) page
                 ) t WHERE before_bytes < {p}::bigint ORDER BY seq",
                sql.text
            );
        }
        let rows = self.pg_rows(&sql.text, &sql.args).await?;
        // The page keeps no more than `max_bytes` (the rows themselves go
        // as soon as this returns).
        let mut bytes = 0usize;
        rows.iter()
            .take_while(|r| {
                let more = bytes < max_bytes;
                bytes = bytes.saturating_add(r.get::<_, &[u8]>(5).len());
                more
            })
            .map(row_of)
            .collect()
    }

    async fn head(&self) -> Result<u64, StoreError> {
        let rows = self.pg_rows("SELECT head FROM log_head", &[]).await?;
        let h: i64 = rows.first().ok_or_else(|| corrupt("no log head"))?.get(0);
        u64::try_from(h).map_err(corrupt)
    }
}

impl Postgres {
    /// Changes made through any replica, as they are announced. The
    /// connection is re-established whenever it drops.
    pub fn watch(self: &Arc<Self>) -> mpsc::Receiver<Change> {
        let (tx, rx) = mpsc::channel(64);
        let cfg = self.config.clone();
        tokio::spawn(async move {
            while !tx.is_closed() {
                match listen(&cfg, &tx).await {
                    // Nobody follows the changes any more.
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e.message, "change notifications interrupted; reconnecting")
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        rx
    }
}

async fn listen(
    cfg: &tokio_postgres::Config,
    out: &mpsc::Sender<Change>,
) -> Result<(), StoreError> {
    let (client, mut conn) = cfg.connect(NoTls).await.map_err(pg_err)?;
    let (note_tx, mut note_rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if note_tx.send(n.channel().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "notification connection failed");
                    break;
                }
            }
        }
    });
    client
        .batch_execute(&format!(
            "LISTEN {EVENTS_CHANNEL}; LISTEN {TOKENS_CHANNEL};"
        ))
        .await
        .map_err(pg_err)?;
    // Whatever happened while we were not listening.
    let _ = out.send(Change::Reconnected).await;
    loop {
        // Ends when the tailer has gone (the server is stopping).
        let channel = tokio::select! {
            n = note_rx.recv() => n,
            () = out.closed() => {
                driver.abort();
                return Ok(());
            }
        };
        let Some(channel) = channel else {
            break;
        };
        let change = if channel == TOKENS_CHANNEL {
            Change::Tokens
        } else {
            Change::Events
        };
        if out.send(change).await.is_err() {
            break;
        }
    }
    driver.abort();
    Err(unavailable("notification connection closed"))
}

#[cfg(test)]
mod tests {
    use super::{FLUSH_ROWS, in_chunks};

    #[test]
    fn deferred_rows_are_written_in_order_in_bounded_pieces() {
        let rows: Vec<usize> = (0..2 * FLUSH_ROWS + 88).collect();
        let pieces: Vec<Vec<usize>> = in_chunks(rows.clone()).collect();
        assert_eq!(
            pieces.iter().map(Vec::len).collect::<Vec<_>>(),
            [FLUSH_ROWS, FLUSH_ROWS, 88]
        );
        assert_eq!(pieces.concat(), rows);
        assert_eq!(in_chunks(Vec::<usize>::new()).count(), 0);
    }
}
