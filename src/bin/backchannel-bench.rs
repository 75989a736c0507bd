//! `backchannel-bench`: measures a real Backchannel server over real sockets.
//!
//! By default it starts the `backchannel` binary that sits next to its own
//! executable (so `cargo build --release` first) with a temporary data
//! directory, or on a fresh PostgreSQL database (`--database-url`), or it
//! drives a server that is already running (`--target ADDR --admin-token T`).
//! It registers its own parties and channels, then runs the scenarios of
//! docs/PERFORMANCE.md, prints one table per scenario and, with `--json
//! FILE`, writes the same figures as JSON.
//!
//! It never asserts a speed. It exits non-zero when an event was lost, a
//! call failed, or a scenario could not run.

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backchannel::pb;
use backchannel::pb::channel_service_client::ChannelServiceClient;
use backchannel::pb::message_service_client::MessageServiceClient;
use backchannel::pb::party_service_client::PartyServiceClient;
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

/// The scenarios, in the order a full run performs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// `grpc.health.v1.Health/Check`: the no-op ceiling.
    Baseline,
    /// Durable `SendMessage` at several concurrency levels.
    Send,
    /// Whole relays: send, accept, forward, acknowledge.
    Lifecycle,
    /// Many subscribers on one channel while writers run at a set rate.
    Fanout,
    /// One subscriber replaying the whole log from `start_after = 0`.
    Catchup,
    /// `GetMessage` and `ListMessages` with few vs many messages stored.
    Scale,
    /// `SendMessage` with a `request_id`, for a minute, on a store that
    /// already holds a million messages: does it keep its speed, and its
    /// write-ahead log its bound?
    Sustained,
    /// A well-behaved client's latency and the server's memory while hostile
    /// clients attack (stalled streams, idle sockets, a WINDOW_UPDATE flood,
    /// a party at its rate limit), on a server of its own with the default
    /// per-party limits; each attack runs in a process of its own at the
    /// lowest CPU priority, as a client on another machine would.
    Abuse,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Baseline => "baseline",
            Scenario::Send => "send",
            Scenario::Lifecycle => "lifecycle",
            Scenario::Fanout => "fanout",
            Scenario::Catchup => "catchup",
            Scenario::Scale => "scale",
            Scenario::Sustained => "sustained",
            Scenario::Abuse => "abuse",
        }
    }
}

/// Benchmark of a real Backchannel server (see docs/PERFORMANCE.md).
#[derive(Debug, Parser)]
#[command(name = "backchannel-bench")]
struct Args {
    /// Run every scenario briefly (a smoke test: figures are not meaningful).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Run the started server on PostgreSQL: a fresh database
    /// `bc_bench_<uuid>` is created on this server and dropped afterwards.
    #[arg(long, value_name = "URL", conflicts_with = "target")]
    database_url: Option<String>,
    /// Drive a running server at ADDR (host:port) instead of starting one.
    #[arg(long, value_name = "ADDR", requires = "admin_token")]
    target: Option<String>,
    /// The admin token of the `--target` server.
    #[arg(long, value_name = "TOKEN")]
    admin_token: Option<String>,
    /// Only these scenarios (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Run as the attacker process of the `abuse` scenario (internal).
    #[arg(long, hide = true, value_name = "ATTACK")]
    attacker: Option<String>,
    /// The `backchannel` binary to start (default: next to this executable).
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// Messages written for `catchup` and the large `scale` point (default
    /// 1,000,000, and at most 90 s of writing; 20,000 with --quick). Given
    /// explicitly, all N are written however long it takes.
    #[arg(long, value_name = "N")]
    catchup_events: Option<u64>,
    /// The `fanout` points, as SUBSCRIBERSxEVENTS_PER_S (comma-separated),
    /// instead of the default ones.
    #[arg(long, value_name = "SxR", value_delimiter = ',', value_parser = parse_point)]
    fanout: Vec<(usize, u64)>,
    /// HTTP/2 connections shared round-robin by the request tasks.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds measured per point (default 2.5; 0.5 with --quick).
    #[arg(long, value_name = "S")]
    measure_secs: Option<f64>,
    /// Seconds of warm-up before each point (default 0.75; 0.2 with --quick).
    #[arg(long, value_name = "S")]
    warmup_secs: Option<f64>,
    /// Messages the store must hold when `sustained` starts sending: those
    /// earlier scenarios of this run stored count, the rest are written
    /// first, as fast as the server takes them, each with a `request_id`
    /// unless --sustained-without-request-id (default 1,000,000; 2,000
    /// with --quick).
    #[arg(long, value_name = "N")]
    sustained_preload: Option<u64>,
    /// Seconds `sustained` sends for, after its warm-up (default 60; 3 with
    /// --quick).
    #[arg(long, value_name = "S", value_parser = parse_secs)]
    sustained_secs: Option<f64>,
    /// Length of the slices `sustained` reports one by one (default 10; 1
    /// with --quick).
    #[arg(long, value_name = "S", value_parser = parse_secs)]
    sustained_slice_secs: Option<f64>,
    /// `SendMessage` calls in flight in `sustained`, and `Health/Check`
    /// calls in its baseline.
    #[arg(long, value_name = "N", default_value_t = 64)]
    sustained_in_flight: usize,
    /// `sustained` sends without a `request_id` (to measure what the
    /// idempotency records cost on a full store).
    #[arg(long)]
    sustained_without_request_id: bool,
    /// The bound the server under test claims for its write-ahead log, in
    /// MiB (DESIGN.md §5: 64 by default); `sustained` reports the log's peak
    /// beside it.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    wal_bound_mib: u64,
}

/// A positive, finite number of seconds (at most a few years, so that it
/// fits a `Duration`).
fn parse_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e8 => Ok(v),
        _ => Err(format!("'{s}' is not a positive number of seconds")),
    }
}

fn parse_point(s: &str) -> Result<(usize, u64), String> {
    let bad = || format!("'{s}' is not SUBSCRIBERSxEVENTS_PER_S (e.g. 1000x500)");
    let (a, b) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (a, b) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || b == 0 {
        return Err(bad());
    }
    Ok((a, b))
}

/// How long each point runs.
#[derive(Debug, Clone, Copy)]
struct Timing {
    warmup: Duration,
    measure: Duration,
}

/// How `sustained` runs.
#[derive(Debug, Clone, Copy)]
struct SustainedPlan {
    /// Messages the store holds at least when the sends start.
    preload: u64,
    /// Calls in flight, in the sends and in their baseline.
    in_flight: usize,
    /// How long the sends are measured (after [`Plan::timing`]'s warm-up).
    run: Duration,
    /// Throughput and latency are reported per slice of this length.
    slice: Duration,
    /// The bound the server claims for its write-ahead log, in bytes.
    wal_bound: u64,
    /// Whether each send carries a fresh `request_id`.
    request_id: bool,
}

/// Everything a run is configured with.
struct Plan {
    quick: bool,
    timing: Timing,
    connections: usize,
    levels: Vec<usize>,
    lifecycle_in_flight: usize,
    fanout: Vec<(usize, u64)>,
    catchup_events: u64,
    /// When the number of messages is the default, writing stops after this
    /// long even if it has not reached it (and says so).
    catchup_cap: Option<Duration>,
    scale_small: u64,
    scale_calls: usize,
    drain_timeout: Duration,
    sustained: SustainedPlan,
}

impl Plan {
    fn new(a: &Args) -> Plan {
        let quick = a.quick;
        let timing = Timing {
            warmup: Duration::from_secs_f64(a.warmup_secs.unwrap_or(if quick {
                0.2
            } else {
                0.75
            })),
            measure: Duration::from_secs_f64(a.measure_secs.unwrap_or(if quick {
                0.5
            } else {
                2.5
            })),
        };
        Plan {
            quick,
            timing,
            connections: a.connections.max(1),
            levels: vec![1, 16, 64, 256],
            lifecycle_in_flight: 64,
            fanout: if !a.fanout.is_empty() {
                a.fanout.clone()
            } else if quick {
                vec![(10, 500), (100, 200), (1000, 50)]
            } else {
                vec![(10, 2000), (100, 2000), (1000, 500), (1000, 1000)]
            },
            catchup_events: a.catchup_events.unwrap_or(if quick {
                20_000
            } else {
                DEFAULT_CATCHUP_EVENTS
            }),
            catchup_cap: a
                .catchup_events
                .is_none()
                .then(|| Duration::from_secs(if quick { 60 } else { 90 })),
            scale_small: 1000,
            scale_calls: if quick { 200 } else { 2000 },
            drain_timeout: Duration::from_secs(if quick { 20 } else { 30 }),
            sustained: SustainedPlan {
                preload: a.sustained_preload.unwrap_or(if quick {
                    2_000
                } else {
                    DEFAULT_SUSTAINED_PRELOAD
                }),
                in_flight: a.sustained_in_flight.max(1),
                run: Duration::from_secs_f64(a.sustained_secs.unwrap_or(if quick {
                    3.0
                } else {
                    60.0
                })),
                slice: Duration::from_secs_f64(a.sustained_slice_secs.unwrap_or(if quick {
                    1.0
                } else {
                    10.0
                })),
                wal_bound: a.wal_bound_mib.saturating_mul(MIB),
                request_id: !a.sustained_without_request_id,
            },
        }
    }
}

/// Messages written for `catchup` and the large `scale` point by default:
/// the issue's 1,000,000 (about 40 s of writing on the embedded store here).
/// Writing stops after 90 s, so a slow store keeps the run under three
/// minutes; the output then says how many were written.
const DEFAULT_CATCHUP_EVENTS: u64 = FULL_CATCHUP_EVENTS;
/// The size the issue's `catchup` and `scale` targets speak of.
const FULL_CATCHUP_EVENTS: u64 = 1_000_000;
/// Messages the store holds when `sustained` starts, by default: the
/// issue's "a store that already holds a million messages".
const DEFAULT_SUSTAINED_PRELOAD: u64 = 1_000_000;
/// Requests in flight while writing the catch-up data set (and the
/// `sustained` preload).
const BULK_CONCURRENCY: usize = 256;
/// How often the catch-up writes say how far they got.
const BULK_PROGRESS: Duration = Duration::from_secs(3);
/// How often the `sustained` preload says how far it got.
const PRELOAD_PROGRESS: Duration = Duration::from_secs(10);
/// One mebibyte.
const MIB: u64 = 1024 * 1024;
/// How often `sustained` looks at the size of the write-ahead log.
const WAL_POLL: Duration = Duration::from_millis(100);
/// Subscribers per HTTP/2 connection in `fanout`.
const SUBSCRIBERS_PER_CONNECTION: usize = 100;
/// Writer tasks that share a `fanout` rate.
const FANOUT_WRITERS: usize = 16;
/// Most sends in flight at once in `fanout`.
const FANOUT_MAX_IN_FLIGHT: usize = 256;
/// A body of typical size for every message the bench sends.
const BODY: &str = "Ready to talk if oil sales resume; the details follow through the usual channel. \
                    Please acknowledge receipt at your convenience.";

fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

// ---------------------------------------------------------------------------
// Latency samples

/// Latency samples in nanoseconds; percentiles are exact (sorted).
#[derive(Default)]
struct Samples(Vec<u64>);

impl Samples {
    fn extend(&mut self, other: Vec<u64>) {
        if self.0.is_empty() {
            self.0 = other;
        } else {
            self.0.extend(other);
        }
    }

    fn finish(&mut self) {
        self.0.sort_unstable();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// The `q` quantile in milliseconds (samples must be finished).
    fn ms(&self, q: f64) -> Option<f64> {
        if self.0.is_empty() {
            return None;
        }
        let n = self.0.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        Some(self.0[rank - 1] as f64 / 1e6)
    }

    fn max_ms(&self) -> Option<f64> {
        self.0.last().map(|v| *v as f64 / 1e6)
    }

    fn json(&self) -> Value {
        json!({
            "count": self.len(),
            "p50_ms": round3(self.ms(0.50)),
            "p99_ms": round3(self.ms(0.99)),
            "p999_ms": round3(self.ms(0.999)),
            "max_ms": round3(self.max_ms()),
        })
    }
}

fn round3(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |v| json!((v * 1000.0).round() / 1000.0))
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

// ---------------------------------------------------------------------------
// Clients

/// Adds `authorization: Bearer TOKEN` to every call.
#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    fn new(token: &str) -> Result<Bearer> {
        Ok(Bearer(format!("Bearer {token}").parse()?))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// The clients of one identity over one connection.
#[derive(Clone)]
struct Clients {
    parties: PartyServiceClient<Authed>,
    channels: ChannelServiceClient<Authed>,
    messages: MessageServiceClient<Authed>,
    health: HealthClient<Authed>,
}

impl Clients {
    fn new(conn: &Channel, bearer: &Bearer) -> Clients {
        Clients {
            parties: PartyServiceClient::with_interceptor(conn.clone(), bearer.clone()),
            channels: ChannelServiceClient::with_interceptor(conn.clone(), bearer.clone()),
            messages: MessageServiceClient::with_interceptor(conn.clone(), bearer.clone()),
            health: HealthClient::with_interceptor(conn.clone(), bearer.clone()),
        }
    }
}

async fn connect(addr: &str) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

/// One identity's clients, one per shared connection.
#[derive(Clone)]
struct Identity {
    bearer: Bearer,
    per_conn: Vec<Clients>,
    /// The bearer token, for raw HTTP/2 calls.
    token: String,
}

impl Identity {
    fn new(conns: &[Channel], token: &str) -> Result<Identity> {
        let bearer = Bearer::new(token)?;
        Ok(Identity {
            per_conn: conns.iter().map(|c| Clients::new(c, &bearer)).collect(),
            bearer,
            token: token.to_owned(),
        })
    }

    /// The clients on connection `i` (round-robin).
    fn on(&self, i: usize) -> Clients {
        self.per_conn[i % self.per_conn.len()].clone()
    }
}

/// Only what the bench reads of a `SubscribeResponse`: the subscribers skip
/// the rest of each event instead of building it, so that the client's
/// share of the two cores goes as little as possible to decoding.
#[derive(Clone, PartialEq, prost::Message)]
struct LiteResponse {
    #[prost(message, optional, tag = "1")]
    event: Option<LiteEvent>,
    #[prost(message, optional, tag = "2")]
    heartbeat: Option<pb::Heartbeat>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LiteEvent {
    #[prost(uint64, tag = "1")]
    sequence: u64,
    #[prost(message, optional, tag = "10")]
    record_time: Option<prost_types::Timestamp>,
}

async fn subscribe_lite(
    conn: Channel,
    bearer: &Bearer,
    req: pb::SubscribeRequest,
) -> Result<tonic::Streaming<LiteResponse>, Status> {
    let mut grpc = tonic::client::Grpc::new(conn);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
    let mut req = tonic::Request::new(req);
    req.metadata_mut().insert("authorization", bearer.0.clone());
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/backchannel.v1.MessageService/Subscribe",
    );
    let codec = tonic_prost::ProstCodec::<pb::SubscribeRequest, LiteResponse>::default();
    Ok(grpc.server_streaming(req, path, codec).await?.into_inner())
}

fn unix_nanos(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn ts_nanos(t: &prost_types::Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

// ---------------------------------------------------------------------------
// The server under test

/// A server the bench started; stopped (and its database dropped) on drop.
struct Spawned {
    child: Option<Child>,
    pid: u32,
    data_dir: PathBuf,
    db: Option<BenchDb>,
    warnings: Arc<AtomicUsize>,
    tail: Arc<Mutex<Vec<String>>>,
}

impl Spawned {
    fn start(
        bin: &Path,
        admin_token: &str,
        database_url: Option<&str>,
    ) -> Result<(Spawned, String)> {
        Spawned::start_with(bin, admin_token, database_url, false)
    }

    /// With `design_limits`, the server keeps the default per-party limits
    /// (the `abuse` scenario); otherwise they are off, as the bench is one
    /// party calling as fast as the server takes it.
    fn start_with(
        bin: &Path,
        admin_token: &str,
        database_url: Option<&str>,
        design_limits: bool,
    ) -> Result<(Spawned, String)> {
        if !bin.exists() {
            return Err(format!(
                "server binary {} not found: run `cargo build --release` first, or pass --server-bin",
                bin.display()
            )
            .into());
        }
        let data_dir = std::env::temp_dir().join(format!(
            "backchannel-bench-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&data_dir)?;
        let db = match database_url {
            Some(url) => Some(BenchDb::create(url)?),
            None => None,
        };
        let mut cmd = Command::new(bin);
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--log-format")
            .arg("json")
            .env("BACKCHANNEL_ADMIN_TOKEN", admin_token)
            // The bench is one party sending as fast as the server takes
            // it, and holding thousands of subscriptions: no per-party
            // limits (environment variables, which a binary from before
            // the limits ignores).
            .env("RUST_LOG", "info")
            .env_remove("BACKCHANNEL_DATABASE_URL")
            .env_remove("BACKCHANNEL_LISTEN")
            .env_remove("BACKCHANNEL_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(db) = &db {
            cmd.arg("--database-url").arg(&db.url);
        }
        if !design_limits {
            cmd.env("BACKCHANNEL_RATE_LIMIT", "0")
                .env("BACKCHANNEL_MAX_SUBSCRIPTIONS_PER_PARTY", "1000000");
        }
        // The server dies with the bench, however the bench ends.
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child
        // between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let warnings = Arc::new(AtomicUsize::new(0));
        let tail = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        {
            let warnings = warnings.clone();
            let tail = tail.clone();
            // Drains the server's log for as long as it runs.
            std::thread::spawn(move || {
                let mut addr_tx = Some(addr_tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    if v["message"] == "serving"
                        && let Some(tx) = addr_tx.take()
                    {
                        let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                    }
                    if matches!(v["level"].as_str(), Some("WARN" | "ERROR")) {
                        warnings.fetch_add(1, Ordering::Relaxed);
                        eprintln!("[server] {line}");
                    }
                    let mut t = tail.lock().unwrap();
                    if t.len() >= 50 {
                        t.remove(0);
                    }
                    t.push(line);
                }
            });
        }
        let mut spawned = Spawned {
            child: Some(child),
            pid,
            data_dir,
            db,
            warnings,
            tail,
        };
        match addr_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) if !addr.is_empty() => Ok((spawned, addr)),
            _ => {
                spawned.stop();
                Err(format!(
                    "the server did not start; its last log lines: {:#?}",
                    spawned.tail.lock().unwrap()
                )
                .into())
            }
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child process, which has not been reaped.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        // The database goes after the server that used it.
        self.db.take();
    }
}

/// A fresh PostgreSQL database for one run, dropped afterwards.
struct BenchDb {
    admin_url: String,
    name: String,
    url: String,
}

impl BenchDb {
    fn create(admin_url: &str) -> Result<BenchDb> {
        let name = format!("bc_bench_{}", uuid::Uuid::new_v4().simple());
        let (u, n) = (admin_url.to_string(), name.clone());
        std::thread::spawn(move || -> Result<()> {
            let mut c = postgres::Client::connect(&u, postgres::NoTls)?;
            c.batch_execute(&format!("CREATE DATABASE {n}"))?;
            Ok(())
        })
        .join()
        .map_err(|_| "database thread panicked")?
        .map_err(|e| format!("cannot create the bench database on {admin_url}: {e}"))?;
        let (prefix, query) = match admin_url.split_once('?') {
            Some((p, q)) => (p.to_string(), format!("?{q}")),
            None => (admin_url.to_string(), String::new()),
        };
        let root = match prefix.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('/') {
                Some((host, _)) => format!("{scheme}://{host}"),
                None => prefix.clone(),
            },
            None => prefix.clone(),
        };
        progress(format!("PostgreSQL database {name} created"));
        Ok(BenchDb {
            admin_url: admin_url.to_string(),
            url: format!("{root}/{name}{query}"),
            name,
        })
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        let (u, n) = (self.admin_url.clone(), self.name.clone());
        let r = std::thread::spawn(move || -> Result<()> {
            let mut c = postgres::Client::connect(&u, postgres::NoTls)?;
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"))?;
            Ok(())
        })
        .join();
        match r {
            Ok(Ok(())) => progress(format!("PostgreSQL database {} dropped", self.name)),
            _ => progress(format!("warning: could not drop database {}", self.name)),
        }
    }
}

/// The server's resident memory in KiB, if it is a local process we know.
fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

// ---------------------------------------------------------------------------
// The world the scenarios run in

/// Parties, tokens, connections and channels of one run.
struct World {
    addr: String,
    admin: Identity,
    iran: Identity,
    france: Identity,
    us: Identity,
    ids: Parties,
    server_pid: Option<u32>,
    /// `SendMessage` calls of this run that succeeded, so the messages a
    /// server the bench started holds (`sustained` tops the store up to
    /// its preload, and divides the disk used by this).
    stored: Arc<AtomicU64>,
}

struct Parties {
    iran: String,
    france: String,
    us: String,
}

impl World {
    async fn setup(
        addr: &str,
        admin_token: &str,
        connections: usize,
        pid: Option<u32>,
    ) -> Result<World> {
        let mut conns = Vec::new();
        for _ in 0..connections {
            conns.push(connect(addr).await?);
        }
        let admin = Identity::new(&conns, admin_token)?;
        // A suffix keeps runs against one long-lived server apart.
        let sfx = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let ids = Parties {
            iran: format!("iran-{sfx}"),
            france: format!("france-{sfx}"),
            us: format!("united-states-{sfx}"),
        };
        let mut a = admin.on(0);
        let mut tokens = Vec::new();
        for id in [&ids.iran, &ids.france, &ids.us] {
            a.parties
                .create_party(pb::CreatePartyRequest {
                    party_id: id.clone(),
                    display_name: id.to_uppercase(),
                    kind: pb::party::Kind::State as i32,
                })
                .await?;
            tokens.push(
                a.parties
                    .issue_token(pb::IssueTokenRequest {
                        party_id: id.clone(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .token,
            );
        }
        Ok(World {
            addr: addr.to_string(),
            iran: Identity::new(&conns, &tokens[0])?,
            france: Identity::new(&conns, &tokens[1])?,
            us: Identity::new(&conns, &tokens[2])?,
            admin,
            ids,
            server_pid: pid,
            stored: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Opens iran → france → united-states.
    async fn channel(&self, name: &str) -> Result<String> {
        Ok(self
            .admin
            .on(0)
            .channels
            .create_channel(pb::CreateChannelRequest {
                display_name: name.into(),
                parties: vec![self.ids.iran.clone(), self.ids.us.clone()],
                mediators: vec![self.ids.france.clone()],
                request_id: String::new(),
            })
            .await?
            .into_inner()
            .id)
    }

    /// The log's head, as the admin sees it now.
    async fn head(&self, channel: &str) -> Result<u64> {
        Ok(self
            .admin
            .on(0)
            .messages
            .list_messages(pb::ListMessagesRequest {
                channel_id: channel.into(),
                page_size: 1,
                ..Default::default()
            })
            .await?
            .into_inner()
            .head_sequence)
    }

    fn rss(&self) -> Option<u64> {
        rss_kib(self.server_pid)
    }
}

fn send_req(channel: &str, n: u64) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        channel_id: channel.into(),
        subject: format!("bench message {n}"),
        body: BODY.into(),
        labels: [("topic".to_string(), "bench".to_string())].into(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// Closed-loop load

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// One operation: task number and iteration in, per-step nanoseconds out.
type Op = Arc<dyn Fn(usize, u64) -> BoxFut<Result<[u64; 4], Status>> + Send + Sync>;

/// What a closed-loop run measured.
struct Load {
    whole: Samples,
    steps: [Samples; 4],
    /// The samples of `whole` again, by the slice of the window in which
    /// each operation ended (empty unless the run was sliced).
    slices: Vec<Samples>,
    /// When the measurement window opened.
    window_start: Instant,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
    cpu: Cpu,
}

impl Load {
    fn rate(&self) -> f64 {
        self.whole.len() as f64 / self.secs
    }
}

/// `conc` tasks each run `op` back to back for warm-up + measurement; only
/// operations that start and end inside the measurement window count.
async fn closed_loop(conc: usize, t: Timing, pid: Option<u32>, op: Op) -> Load {
    closed_loop_sliced(conc, t, None, pid, op).await
}

/// The measurement window cut into slices of `slice` (the last one may be
/// shorter): each slice's start and end, from the window's start.
fn slice_bounds(measure: Duration, slice: Duration) -> Vec<(Duration, Duration)> {
    let mut out = Vec::new();
    let mut from = Duration::ZERO;
    while from < measure {
        let to = (from + slice).min(measure);
        out.push((from, to));
        from = to;
    }
    out
}

/// [`closed_loop`], with each counted operation also filed under the
/// [`slice_bounds`] slice in which it ended. As only operations that start
/// and end inside the window count, the first and the last slice each miss
/// up to `conc` operations (those under way at the window's edges), so
/// comparing the two is fair.
async fn closed_loop_sliced(
    conc: usize,
    t: Timing,
    slice: Option<Duration>,
    pid: Option<u32>,
    op: Op,
) -> Load {
    let start = Instant::now();
    let m0 = start + t.warmup;
    let m1 = m0 + t.measure;
    let bounds = slice.map_or_else(Vec::new, |s| slice_bounds(t.measure, s));
    let slice_ns = slice.map_or(1, |s| s.as_nanos().max(1));
    let cpu = cpu_window(pid, m0, m1);
    let mut handles = Vec::with_capacity(conc);
    for task in 0..conc {
        let op = op.clone();
        let nslices = bounds.len();
        handles.push(tokio::spawn(async move {
            let mut whole = Vec::new();
            let mut slices: Vec<Vec<u64>> = vec![Vec::new(); nslices];
            let mut steps: [Vec<u64>; 4] = Default::default();
            let mut errors = 0u64;
            let mut first_error = None;
            let mut i = 0u64;
            loop {
                let a = Instant::now();
                if a >= m1 {
                    break;
                }
                let r = op(task, i).await;
                i += 1;
                let b = Instant::now();
                match r {
                    Ok(s) => {
                        if a >= m0 && b <= m1 {
                            let ns = (b - a).as_nanos() as u64;
                            whole.push(ns);
                            if nslices > 0 {
                                let k = ((b - m0).as_nanos() / slice_ns) as usize;
                                slices[k.min(nslices - 1)].push(ns);
                            }
                            for (k, v) in s.iter().enumerate() {
                                if *v > 0 {
                                    steps[k].push(*v);
                                }
                            }
                        }
                    }
                    Err(s) => {
                        errors += 1;
                        first_error
                            .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                        // Do not spin on a failing server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (whole, slices, steps, errors, first_error)
        }));
    }
    let mut load = Load {
        whole: Samples::default(),
        steps: Default::default(),
        slices: bounds.iter().map(|_| Samples::default()).collect(),
        window_start: m0,
        errors: 0,
        first_error: None,
        secs: t.measure.as_secs_f64(),
        cpu: Cpu::default(),
    };
    for h in handles {
        match h.await {
            Ok((w, sl, s, e, f)) => {
                load.whole.extend(w);
                for (k, v) in sl.into_iter().enumerate() {
                    load.slices[k].extend(v);
                }
                for (k, v) in s.into_iter().enumerate() {
                    load.steps[k].extend(v);
                }
                load.errors += e;
                if load.first_error.is_none() {
                    load.first_error = f;
                }
            }
            Err(e) => {
                load.errors += 1;
                load.first_error.get_or_insert(format!("task failed: {e}"));
            }
        }
    }
    load.cpu = cpu.await.unwrap_or_default();
    load.whole.finish();
    for s in load.steps.iter_mut().chain(load.slices.iter_mut()) {
        s.finish();
    }
    load
}

/// CPU used over a window, in % of one core (200 % = both cores of this
/// machine), by the server and by the bench itself.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    server: Option<f64>,
    bench: Option<f64>,
}

impl Cpu {
    fn cell(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        format!("{}/{}", f(self.server), f(self.bench))
    }

    fn add_json(&self, j: &mut Value) {
        j["server_cpu_pct"] = self.server.map_or(Value::Null, |v| json!(round1(v)));
        j["bench_cpu_pct"] = self.bench.map_or(Value::Null, |v| json!(round1(v)));
    }
}

/// User + system CPU seconds of a process (`self` or a pid), from /proc.
fn cpu_secs(who: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{who}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks / hz as f64)
}

/// Measures [`Cpu`] between `m0` and `m1`.
fn cpu_window(pid: Option<u32>, m0: Instant, m1: Instant) -> tokio::task::JoinHandle<Cpu> {
    tokio::spawn(async move {
        let sample = || (pid.and_then(|p| cpu_secs(&p.to_string())), cpu_secs("self"));
        tokio::time::sleep_until(m0.into()).await;
        let (s0, b0) = sample();
        tokio::time::sleep_until(m1.into()).await;
        let (s1, b1) = sample();
        let secs = (m1 - m0).as_secs_f64();
        let pct = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / secs * 100.0);
        Cpu {
            server: pct(s0, s1),
            bench: pct(b0, b1),
        }
    })
}

fn elapsed_ns(a: Instant) -> u64 {
    (a.elapsed().as_nanos() as u64).max(1)
}

// ---------------------------------------------------------------------------
// Report

/// The figures of a run, as they are printed and written.
struct Report {
    json: serde_json::Map<String, Value>,
    errors: u64,
    lost: u64,
    failures: Vec<String>,
}

impl Report {
    fn error(&mut self, what: &str, load: &Load) {
        if load.errors > 0 {
            self.errors += load.errors;
            self.failures.push(format!(
                "{what}: {} calls failed (first: {})",
                load.errors,
                load.first_error.as_deref().unwrap_or("?")
            ));
        }
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 10.0 => format!("{v:.3}"),
        Some(v) if v < 100.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.1}"),
    }
}

fn fmt_rate(v: f64) -> String {
    if v >= 100.0 {
        fmt_count(v.round() as u64)
    } else {
        format!("{v:.1}")
    }
}

/// `1234567` as `1,234,567`.
fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_ratio(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{r:.2}"))
}

/// Whole seconds when they are whole, else to the tenth.
fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.1}")
    }
}

fn table(title: &str, note: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = format!("\n== {title}\n");
    if !note.is_empty() {
        out.push_str(note);
        out.push('\n');
    }
    let line = |cells: Vec<String>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            if i == 0 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str("  ");
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    out.push_str(&line(headers.iter().map(|h| h.to_string()).collect()));
    out.push_str(&line(w.iter().map(|n| "-".repeat(*n)).collect()));
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

// ---------------------------------------------------------------------------
// Scenarios

/// `Health/Check` by the admin: the no-op RPC, with the client setup of the
/// sends (same connections, same interceptor).
fn health_op(world: &World) -> Op {
    let admin = world.admin.clone();
    Arc::new(move |task, _| {
        let mut h = admin.on(task).health;
        Box::pin(async move {
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
            Ok([0; 4])
        })
    })
}

/// `SendMessage` by iran on `channel`; with `request_id`, each call carries
/// a fresh UUID v4 (random, as most clients make them, and the harder case
/// for the server's index of them), as a careful client's calls do.
fn send_op(world: &World, channel: &str, request_id: bool) -> Op {
    let iran = world.iran.clone();
    let channel = channel.to_string();
    let stored = world.stored.clone();
    Arc::new(move |task, i| {
        let mut m = iran.on(task).messages;
        let mut req = send_req(&channel, i);
        if request_id {
            req.request_id = uuid::Uuid::new_v4().to_string();
        }
        let stored = stored.clone();
        Box::pin(async move {
            m.send_message(req).await?;
            stored.fetch_add(1, Ordering::Relaxed);
            Ok([0; 4])
        })
    })
}

async fn run_baseline_send(
    world: &World,
    plan: &Plan,
    baseline: bool,
    send: bool,
    report: &mut Report,
    text: &mut String,
) -> Result<()> {
    let channel = world.channel("bench send").await?;
    let mut base_rows = Vec::new();
    let mut send_rows = Vec::new();
    let mut base_json = Vec::new();
    // Without request_id, then with it.
    let mut send_json = [Vec::new(), Vec::new()];
    for &c in &plan.levels {
        let mut base_rate = None;
        if baseline {
            let l = closed_loop(c, plan.timing, world.server_pid, health_op(world)).await;
            report.error(&format!("baseline c={c}"), &l);
            progress(format!(
                "baseline c={c}: {} calls/s, p99 {} ms",
                fmt_rate(l.rate()),
                fmt_ms(l.whole.ms(0.99))
            ));
            base_rate = Some(l.rate());
            base_rows.push(vec![
                c.to_string(),
                fmt_rate(l.rate()),
                fmt_ms(l.whole.ms(0.5)),
                fmt_ms(l.whole.ms(0.99)),
                fmt_ms(l.whole.ms(0.999)),
                l.cpu.cell(),
                l.errors.to_string(),
            ]);
            let mut j = l.whole.json();
            j["concurrency"] = json!(c);
            j["calls_per_s"] = json!(round1(l.rate()));
            j["errors"] = json!(l.errors);
            l.cpu.add_json(&mut j);
            base_json.push(j);
        }
        if send {
            for (with_id, out) in [false, true].into_iter().zip(send_json.iter_mut()) {
                let op = send_op(world, &channel, with_id);
                let l = closed_loop(c, plan.timing, world.server_pid, op).await;
                let what = if with_id { "send+request_id" } else { "send" };
                report.error(&format!("{what} c={c}"), &l);
                let ratio = base_rate.filter(|b| *b > 0.0).map(|b| l.rate() / b);
                progress(format!(
                    "{what} c={c}: {} calls/s, p99 {} ms{}",
                    fmt_rate(l.rate()),
                    fmt_ms(l.whole.ms(0.99)),
                    ratio.map_or(String::new(), |r| format!(", {r:.2}x baseline"))
                ));
                send_rows.push(vec![
                    c.to_string(),
                    if with_id { "yes" } else { "no" }.to_string(),
                    fmt_rate(l.rate()),
                    fmt_ms(l.whole.ms(0.5)),
                    fmt_ms(l.whole.ms(0.99)),
                    fmt_ms(l.whole.ms(0.999)),
                    ratio.map_or("-".into(), |r| format!("{r:.2}")),
                    l.cpu.cell(),
                    l.errors.to_string(),
                ]);
                let mut j = l.whole.json();
                j["concurrency"] = json!(c);
                j["request_id"] = json!(with_id);
                j["calls_per_s"] = json!(round1(l.rate()));
                j["ratio_to_baseline"] = round3(ratio);
                j["errors"] = json!(l.errors);
                l.cpu.add_json(&mut j);
                out.push(j);
            }
        }
    }
    let conns = format!(
        "{} HTTP/2 connections shared round-robin; {:.2} s warm-up, {:.2} s measured per level",
        plan.connections,
        plan.timing.warmup.as_secs_f64(),
        plan.timing.measure.as_secs_f64()
    );
    if baseline {
        text.push_str(&table(
            "baseline: grpc.health.v1.Health/Check (the no-op ceiling)",
            &conns,
            &[
                "concurrency",
                "calls/s",
                "p50 ms",
                "p99 ms",
                "p999 ms",
                "CPU srv/bench %",
                "errors",
            ],
            &base_rows,
        ));
        report.json.insert("baseline".into(), json!(base_json));
    }
    if send {
        text.push_str(&table(
            "send: durable SendMessage, without and with a request_id (a fresh UUID v4 per call)",
            &conns,
            &[
                "concurrency",
                "request_id",
                "calls/s",
                "p50 ms",
                "p99 ms",
                "p999 ms",
                "x baseline",
                "CPU srv/bench %",
                "errors",
            ],
            &send_rows,
        ));
        let [plain, with_id] = send_json;
        report.json.insert("send".into(), json!(plain));
        report.json.insert("send_request_id".into(), json!(with_id));
    }
    Ok(())
}

async fn run_lifecycle(
    world: &World,
    plan: &Plan,
    report: &mut Report,
    text: &mut String,
) -> Result<()> {
    let channel = world.channel("bench lifecycle").await?;
    let (iran, france, us) = (world.iran.clone(), world.france.clone(), world.us.clone());
    let stored = world.stored.clone();
    let op: Op = Arc::new(move |task, i| {
        let mut s = iran.on(task).messages;
        let mut f = france.on(task).messages;
        let mut u = us.on(task).messages;
        let req = send_req(&channel, i);
        let stored = stored.clone();
        Box::pin(async move {
            let mut t = [0u64; 4];
            let a = Instant::now();
            let m = s.send_message(req).await?.into_inner();
            t[0] = elapsed_ns(a);
            stored.fetch_add(1, Ordering::Relaxed);
            let a = Instant::now();
            f.accept_message(pb::AcceptMessageRequest {
                message_id: m.id.clone(),
                note: "received".into(),
                ..Default::default()
            })
            .await?;
            t[1] = elapsed_ns(a);
            let a = Instant::now();
            let m = f
                .forward_message(pb::ForwardMessageRequest {
                    message_id: m.id,
                    note: "handed on".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            t[2] = elapsed_ns(a);
            if m.state != pb::message::State::Delivered as i32 {
                return Err(Status::internal(format!(
                    "forward by the last mediator left the message in state {}",
                    m.state
                )));
            }
            let a = Instant::now();
            u.acknowledge_message(pb::AcknowledgeMessageRequest {
                message_id: m.id,
                ..Default::default()
            })
            .await?;
            t[3] = elapsed_ns(a);
            Ok(t)
        })
    });
    let l = closed_loop(plan.lifecycle_in_flight, plan.timing, world.server_pid, op).await;
    report.error("lifecycle", &l);
    progress(format!(
        "lifecycle: {} relays/s, relay p99 {} ms",
        fmt_rate(l.rate()),
        fmt_ms(l.whole.ms(0.99))
    ));
    let names = ["send", "accept", "forward", "acknowledge"];
    let mut rows = Vec::new();
    let mut steps = serde_json::Map::new();
    for (k, n) in names.iter().enumerate() {
        rows.push(vec![
            n.to_string(),
            fmt_ms(l.steps[k].ms(0.5)),
            fmt_ms(l.steps[k].ms(0.99)),
            fmt_ms(l.steps[k].ms(0.999)),
        ]);
        steps.insert(n.to_string(), l.steps[k].json());
    }
    rows.push(vec![
        "whole relay".into(),
        fmt_ms(l.whole.ms(0.5)),
        fmt_ms(l.whole.ms(0.99)),
        fmt_ms(l.whole.ms(0.999)),
    ]);
    text.push_str(&table(
        "lifecycle: whole relays (send by iran, accept + forward by france, acknowledge by united-states)",
        &format!(
            "{} relays in flight: {} relays/s ({} durable writes/s), {} failed calls, CPU server/bench {} %",
            plan.lifecycle_in_flight,
            fmt_rate(l.rate()),
            fmt_rate(l.rate() * 4.0),
            l.errors,
            l.cpu.cell()
        ),
        &["step", "p50 ms", "p99 ms", "p999 ms"],
        &rows,
    ));
    report.json.insert(
        "lifecycle".into(),
        json!({
            "in_flight": plan.lifecycle_in_flight,
            "relays": l.whole.len(),
            "relays_per_s": round1(l.rate()),
            "writes_per_s": round1(l.rate() * 4.0),
            "relay": l.whole.json(),
            "steps": steps,
            "errors": l.errors,
            "server_cpu_pct": l.cpu.server.map(round1),
            "bench_cpu_pct": l.cpu.bench.map(round1),
        }),
    );
    Ok(())
}

/// What one fan-out subscriber saw.
#[derive(Default)]
struct SubSeen {
    seqs: Vec<u64>,
    latencies: Vec<u64>,
    in_window: u64,
    disorder: u64,
    error: Option<String>,
    timed_out: bool,
}

/// The measurement window of a fan-out point, by the monotonic clock (for
/// counting deliveries) and by the wall clock (for picking the events whose
/// latency counts, by their `record_time`).
#[derive(Debug, Clone, Copy)]
struct Windows {
    m0: Instant,
    m1: Instant,
    wall0: i128,
    wall1: i128,
}

/// When subscribers may stop: the last expected sequence, and a deadline.
type EndSignal = Option<(u64, tokio::time::Instant)>;

async fn fanout_subscriber(
    conn: Channel,
    bearer: Bearer,
    req: pb::SubscribeRequest,
    ready: Arc<(AtomicUsize, Notify)>,
    mut end: watch::Receiver<EndSignal>,
    windows: Arc<OnceLock<Windows>>,
) -> SubSeen {
    let mut seen = SubSeen::default();
    let mut stream = match subscribe_lite(conn, &bearer, req).await {
        Ok(s) => s,
        Err(s) => {
            seen.error = Some(format!("subscribe: {:?}: {}", s.code(), s.message()));
            ready.0.fetch_add(1, Ordering::SeqCst);
            ready.1.notify_one();
            return seen;
        }
    };
    let mut is_ready = false;
    let mut last = 0u64;
    loop {
        let target = *end.borrow_and_update();
        if let Some((t, _)) = target
            && last >= t
        {
            break;
        }
        let deadline = target.map(|(_, d)| d);
        tokio::select! {
            biased;
            m = stream.message() => match m {
                Ok(Some(r)) => {
                    if let Some(e) = r.event {
                        if e.sequence <= last {
                            seen.disorder += 1;
                        }
                        last = last.max(e.sequence);
                        seen.seqs.push(e.sequence);
                        if let Some(w) = windows.get() {
                            let now = Instant::now();
                            if now >= w.m0 && now <= w.m1 {
                                seen.in_window += 1;
                            }
                            if let Some(rt) = &e.record_time {
                                let rt = ts_nanos(rt);
                                if rt >= w.wall0 && rt <= w.wall1 {
                                    let lat = unix_nanos(SystemTime::now()) - rt;
                                    seen.latencies.push(lat.max(0) as u64);
                                }
                            }
                        }
                    } else if let Some(h) = r.heartbeat {
                        if !is_ready {
                            is_ready = true;
                            ready.0.fetch_add(1, Ordering::SeqCst);
                            ready.1.notify_one();
                        }
                        if let Some((t, _)) = target && h.head_sequence >= t {
                            break;
                        }
                    }
                }
                Ok(None) => {
                    seen.error = Some("the stream ended without a status".into());
                    break;
                }
                Err(s) => {
                    seen.error = Some(format!("{:?}: {}", s.code(), s.message()));
                    break;
                }
            },
            r = end.changed() => {
                if r.is_err() {
                    break;
                }
            }
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                seen.timed_out = true;
                break;
            }
        }
    }
    if !is_ready {
        ready.0.fetch_add(1, Ordering::SeqCst);
        ready.1.notify_one();
    }
    seen
}

/// Every sequence of `channel` after `after`, as the admin lists them.
async fn channel_sequences(world: &World, channel: &str, after: u64) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    let mut req = pb::ListEventsRequest {
        channel_id: channel.into(),
        after_sequence: after,
        page_size: 1000,
        ..Default::default()
    };
    let mut m = world.admin.on(0).messages;
    loop {
        let r = m.list_events(req.clone()).await?.into_inner();
        out.extend(r.events.iter().map(|e| e.sequence));
        if r.next_page_token.is_empty() {
            return Ok(out);
        }
        req.page_token = r.next_page_token;
    }
}

/// How many of `expected` (sorted) appear in `got`.
fn matched(expected: &[u64], got: &mut Vec<u64>) -> usize {
    got.sort_unstable();
    got.dedup();
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < expected.len() && j < got.len() {
        match expected[i].cmp(&got[j]) {
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
        }
    }
    n
}
async fn fanout_point(
    world: &World,
    plan: &Plan,
    subs: usize,
    rate: u64,
    report: &mut Report,
) -> Result<(Vec<String>, Value)> {
    let channel = world
        .channel(&format!("bench fanout {subs}x{rate}"))
        .await?;
    // Let the previous point's subscriptions wind down first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = world.rss();
    let h0 = world.head(&channel).await?;
    let nconn = subs.div_ceil(SUBSCRIBERS_PER_CONNECTION);
    let mut sub_conns = Vec::new();
    for _ in 0..nconn {
        sub_conns.push(connect(&world.addr).await?);
    }
    let ready = Arc::new((AtomicUsize::new(0), Notify::new()));
    let (end_tx, end_rx) = watch::channel::<EndSignal>(None);
    let windows = Arc::new(OnceLock::new());
    let connecting = Instant::now();
    let mut handles = Vec::with_capacity(subs);
    for s in 0..subs {
        let req = pb::SubscribeRequest {
            start_after: Some(h0),
            channel_ids: vec![channel.clone()],
            heartbeat_seconds: 1,
            ..Default::default()
        };
        handles.push(tokio::spawn(fanout_subscriber(
            sub_conns[s % nconn].clone(),
            world.us.bearer.clone(),
            req,
            ready.clone(),
            end_rx.clone(),
            windows.clone(),
        )));
    }
    // Every subscriber has had its caught-up heartbeat: connected and idle.
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let notified = ready.1.notified();
        if ready.0.load(Ordering::SeqCst) >= subs {
            break;
        }
        if Instant::now() > give_up {
            for h in &handles {
                h.abort();
            }
            return Err(format!(
                "only {} of {subs} subscribers were ready after 60 s",
                ready.0.load(Ordering::SeqCst)
            )
            .into());
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
    }
    let connect_secs = connecting.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = world.rss();

    // Writers: FANOUT_WRITERS tasks, each on its own tick, spread evenly.
    let period = Duration::from_secs_f64(FANOUT_WRITERS as f64 / rate as f64);
    let (i_now, w_now) = (Instant::now(), unix_nanos(SystemTime::now()));
    let start = i_now + Duration::from_millis(20);
    let m0 = start + plan.timing.warmup;
    let m1 = m0 + plan.timing.measure;
    let wall = |t: Instant| w_now + (t - i_now).as_nanos() as i128;
    let _ = windows.set(Windows {
        m0,
        m1,
        wall0: wall(m0),
        wall1: wall(m1),
    });
    // Open loop: each tick starts a send without waiting for the previous
    // one, so the rate does not depend on the latency (up to
    // FANOUT_MAX_IN_FLIGHT sends at once; beyond that the rate drops, and
    // `written/s` shows it).
    let cpu = cpu_window(world.server_pid, m0, m1);
    let written = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(FANOUT_MAX_IN_FLIGHT));
    let mut writers = Vec::new();
    for w in 0..FANOUT_WRITERS {
        let m = world.iran.on(w).messages;
        let channel = channel.clone();
        let (written, failed, first_error) = (written.clone(), failed.clone(), first_error.clone());
        let in_flight = in_flight.clone();
        let first = start + period.mul_f64(w as f64 / FANOUT_WRITERS as f64);
        writers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(first.into(), period);
            let mut i = 0u64;
            loop {
                tick.tick().await;
                if Instant::now() >= m1 {
                    break;
                }
                i += 1;
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let mut m = m.clone();
                let req = send_req(&channel, i);
                let (written, failed, first_error) =
                    (written.clone(), failed.clone(), first_error.clone());
                tokio::spawn(async move {
                    match m.send_message(req).await {
                        Ok(_) => {
                            written.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(s) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap()
                                .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                        }
                    }
                    drop(permit);
                });
            }
        }));
    }
    for w in writers {
        w.await?;
    }
    // Every send has ended once every permit is back.
    drop(in_flight.acquire_many(FANOUT_MAX_IN_FLIGHT as u32).await?);
    let write_errors = failed.load(Ordering::Relaxed);
    let first_error = first_error.lock().unwrap().take();
    let writers_done = Instant::now();
    let written = written.load(Ordering::Relaxed);
    world.stored.fetch_add(written, Ordering::Relaxed);
    let expected = channel_sequences(world, &channel, h0).await?;
    let target = expected.last().copied().unwrap_or(h0);
    let _ = end_tx.send(Some((target, (Instant::now() + plan.drain_timeout).into())));
    let mut all = Samples::default();
    let (mut lost, mut extra, mut disorder, mut in_window) = (0u64, 0u64, 0u64, 0u64);
    let (mut sub_errors, mut timed_out) = (0u64, 0u64);
    let mut first_sub_error = None;
    for h in handles {
        let mut seen = h.await?;
        let n = matched(&expected, &mut seen.seqs);
        lost += (expected.len() - n) as u64;
        extra += (seen.seqs.len() - n) as u64;
        disorder += seen.disorder;
        in_window += seen.in_window;
        all.extend(seen.latencies);
        if seen.timed_out {
            timed_out += 1;
        }
        if let Some(e) = seen.error {
            sub_errors += 1;
            first_sub_error.get_or_insert(e);
        }
    }
    let drain_secs = writers_done.elapsed().as_secs_f64();
    let cpu = cpu.await.unwrap_or_default();
    drop(end_tx);
    drop(sub_conns);
    let rss_after = world.rss();
    all.finish();
    let secs = plan.timing.measure.as_secs_f64();
    let delivered = in_window as f64 / secs;
    let write_rate = written as f64 / (plan.timing.warmup + plan.timing.measure).as_secs_f64();
    let per_sub = match (rss_before, rss_idle) {
        (Some(b), Some(i)) => Some(i.saturating_sub(b) as f64 / subs as f64),
        _ => None,
    };
    report.lost += lost;
    if lost > 0 || extra > 0 || disorder > 0 {
        report.failures.push(format!(
            "fanout {subs}x{rate}: {lost} events lost, {extra} unexpected, {disorder} out of order \
             ({timed_out} subscribers still waiting after {:?})",
            plan.drain_timeout
        ));
    }
    if write_errors > 0 {
        report.errors += write_errors;
        report.failures.push(format!(
            "fanout {subs}x{rate}: {write_errors} sends failed (first: {})",
            first_error.unwrap_or_default()
        ));
    }
    if sub_errors > 0 {
        report.errors += sub_errors;
        report.failures.push(format!(
            "fanout {subs}x{rate}: {sub_errors} subscriptions failed (first: {})",
            first_sub_error.unwrap_or_default()
        ));
    }
    progress(format!(
        "fanout {subs} subscribers x {rate} ev/s: {} deliveries/s, p99 {} ms, {lost} lost, {} KiB/subscriber",
        fmt_rate(delivered),
        fmt_ms(all.ms(0.99)),
        per_sub.map_or("-".into(), |v| format!("{v:.1}"))
    ));
    let row = vec![
        subs.to_string(),
        fmt_rate(rate as f64),
        fmt_rate(write_rate),
        fmt_rate(delivered),
        fmt_ms(all.ms(0.5)),
        fmt_ms(all.ms(0.99)),
        fmt_ms(all.max_ms()),
        lost.to_string(),
        per_sub.map_or("-".into(), |v| format!("{v:.1}")),
        rss_after.map_or("-".into(), |v| format!("{:.0}", v as f64 / 1024.0)),
        format!("{connect_secs:.2}"),
        format!("{drain_secs:.2}"),
        cpu.cell(),
    ];
    let mut j = all.json();
    cpu.add_json(&mut j);
    let obj = j.as_object_mut().expect("object");
    obj.insert("subscribers".into(), json!(subs));
    obj.insert("subscriber_connections".into(), json!(nconn));
    obj.insert("target_events_per_s".into(), json!(rate));
    obj.insert("written".into(), json!(written));
    obj.insert("written_per_s".into(), json!(round1(write_rate)));
    obj.insert("expected_events".into(), json!(expected.len()));
    obj.insert("delivered_per_s".into(), json!(round1(delivered)));
    obj.insert("lost".into(), json!(lost));
    obj.insert("unexpected".into(), json!(extra));
    obj.insert("out_of_order".into(), json!(disorder));
    obj.insert("write_errors".into(), json!(write_errors));
    obj.insert("subscription_errors".into(), json!(sub_errors));
    obj.insert("rss_before_kib".into(), json!(rss_before));
    obj.insert("rss_idle_kib".into(), json!(rss_idle));
    obj.insert("rss_after_kib".into(), json!(rss_after));
    obj.insert(
        "rss_per_subscriber_kib".into(),
        per_sub.map_or(Value::Null, |v| json!(round1(v))),
    );
    obj.insert(
        "connect_s".into(),
        json!(round1(connect_secs * 100.0) / 100.0),
    );
    obj.insert("drain_s".into(), json!(round1(drain_secs * 100.0) / 100.0));
    Ok((row, j))
}

async fn run_fanout(
    world: &World,
    plan: &Plan,
    report: &mut Report,
    text: &mut String,
) -> Result<()> {
    let mut rows = Vec::new();
    let mut points = Vec::new();
    for &(subs, rate) in &plan.fanout {
        match fanout_point(world, plan, subs, rate, report).await {
            Ok((row, j)) => {
                rows.push(row);
                points.push(j);
            }
            Err(e) => {
                report
                    .failures
                    .push(format!("fanout {subs}x{rate} could not run: {e}"));
                progress(format!("fanout {subs}x{rate} could not run: {e}"));
            }
        }
    }
    text.push_str(&table(
        "fanout: subscribers on one channel while writers send at a set rate",
        &format!(
            "subscribers as united-states with a channel filter, {SUBSCRIBERS_PER_CONNECTION} per connection; \
             {FANOUT_WRITERS} writer tasks on spread ticks, open loop (each tick starts a send; up to {FANOUT_MAX_IN_FLIGHT} in flight); latency = receipt - record_time of events written in the \
             {:.2} s window (after {:.2} s warm-up); RSS/sub = (idle - before) / subscribers, RSS end = after the point; \
             drain = writers stopped -> last subscriber done",
            plan.timing.measure.as_secs_f64(),
            plan.timing.warmup.as_secs_f64()
        ),
        &[
            "subscribers",
            "target ev/s",
            "written/s",
            "delivered/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "lost",
            "RSS/sub KiB",
            "RSS end MiB",
            "connect s",
            "drain s",
            "CPU srv/bench %",
        ],
        &rows,
    ));
    report.json.insert("fanout".into(), json!(points));
    Ok(())
}

/// Writes `n` messages on `channel` with many requests in flight, saying
/// how far it got every `progress_every`; returns a sample of their ids and
/// how long it took.
#[allow(clippy::too_many_arguments)]
async fn bulk_write(
    world: &World,
    channel: &str,
    n: u64,
    concurrency: usize,
    label: &str,
    cap: Option<Duration>,
    progress_every: Duration,
    request_id: bool,
    report: &mut Report,
) -> Result<Bulk> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let sample = Arc::new(Mutex::new(Vec::new()));
    let stride = (n / 4000).max(1);
    let started = Instant::now();
    let reporter = {
        let done = done.clone();
        let label = label.to_string();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(progress_every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let d = done.load(Ordering::Relaxed);
                progress(format!(
                    "{label}: wrote {} of {} messages ({}/s)",
                    fmt_rate(d as f64),
                    fmt_rate(n as f64),
                    fmt_rate(d as f64 / started.elapsed().as_secs_f64())
                ));
            }
        })
    };
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let mut m = world.iran.on(t).messages;
        let (next, done, sample) = (next.clone(), done.clone(), sample.clone());
        let stored = world.stored.clone();
        let channel = channel.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut errors, mut first_error) = (0u64, None);
            loop {
                if cap.is_some_and(|c| started.elapsed() >= c) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let mut req = send_req(&channel, i);
                if request_id {
                    req.request_id = uuid::Uuid::new_v4().to_string();
                }
                match m.send_message(req).await {
                    Ok(r) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        stored.fetch_add(1, Ordering::Relaxed);
                        if i % stride == 0 {
                            sample.lock().unwrap().push(r.into_inner().id);
                        }
                    }
                    Err(s) => {
                        errors += 1;
                        first_error
                            .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (errors, first_error)
        }));
    }
    let mut errors = 0;
    let mut first = None;
    for t in tasks {
        let (e, f) = t.await?;
        errors += e;
        if first.is_none() {
            first = f;
        }
    }
    reporter.abort();
    if errors > 0 {
        report.errors += errors;
        report.failures.push(format!(
            "{label}: {errors} sends failed (first: {})",
            first.unwrap_or_default()
        ));
    }
    let written = done.load(Ordering::Relaxed);
    Ok(Bulk {
        ids: std::mem::take(&mut *sample.lock().unwrap()),
        written,
        secs: started.elapsed().as_secs_f64(),
        capped: written + errors < n,
    })
}

/// What [`bulk_write`] did.
struct Bulk {
    /// A sample of the ids written (about 4,000, spread evenly).
    ids: Vec<String>,
    /// Messages written.
    written: u64,
    /// How long it took.
    secs: f64,
    /// Whether it stopped at its time cap before writing all it was asked.
    capped: bool,
}

/// The catch-up read: one admin subscriber from `start_after = 0` to the
/// caught-up heartbeat.
async fn catchup_read(world: &World) -> Result<Value> {
    let conn = connect(&world.addr).await?;
    let started = Instant::now();
    let mut stream = subscribe_lite(
        conn,
        &world.admin.bearer,
        pb::SubscribeRequest {
            start_after: Some(0),
            ..Default::default()
        },
    )
    .await?;
    let (mut count, mut last, mut gaps, mut disorder) = (0u64, 0u64, 0u64, 0u64);
    let mut next_progress = Instant::now() + Duration::from_secs(3);
    let head = loop {
        let r = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .map_err(|_| "catchup: no item from the stream within 60 s")??
            .ok_or("catchup: the stream ended before the caught-up heartbeat")?;
        if let Some(e) = r.event {
            count += 1;
            if e.sequence <= last {
                disorder += 1;
            } else {
                gaps += e.sequence - last - 1;
                last = e.sequence;
            }
            if count.is_multiple_of(65536) && Instant::now() >= next_progress {
                next_progress = Instant::now() + Duration::from_secs(3);
                progress(format!(
                    "catchup: read {} events ({}/s)",
                    fmt_rate(count as f64),
                    fmt_rate(count as f64 / started.elapsed().as_secs_f64())
                ));
            }
        } else if let Some(h) = r.heartbeat {
            break h.head_sequence;
        }
    };
    let secs = started.elapsed().as_secs_f64();
    // The admin sees every event, unfiltered: anything below the head that
    // did not arrive is lost.
    gaps += head.saturating_sub(last);
    Ok(json!({
        "events": count,
        "head_sequence": head,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "events_per_s": round1(count as f64 / secs),
        "lost": gaps,
        "out_of_order": disorder,
    }))
}

/// Latency of reads with what is stored now.
/// Sequential calls of `f`: up to `calls / 10` unrecorded (at most the
/// warm-up time), then up to `calls` recorded (at most the measurement time:
/// a slow server must not make the run endless). `f` returns how many items
/// it got; the least of those is returned beside the samples.
async fn sequential<F, Fut>(calls: usize, t: Timing, mut f: F) -> Result<(Samples, usize)>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<usize, Status>>,
{
    let warming = Instant::now();
    let mut i = 0;
    while i < calls / 10 && warming.elapsed() < t.warmup {
        f(i).await?;
        i += 1;
    }
    let mut s = Samples::default();
    let mut min_items = usize::MAX;
    let started = Instant::now();
    while s.len() < calls && started.elapsed() < t.measure {
        let a = Instant::now();
        let items = f(i).await?;
        s.0.push(elapsed_ns(a));
        min_items = min_items.min(items);
        i += 1;
    }
    s.finish();
    Ok((s, min_items))
}

/// Latency of reads with what is stored now.
async fn scale_point(
    world: &World,
    plan: &Plan,
    label: &str,
    channel: &str,
    ids: &[String],
    channel_messages: u64,
) -> Result<(Vec<String>, Value)> {
    if ids.is_empty() {
        return Err(format!("scale {label}: no message was written").into());
    }
    let head = world.head(channel).await?;
    let c = world.iran.on(0).messages;
    let (calls, cap) = (plan.scale_calls, plan.timing);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ channel_messages;
    let (get, _) = sequential(calls, cap, |_| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let req = pb::GetMessageRequest {
            message_id: ids[(rng % ids.len() as u64) as usize].clone(),
        };
        let mut c = c.clone();
        async move { c.get_message(req).await.map(|_| 1) }
    })
    .await?;
    let list = |channel_id: String| {
        let c = c.clone();
        move |_| {
            let req = pb::ListMessagesRequest {
                channel_id: channel_id.clone(),
                page_size: 50,
                ..Default::default()
            };
            let mut c = c.clone();
            async move {
                c.list_messages(req)
                    .await
                    .map(|r| r.into_inner().messages.len())
            }
        }
    };
    let (list_channel, items) = sequential(calls, cap, list(channel.to_string())).await?;
    let (list_all, _) = sequential(calls, cap, list(String::new())).await?;
    if items < 50 {
        return Err(format!("scale {label}: a ListMessages page had {items} items, not 50").into());
    }
    progress(format!(
        "scale {label}: GetMessage p99 {} ms, ListMessages(channel) p99 {} ms, ListMessages(all) p99 {} ms",
        fmt_ms(get.ms(0.99)),
        fmt_ms(list_channel.ms(0.99)),
        fmt_ms(list_all.ms(0.99)),
    ));
    let row = vec![
        label.to_string(),
        fmt_rate(channel_messages as f64),
        fmt_rate(head as f64),
        get.len()
            .min(list_channel.len())
            .min(list_all.len())
            .to_string(),
        fmt_ms(get.ms(0.5)),
        fmt_ms(get.ms(0.99)),
        fmt_ms(list_channel.ms(0.5)),
        fmt_ms(list_channel.ms(0.99)),
        fmt_ms(list_all.ms(0.5)),
        fmt_ms(list_all.ms(0.99)),
    ];
    let j = json!({
        "point": label,
        "channel_messages": channel_messages,
        "log_head": head,
        "get_message": get.json(),
        "list_messages_channel": list_channel.json(),
        "list_messages_all": list_all.json(),
    });
    Ok((row, j))
}

// ---------------------------------------------------------------------------
// Sustained load

/// Where the server under test keeps its record, for the disk figures.
#[derive(Debug, Clone)]
enum Storage {
    /// The embedded store, in this data directory.
    Embedded(PathBuf),
    /// The PostgreSQL database `name`, sized through a connection to
    /// `admin_url`.
    Postgres { admin_url: String, name: String },
    /// A `--target` server: its storage is out of the bench's sight.
    Remote,
}

impl Storage {
    /// The embedded store's write-ahead log file.
    fn wal_path(&self) -> Option<PathBuf> {
        match self {
            Storage::Embedded(dir) => {
                Some(dir.join(format!("{}-wal", backchannel::store::sqlite::DB_FILE)))
            }
            Storage::Postgres { .. } | Storage::Remote => None,
        }
    }

    /// What [`Storage::bytes`] measures, for the report.
    fn source(&self) -> Option<&'static str> {
        match self {
            Storage::Embedded(_) => Some("data_dir"),
            Storage::Postgres { .. } => Some("pg_database_size"),
            Storage::Remote => None,
        }
    }

    /// The bytes the record takes now: every file in the data directory,
    /// or PostgreSQL's `pg_database_size` of the bench's database; `None`
    /// for a server the bench did not start.
    async fn bytes(&self) -> Result<Option<u64>> {
        match self {
            Storage::Embedded(dir) => {
                let dir = dir.clone();
                Ok(Some(
                    tokio::task::spawn_blocking(move || dir_bytes(&dir)).await??,
                ))
            }
            Storage::Postgres { admin_url, name } => {
                let (url, name) = (admin_url.clone(), name.clone());
                let size = tokio::task::spawn_blocking(move || -> Result<i64> {
                    let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
                    let row = c.query_one("SELECT pg_database_size($1::name)", &[&name])?;
                    Ok(row.try_get(0)?)
                })
                .await??;
                Ok(Some(u64::try_from(size)?))
            }
            Storage::Remote => Ok(None),
        }
    }
}

/// The total length of the files under `dir`. A file that goes away while
/// it is counted (SQLite's `-shm`, say) counts as empty.
fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = match entry.path().symlink_metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            total += dir_bytes(&entry.path())?;
        } else {
            total += meta.len();
        }
    }
    Ok(total)
}

/// A file's length: 0 if it does not exist (SQLite removes its WAL when
/// the last connection closes cleanly), `None` if it cannot be looked at.
fn file_len(path: &Path) -> Option<u64> {
    match std::fs::metadata(path) {
        Ok(m) => Some(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(0),
        Err(_) => None,
    }
}

/// Samples the length of the write-ahead log every [`WAL_POLL`] until it
/// is stopped.
struct WalWatch {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<(Instant, u64)>>,
}

impl WalWatch {
    fn start(path: PathBuf) -> WalWatch {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(WAL_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        if let Some(n) = file_len(&path) {
                            samples.push((Instant::now(), n));
                        }
                    }
                }
            }
            samples
        });
        WalWatch { stop, task }
    }

    /// Stops polling; the samples taken (time, bytes), oldest first.
    async fn stop(self) -> Vec<(Instant, u64)> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// The largest WAL length sampled in `[from, to)`.
fn wal_peak(samples: &[(Instant, u64)], from: Instant, to: Instant) -> Option<u64> {
    samples
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, n)| *n)
        .max()
}

fn fmt_mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1}", b as f64 / MIB as f64))
}

/// `sustained`: tops the store up to [`SustainedPlan::preload`] messages,
/// measures a no-op baseline at the same concurrency, then sends with a
/// fresh `request_id` per call for [`SustainedPlan::run`], slice by slice,
/// while it watches the write-ahead log; last, the disk used per message.
async fn run_sustained(
    world: &World,
    plan: &Plan,
    storage: &Storage,
    report: &mut Report,
    text: &mut String,
) -> Result<()> {
    let sp = plan.sustained;
    let channel = world.channel("bench sustained").await?;
    let wal = storage.wal_path();

    // The store must already hold `preload` messages: what earlier
    // scenarios stored counts, the rest is written now, as fast as the
    // server takes it.
    let stored_before = world.stored.load(Ordering::Relaxed);
    let missing = sp.preload.saturating_sub(stored_before);
    let mut preload = None;
    let mut preload_wal = None;
    if missing > 0 {
        progress(format!(
            "sustained: preloading {} messages ({} stored already)",
            fmt_count(missing),
            fmt_count(stored_before)
        ));
        let watch = wal.clone().map(WalWatch::start);
        let b = bulk_write(
            world,
            &channel,
            missing,
            BULK_CONCURRENCY,
            "sustained preload",
            None,
            PRELOAD_PROGRESS,
            // As the measured sends: a store written by careful clients
            // holds their idempotency records, and its index is no
            // longer empty when the first slice is measured.
            sp.request_id,
            report,
        )
        .await?;
        if let Some(w) = watch {
            preload_wal = w.stop().await.iter().map(|(_, n)| *n).max();
        }
        progress(format!(
            "sustained: preloaded {} messages in {:.1} s ({}/s)",
            fmt_count(b.written),
            b.secs,
            fmt_rate(b.written as f64 / b.secs)
        ));
        preload = Some(b);
    }
    let at_start = world.stored.load(Ordering::Relaxed);

    // The no-op ceiling, at the same concurrency, on the same server state.
    let base = closed_loop(
        sp.in_flight,
        plan.timing,
        world.server_pid,
        health_op(world),
    )
    .await;
    report.error("sustained baseline", &base);
    progress(format!(
        "sustained: baseline c={}: {} calls/s, p99 {} ms",
        sp.in_flight,
        fmt_rate(base.rate()),
        fmt_ms(base.whole.ms(0.99))
    ));

    progress(format!(
        "sustained: {} SendMessage calls {} in flight for {:.0} s, on {} messages",
        sp.in_flight,
        if sp.request_id {
            "with request_id"
        } else {
            "without request_id"
        },
        sp.run.as_secs_f64(),
        fmt_count(at_start)
    ));
    let timing = Timing {
        warmup: plan.timing.warmup,
        measure: sp.run,
    };
    let watch = wal.clone().map(WalWatch::start);
    let sends = closed_loop_sliced(
        sp.in_flight,
        timing,
        Some(sp.slice),
        world.server_pid,
        send_op(world, &channel, sp.request_id),
    )
    .await;
    let wal_samples = match watch {
        Some(w) => Some(w.stop().await),
        None => None,
    };
    report.error("sustained", &sends);
    let disk = match storage.bytes().await {
        Ok(b) => b,
        Err(e) => {
            progress(format!("sustained: cannot measure the disk used: {e}"));
            None
        }
    };
    let s = Sustained::new(
        plan,
        storage,
        Preload {
            stored_before,
            bulk: preload,
            wal_peak: preload_wal,
        },
        at_start,
        base,
        sends,
        wal_samples.as_deref(),
        wal.as_deref().and_then(file_len),
        disk,
        world.stored.load(Ordering::Relaxed),
    );
    progress(format!(
        "sustained: {} calls/s ({}x baseline), last/first slice {}, WAL peak {} MiB, {} bytes/message",
        fmt_rate(s.sends.rate()),
        fmt_ratio(s.to_baseline),
        fmt_ratio(s.last_to_first),
        fmt_mib(s.wal_peak),
        s.per_message
            .map_or("-".into(), |v| fmt_count(v.round() as u64))
    ));
    text.push_str(&s.text());
    report.json.insert("sustained".into(), s.json());
    Ok(())
}

/// How `sustained` met its preload.
struct Preload {
    /// Messages earlier scenarios had stored.
    stored_before: u64,
    /// What was written to make up the rest, if anything was missing.
    bulk: Option<Bulk>,
    /// The WAL's largest size while that was written.
    wal_peak: Option<u64>,
}

/// One slice of the `sustained` sends.
struct Slice {
    /// From the start of the measurement window.
    from: Duration,
    to: Duration,
    /// Calls that ended in the slice, per second.
    rate: f64,
    /// The WAL's largest size sampled in the slice.
    wal_peak: Option<u64>,
}

/// What `sustained` measured, and the figures derived from it.
struct Sustained<'a> {
    plan: &'a Plan,
    storage: &'a Storage,
    preload: Preload,
    /// Messages stored when the sends started.
    at_start: u64,
    /// `Health/Check` at the same concurrency.
    base: Load,
    /// The sends, with their slices.
    sends: Load,
    slices: Vec<Slice>,
    /// The WAL's largest size while sending (warm-up included).
    wal_peak: Option<u64>,
    /// Its size when the disk was measured, right after the sends.
    wal_now: Option<u64>,
    /// What [`Storage::bytes`] said right after the sends.
    disk: Option<u64>,
    /// Messages stored then.
    stored: u64,
    per_message: Option<f64>,
    /// The same without the WAL, which a checkpoint empties into the
    /// database file (and which a WAL over its bound dominates).
    per_message_without_wal: Option<f64>,
    last_to_first: Option<f64>,
    to_baseline: Option<f64>,
}

impl<'a> Sustained<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        plan: &'a Plan,
        storage: &'a Storage,
        preload: Preload,
        at_start: u64,
        base: Load,
        sends: Load,
        wal_samples: Option<&[(Instant, u64)]>,
        wal_now: Option<u64>,
        disk: Option<u64>,
        stored: u64,
    ) -> Sustained<'a> {
        let m0 = sends.window_start;
        let slices: Vec<Slice> = slice_bounds(plan.sustained.run, plan.sustained.slice)
            .into_iter()
            .zip(&sends.slices)
            .map(|((from, to), s)| Slice {
                from,
                to,
                rate: s.len() as f64 / (to - from).as_secs_f64(),
                wal_peak: wal_samples.and_then(|w| wal_peak(w, m0 + from, m0 + to)),
            })
            .collect();
        let last_to_first = match (slices.first(), slices.last()) {
            (Some(f), Some(l)) if slices.len() > 1 && f.rate > 0.0 => Some(l.rate / f.rate),
            _ => None,
        };
        Sustained {
            plan,
            storage,
            preload,
            at_start,
            to_baseline: (base.rate() > 0.0).then(|| sends.rate() / base.rate()),
            base,
            wal_peak: wal_samples.and_then(|w| w.iter().map(|(_, n)| *n).max()),
            sends,
            slices,
            wal_now,
            per_message: disk
                .filter(|_| stored > 0)
                .map(|b| b as f64 / stored as f64),
            per_message_without_wal: match (disk, wal_now) {
                (Some(d), Some(w)) if stored > 0 => {
                    Some(d.saturating_sub(w) as f64 / stored as f64)
                }
                _ => None,
            },
            disk,
            stored,
            last_to_first,
        }
    }

    /// The table, with what it was measured on above it.
    fn text(&self) -> String {
        let (sp, timing) = (&self.plan.sustained, &self.plan.timing);
        let mut note = match &self.preload.bulk {
            Some(b) => format!(
                "preload: {} messages written first ({BULK_CONCURRENCY} in flight, {}) in {:.1} s ({}/s), \
                 beside the {} earlier scenarios stored",
                fmt_count(b.written),
                if sp.request_id {
                    "each with a request_id, as the measured sends"
                } else {
                    "no request_id"
                },
                b.secs,
                fmt_rate(b.written as f64 / b.secs),
                fmt_count(self.preload.stored_before)
            ),
            None => format!(
                "preload: none needed, earlier scenarios stored {} messages",
                fmt_count(self.preload.stored_before)
            ),
        };
        note.push_str(&format!(
            "; the store held {} messages at the start{}\n",
            fmt_count(self.at_start),
            if self.at_start < DEFAULT_SUSTAINED_PRELOAD {
                format!(
                    " (NOTE: not the {} of the target; --sustained-preload {DEFAULT_SUSTAINED_PRELOAD} for that)",
                    fmt_count(DEFAULT_SUSTAINED_PRELOAD)
                )
            } else {
                String::new()
            }
        ));
        note.push_str(&format!(
            "no-op baseline (Health/Check, {} in flight, {:.2} s after {:.2} s warm-up): {} calls/s, p99 {} ms, \
             CPU server/bench {} %\n",
            sp.in_flight,
            timing.measure.as_secs_f64(),
            timing.warmup.as_secs_f64(),
            fmt_rate(self.base.rate()),
            fmt_ms(self.base.whole.ms(0.99)),
            self.base.cpu.cell()
        ));
        note.push_str(&format!(
            "sends: {} calls in {:.0} s after {:.2} s warm-up = {} calls/s; sustained/baseline {}; \
             last/first slice {}; {} failed calls; CPU server/bench {} %\n",
            fmt_count(self.sends.whole.len() as u64),
            sp.run.as_secs_f64(),
            timing.warmup.as_secs_f64(),
            fmt_rate(self.sends.rate()),
            fmt_ratio(self.to_baseline),
            fmt_ratio(self.last_to_first),
            self.sends.errors,
            self.sends.cpu.cell()
        ));
        note.push_str(&match (self.storage, self.wal_peak) {
            (Storage::Embedded(_), Some(peak)) => format!(
                "WAL ({}-wal, sampled every {} ms): peak {} MiB while sending{}; \
                 the bound claimed is {} MiB: {}\n",
                backchannel::store::sqlite::DB_FILE,
                WAL_POLL.as_millis(),
                fmt_mib(Some(peak)),
                self.preload.wal_peak.map_or(String::new(), |p| format!(
                    ", {} MiB during the preload",
                    fmt_mib(Some(p))
                )),
                fmt_mib(Some(sp.wal_bound)),
                if peak <= sp.wal_bound {
                    "within it"
                } else {
                    "OVER IT"
                }
            ),
            (Storage::Embedded(_), None) => "WAL: could not be sampled\n".into(),
            (Storage::Postgres { .. }, _) => "WAL: n/a (PostgreSQL)\n".into(),
            (Storage::Remote, _) => "WAL: n/a (a --target server)\n".into(),
        });
        let per_msg = |v: Option<f64>| v.map_or("-".into(), |v| fmt_count(v.round() as u64));
        let per = per_msg(self.per_message);
        note.push_str(&match (self.storage, self.disk) {
            (Storage::Embedded(_), Some(b)) => format!(
                "disk: {} MiB in the data directory (the WAL {} MiB of it) for {} messages stored = {per} bytes/message \
                 ({} without the WAL)",
                fmt_mib(Some(b)),
                fmt_mib(self.wal_now),
                fmt_count(self.stored),
                per_msg(self.per_message_without_wal),
            ),
            (Storage::Postgres { name, .. }, Some(b)) => format!(
                "disk: {} MiB (pg_database_size of {name}) for {} messages stored = {per} bytes/message",
                fmt_mib(Some(b)),
                fmt_count(self.stored),
            ),
            (Storage::Remote, _) => "disk: n/a (a --target server)".into(),
            (_, None) => "disk: could not be measured".into(),
        });
        let mut rows: Vec<Vec<String>> = self
            .slices
            .iter()
            .zip(&self.sends.slices)
            .enumerate()
            .map(|(k, (sl, s))| {
                vec![
                    (k + 1).to_string(),
                    fmt_secs(sl.from),
                    fmt_secs(sl.to),
                    fmt_rate(sl.rate),
                    fmt_ms(s.ms(0.5)),
                    fmt_ms(s.ms(0.99)),
                    fmt_ms(s.max_ms()),
                    fmt_mib(sl.wal_peak),
                ]
            })
            .collect();
        rows.push(vec![
            "all".into(),
            fmt_secs(Duration::ZERO),
            fmt_secs(sp.run),
            fmt_rate(self.sends.rate()),
            fmt_ms(self.sends.whole.ms(0.5)),
            fmt_ms(self.sends.whole.ms(0.99)),
            fmt_ms(self.sends.whole.max_ms()),
            fmt_mib(self.wal_peak),
        ]);
        table(
            &format!(
                "sustained: SendMessage {}, {} in flight for {:.0} s, \
                 on a store holding {} messages",
                if sp.request_id {
                    "with a request_id (a fresh UUID v4 per call)"
                } else {
                    "without a request_id (--sustained-without-request-id)"
                },
                sp.in_flight,
                sp.run.as_secs_f64(),
                fmt_count(self.at_start)
            ),
            &note,
            &[
                "slice",
                "from s",
                "to s",
                "calls/s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "WAL peak MiB",
            ],
            &rows,
        )
    }

    /// The same figures, for `--json`.
    fn json(&self) -> Value {
        let sp = &self.plan.sustained;
        let mut j = self.sends.whole.json();
        self.sends.cpu.add_json(&mut j);
        let mut base = self.base.whole.json();
        base["concurrency"] = json!(sp.in_flight);
        base["calls_per_s"] = json!(round1(self.base.rate()));
        base["errors"] = json!(self.base.errors);
        self.base.cpu.add_json(&mut base);
        let slices: Vec<Value> = self
            .slices
            .iter()
            .zip(&self.sends.slices)
            .enumerate()
            .map(|(k, (sl, s))| {
                let mut v = s.json();
                v["slice"] = json!(k + 1);
                v["start_s"] = json!(sl.from.as_secs_f64());
                v["end_s"] = json!(sl.to.as_secs_f64());
                v["calls_per_s"] = json!(round1(sl.rate));
                v["wal_peak_bytes"] = json!(sl.wal_peak);
                v
            })
            .collect();
        let bulk = self.preload.bulk.as_ref();
        j["request_id"] = if sp.request_id {
            json!("uuid_v4")
        } else {
            json!(false)
        };
        j["in_flight"] = json!(sp.in_flight);
        j["warmup_s"] = json!(self.plan.timing.warmup.as_secs_f64());
        j["seconds"] = json!(sp.run.as_secs_f64());
        j["slice_seconds"] = json!(sp.slice.as_secs_f64());
        j["preload"] = json!({
            "asked": sp.preload,
            "stored_before": self.preload.stored_before,
            "written": bulk.map_or(0, |b| b.written),
            "seconds": bulk.map(|b| round3(Some(b.secs))),
            "written_per_s": bulk.map(|b| round1(b.written as f64 / b.secs)),
            "concurrency": BULK_CONCURRENCY,
            "request_id": false,
            "wal_peak_bytes": self.preload.wal_peak,
        });
        j["messages_at_start"] = json!(self.at_start);
        j["calls_per_s"] = json!(round1(self.sends.rate()));
        j["errors"] = json!(self.sends.errors);
        j["slices"] = json!(slices);
        j["last_to_first_slice"] = round3(self.last_to_first);
        j["baseline"] = base;
        j["ratio_to_baseline"] = round3(self.to_baseline);
        j["wal_peak_bytes"] = json!(self.wal_peak);
        j["wal_bound_bytes"] = json!(sp.wal_bound);
        j["wal_within_bound"] = json!(self.wal_peak.map(|p| p <= sp.wal_bound));
        j["wal_poll_ms"] = json!(WAL_POLL.as_millis() as u64);
        // Filled in once the server has stopped (embedded store only).
        j["wal_bytes_after_stop"] = Value::Null;
        j["disk"] = json!({
            "source": self.storage.source(),
            "bytes": self.disk,
            "wal_bytes": self.wal_now,
            "messages_stored": self.stored,
            "bytes_per_message": self.per_message.map(round1),
            "bytes_per_message_without_wal": self.per_message_without_wal.map(round1),
        });
        j
    }
}

// ---------------------------------------------------------------------------
// Main

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(attack) = &args.attacker {
        return abuse::attacker_main(attack);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("backchannel-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops the run, which stops the server and removes its data.
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        }
    });
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("backchannel-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the selected scenarios; `Ok(false)` if anything was lost or failed.
async fn run(args: Args) -> Result<bool> {
    let plan = Plan::new(&args);
    let on = |s: Scenario| args.only.is_empty() || args.only.contains(&s);
    let run_started = Instant::now();

    let (addr, admin_token, mut spawned, server_bin, backend) = match &args.target {
        Some(addr) => (
            addr.clone(),
            args.admin_token.clone().unwrap_or_default(),
            None,
            None,
            "remote".to_string(),
        ),
        None => {
            let bin = match &args.server_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()?.with_file_name("backchannel"),
            };
            let token = format!(
                "bench-{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            progress(format!("starting {}", bin.display()));
            let (s, addr) = Spawned::start(&bin, &token, args.database_url.as_deref())?;
            let backend = if args.database_url.is_some() {
                "postgres"
            } else {
                "embedded"
            };
            (addr, token, Some(s), Some(bin), backend.to_string())
        }
    };
    let pid = spawned.as_ref().map(|s| s.pid);
    let storage = match &spawned {
        Some(s) => match &s.db {
            Some(db) => Storage::Postgres {
                admin_url: db.admin_url.clone(),
                name: db.name.clone(),
            },
            None => Storage::Embedded(s.data_dir.clone()),
        },
        None => Storage::Remote,
    };
    progress(format!(
        "server at {addr} ({backend}{})",
        pid.map_or(String::new(), |p| format!(", pid {p}"))
    ));
    let world = World::setup(&addr, &admin_token, plan.connections, pid).await?;
    let debug_server = server_bin
        .as_ref()
        .is_some_and(|b| b.components().any(|c| c.as_os_str() == "debug"));

    let mut report = Report {
        json: serde_json::Map::new(),
        errors: 0,
        lost: 0,
        failures: Vec::new(),
    };
    let mut sections: HashMap<&str, String> = HashMap::new();
    let mut scale_rows = Vec::new();
    let mut scale_json = Vec::new();
    let mut large_written = None;

    // scale, small point: a fresh record holds little.
    if on(Scenario::Scale) {
        let r = async {
            let ch = world.channel("bench scale small").await?;
            let b = bulk_write(
                &world,
                &ch,
                plan.scale_small,
                64,
                "scale (small)",
                None,
                BULK_PROGRESS,
                false,
                &mut report,
            )
            .await?;
            scale_point(&world, &plan, "small", &ch, &b.ids, b.written).await
        }
        .await;
        match r {
            Ok((row, j)) => {
                scale_rows.push(row);
                scale_json.push(j);
            }
            Err(e) => report
                .failures
                .push(format!("scale (small) could not run: {e}")),
        }
    }
    if on(Scenario::Baseline) || on(Scenario::Send) {
        let mut text = String::new();
        if let Err(e) = run_baseline_send(
            &world,
            &plan,
            on(Scenario::Baseline),
            on(Scenario::Send),
            &mut report,
            &mut text,
        )
        .await
        {
            report
                .failures
                .push(format!("baseline/send could not run: {e}"));
        }
        sections.insert("send", text);
    }
    if on(Scenario::Lifecycle) {
        let mut text = String::new();
        if let Err(e) = run_lifecycle(&world, &plan, &mut report, &mut text).await {
            report
                .failures
                .push(format!("lifecycle could not run: {e}"));
        }
        sections.insert("lifecycle", text);
    }
    if on(Scenario::Fanout) {
        let mut text = String::new();
        if let Err(e) = run_fanout(&world, &plan, &mut report, &mut text).await {
            report.failures.push(format!("fanout could not run: {e}"));
        }
        sections.insert("fanout", text);
    }
    if on(Scenario::Catchup) || on(Scenario::Scale) {
        let n = plan.catchup_events;
        let r = async {
            let ch = world.channel("bench catchup").await?;
            progress(format!("catchup: writing {} messages", fmt_rate(n as f64)));
            let b = bulk_write(
                &world,
                &ch,
                n,
                BULK_CONCURRENCY,
                "catchup",
                plan.catchup_cap,
                BULK_PROGRESS,
                false,
                &mut report,
            )
            .await?;
            progress(format!(
                "catchup: wrote {} messages in {:.1} s ({}/s){}",
                fmt_rate(b.written as f64),
                b.secs,
                fmt_rate(b.written as f64 / b.secs),
                if b.capped {
                    " -- stopped at the time cap"
                } else {
                    ""
                }
            ));
            let mut catchup = None;
            if on(Scenario::Catchup) {
                let mut j = catchup_read(&world).await?;
                j["asked"] = json!(n);
                j["written"] = json!(b.written);
                j["write_capped"] = json!(b.capped);
                j["write_seconds"] = json!((b.secs * 1000.0).round() / 1000.0);
                j["written_per_s"] = json!(round1(b.written as f64 / b.secs));
                j["write_concurrency"] = json!(BULK_CONCURRENCY);
                catchup = Some(j);
            }
            let mut large = None;
            if on(Scenario::Scale) {
                large = Some(scale_point(&world, &plan, "large", &ch, &b.ids, b.written).await?);
            }
            Ok::<_, Error>((catchup, large, b))
        }
        .await;
        match r {
            Ok((catchup, large, b)) => {
                large_written = Some((b.written, b.capped));
                if let Some(j) = catchup {
                    let lost =
                        j["lost"].as_u64().unwrap_or(0) + j["out_of_order"].as_u64().unwrap_or(0);
                    if lost > 0 {
                        report.lost += lost;
                        report
                            .failures
                            .push(format!("catchup: {lost} events lost or out of order"));
                    }
                    progress(format!(
                        "catchup: read {} events in {} s ({} events/s)",
                        j["events"],
                        j["seconds"],
                        fmt_rate(j["events_per_s"].as_f64().unwrap_or(0.0))
                    ));
                    sections.insert(
                        "catchup",
                        table(
                            "catchup: one subscriber replays the log from start_after=0 to the caught-up heartbeat",
                            &format!(
                                "written first with {BULK_CONCURRENCY} SendMessage calls in flight: {} messages in {} s ({}/s){}",
                                fmt_rate(b.written as f64),
                                j["write_seconds"],
                                fmt_rate(j["written_per_s"].as_f64().unwrap_or(0.0)),
                                if b.written < FULL_CATCHUP_EVENTS {
                                    format!(
                                        "\nNOTE: {} messages, not the 1,000,000 of the target{} (--catchup-events 1000000 for that)",
                                        fmt_rate(b.written as f64),
                                        if b.capped { "; writing stopped at its time cap" } else { "" }
                                    )
                                } else {
                                    String::new()
                                }
                            ),
                            &["events read", "seconds", "events/s", "lost"],
                            &[vec![
                                fmt_rate(j["events"].as_f64().unwrap_or(0.0)),
                                format!("{:.2}", j["seconds"].as_f64().unwrap_or(0.0)),
                                fmt_rate(j["events_per_s"].as_f64().unwrap_or(0.0)),
                                j["lost"].to_string(),
                            ]],
                        ),
                    );
                    report.json.insert("catchup".into(), j);
                }
                if let Some((row, j)) = large {
                    scale_rows.push(row);
                    scale_json.push(j);
                }
            }
            Err(e) => report
                .failures
                .push(format!("catchup/scale (large) could not run: {e}")),
        }
    }
    if on(Scenario::Scale) {
        let mut ratios = Value::Null;
        let mut note = format!(
            "sequential calls by iran, each kind {} times (or for {:.2} s if that is sooner) after up to {} \
             warm-up calls: GetMessage of random stored ids, ListMessages page_size=50 on the channel, \
             and with no filter (all it may see)",
            plan.scale_calls,
            plan.timing.measure.as_secs_f64(),
            plan.scale_calls / 10
        );
        if scale_json.len() == 2 {
            let r = |k: &str, q: &str| -> Value {
                match (scale_json[0][k][q].as_f64(), scale_json[1][k][q].as_f64()) {
                    (Some(a), Some(b)) if a > 0.0 => json!(((b / a) * 100.0).round() / 100.0),
                    _ => Value::Null,
                }
            };
            ratios = json!({
                "get_message_p50": r("get_message", "p50_ms"),
                "get_message_p99": r("get_message", "p99_ms"),
                "list_messages_channel_p50": r("list_messages_channel", "p50_ms"),
                "list_messages_channel_p99": r("list_messages_channel", "p99_ms"),
                "list_messages_all_p50": r("list_messages_all", "p50_ms"),
                "list_messages_all_p99": r("list_messages_all", "p99_ms"),
            });
            scale_rows.push(vec![
                "large/small".into(),
                String::new(),
                String::new(),
                String::new(),
                format!("{}x", ratios["get_message_p50"]),
                format!("{}x", ratios["get_message_p99"]),
                format!("{}x", ratios["list_messages_channel_p50"]),
                format!("{}x", ratios["list_messages_channel_p99"]),
                format!("{}x", ratios["list_messages_all_p50"]),
                format!("{}x", ratios["list_messages_all_p99"]),
            ]);
        }
        if let Some((written, capped)) = large_written
            && written < FULL_CATCHUP_EVENTS
        {
            note.push_str(&format!(
                "\nNOTE: the large point holds {} messages, not 1,000,000{} (--catchup-events 1000000 for that)",
                fmt_rate(written as f64),
                if capped { ", as writing stopped at its time cap" } else { "" }
            ));
        }
        sections.insert(
            "scale",
            table(
                "scale: read latency with few vs many messages stored",
                &note,
                &[
                    "point",
                    "channel msgs",
                    "log events",
                    "calls",
                    "get p50 ms",
                    "get p99 ms",
                    "list(ch) p50",
                    "list(ch) p99",
                    "list(all) p50",
                    "list(all) p99",
                ],
                &scale_rows,
            ),
        );
        report.json.insert(
            "scale".into(),
            json!({ "points": scale_json, "ratio_large_to_small": ratios }),
        );
    }

    // Last, as it fills the store: the other scenarios keep the conditions
    // they were designed for.
    if on(Scenario::Sustained) {
        let mut text = String::new();
        if let Err(e) = run_sustained(&world, &plan, &storage, &mut report, &mut text).await {
            report
                .failures
                .push(format!("sustained could not run: {e}"));
        }
        sections.insert("sustained", text);
    }

    if on(Scenario::Abuse) {
        let mut text = String::new();
        match (&server_bin, &args.target) {
            (Some(bin), None) => {
                if let Err(e) = abuse::run(
                    bin,
                    args.database_url.as_deref(),
                    &plan,
                    &mut report,
                    &mut text,
                )
                .await
                {
                    report.failures.push(format!("abuse could not run: {e}"));
                }
            }
            _ => text.push_str(
                "== abuse: skipped (it starts a server of its own, with the default per-party limits; not with --target)\n",
            ),
        }
        sections.insert("abuse", text);
    }

    // Stop the server (and drop its database) before reporting.
    let warnings = spawned.as_ref().map(|s| s.warnings.load(Ordering::Relaxed));
    drop(world);
    if let Some(s) = spawned.as_mut() {
        s.stop();
    }
    // A clean stop leaves the write-ahead log empty (DESIGN.md §5).
    if let (Some(wal), Some(j)) = (storage.wal_path(), report.json.get_mut("sustained")) {
        let after = file_len(&wal);
        j["wal_bytes_after_stop"] = json!(after);
        if let Some(t) = sections.get_mut("sustained") {
            t.push_str(&format!(
                "WAL after the server's clean stop at the end of the run: {}\n",
                after.map_or("could not be read".into(), |b| format!("{b} bytes"))
            ));
        }
    }
    drop(spawned);

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    let timestamp = prost_types::Timestamp::from(SystemTime::now()).to_string();
    let total_secs = run_started.elapsed().as_secs_f64();

    let mut out = String::new();
    out.push_str(&format!(
        "backchannel-bench{}: {backend} backend, {cores} cores, commit {}{}, {timestamp}, {total_secs:.0} s\n",
        if plan.quick { " --quick (smoke test: figures are not meaningful)" } else { "" },
        &commit[..commit.len().min(12)],
        if dirty == Some(true) { " (dirty)" } else { "" },
    ));
    if debug_server {
        out.push_str("the server is a debug build: figures are not meaningful\n");
    }
    for s in [
        "send",
        "lifecycle",
        "fanout",
        "catchup",
        "scale",
        "sustained",
        "abuse",
    ] {
        if let Some(t) = sections.get(s) {
            out.push_str(t);
        }
    }
    out.push('\n');
    let ok = report.failures.is_empty() && report.lost == 0 && report.errors == 0;
    if ok {
        out.push_str("ok: no event lost, no call failed\n");
    } else {
        out.push_str("FAILED:\n");
        for f in &report.failures {
            out.push_str(&format!("  - {f}\n"));
        }
    }
    print!("{out}");

    if let Some(path) = &args.json {
        let scenarios: Vec<&str> = [
            Scenario::Baseline,
            Scenario::Send,
            Scenario::Lifecycle,
            Scenario::Fanout,
            Scenario::Catchup,
            Scenario::Scale,
            Scenario::Sustained,
        ]
        .into_iter()
        .filter(|s| on(*s))
        .map(Scenario::name)
        .collect();
        let doc = json!({
            "tool": "backchannel-bench",
            "timestamp": timestamp,
            "git_commit": commit,
            "git_dirty": dirty,
            "cores": cores,
            "backend": backend,
            "quick": plan.quick,
            "server_binary": server_bin.map(|b| b.display().to_string()),
            "server_debug_build": debug_server,
            "target": args.target,
            "settings": {
                "warmup_s": plan.timing.warmup.as_secs_f64(),
                "measure_s": plan.timing.measure.as_secs_f64(),
                "connections": plan.connections,
                "concurrency_levels": plan.levels,
                "lifecycle_in_flight": plan.lifecycle_in_flight,
                "fanout_points": plan.fanout.iter().map(|(s, r)| json!({"subscribers": s, "events_per_s": r})).collect::<Vec<_>>(),
                "fanout_writers": FANOUT_WRITERS,
                "subscribers_per_connection": SUBSCRIBERS_PER_CONNECTION,
                "catchup_events": plan.catchup_events,
                "scale_small_messages": plan.scale_small,
                "scale_calls": plan.scale_calls,
                "sustained_preload": plan.sustained.preload,
                "sustained_in_flight": plan.sustained.in_flight,
                "sustained_s": plan.sustained.run.as_secs_f64(),
                "sustained_slice_s": plan.sustained.slice.as_secs_f64(),
                "wal_bound_bytes": plan.sustained.wal_bound,
            },
            "scenarios_run": scenarios,
            "scenarios": Value::Object(report.json.clone()),
            "server_warnings": warnings,
            "errors": report.errors,
            "lost": report.lost,
            "failures": report.failures,
            "ok": ok,
            "total_seconds": round1(total_secs),
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
        progress(format!("wrote {}", path.display()));
    }
    Ok(ok)
}

// ---------------------------------------------------------------------------
// Abuse: a well-behaved client while hostile ones attack

mod abuse {
    use super::*;
    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;

    /// How often each task of the well-behaved client calls at most.
    const VICTIM_PERIOD: Duration = Duration::from_millis(4);

    /// The attacks, each measured against the same client with none.
    #[derive(Clone, Copy)]
    enum Attack {
        None,
        StalledReplays,
        StalledLive,
        IdleSockets,
        WindowUpdateFlood,
        RateLimitedParty,
    }

    /// Every attack, in the order measured.
    const ATTACKS: [Attack; 6] = [
        Attack::None,
        Attack::StalledReplays,
        Attack::StalledLive,
        Attack::IdleSockets,
        Attack::WindowUpdateFlood,
        Attack::RateLimitedParty,
    ];

    impl Attack {
        /// How `--attacker` names it.
        fn key(self) -> &'static str {
            match self {
                Attack::None => "none",
                Attack::StalledReplays => "stalled-replays",
                Attack::StalledLive => "stalled-live",
                Attack::IdleSockets => "idle-sockets",
                Attack::WindowUpdateFlood => "window-update-flood",
                Attack::RateLimitedParty => "rate-limited-party",
            }
        }

        fn name(self) -> &'static str {
            match self {
                Attack::None => "none",
                Attack::StalledReplays => "100 stalled replays of 60 KiB events",
                Attack::StalledLive => "a stalled live subscriber, 100 sends/s of 60 KiB",
                Attack::IdleSockets => "1,000 idle sockets",
                Attack::WindowUpdateFlood => "WINDOW_UPDATE flood on 3 connections",
                Attack::RateLimitedParty => "one party at its rate limit (64 in flight)",
            }
        }
    }

    /// Streams the server can never write to: a flow-control window of 0.
    async fn stalled_h2(addr: &str) -> Result<h2::client::SendRequest<Bytes>> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tcp)
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }

    async fn stalled_subscribe(
        send: &h2::client::SendRequest<Bytes>,
        token: &str,
        req: &pb::SubscribeRequest,
    ) -> Result<h2::RecvStream> {
        let r = tonic::codegen::http::Request::builder()
            .method("POST")
            .uri("http://bench/backchannel.v1.MessageService/Subscribe")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {token}"))
            .body(())?;
        let mut send = send.clone().ready().await?;
        let (response, mut body) = send.send_request(r, false)?;
        let msg = prost::Message::encode_to_vec(req);
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(&msg);
        body.send_data(Bytes::from(frame), true)?;
        Ok(response.await?.into_body())
    }

    /// What an attack holds while it runs, on its runtime.
    struct Held {
        tasks: Vec<tokio::task::JoinHandle<()>>,
        _held: Vec<Box<dyn std::any::Any + Send>>,
    }

    impl Drop for Held {
        fn drop(&mut self) {
            for t in &self.tasks {
                t.abort();
            }
        }
    }

    /// An attack running in a process of its own, as another client's
    /// would run on another machine, at the lowest CPU priority
    /// (`SCHED_IDLE`). What the attacker's own client code costs is not the
    /// server's cost of the attack; yet on the bench's machine the server,
    /// the measured client and the attacker share two cores. On the
    /// measured client's runtime, the attack's tasks queued ahead of that
    /// client's and the bench counted its own queue (third session); on a
    /// runtime of its own at normal priority, and at nice 19, its threads
    /// still took the cores from the server and the measured client alike
    /// (fourth and fifth sessions, docs/PERFORMANCE.md). Now it runs on what
    /// the others leave, and its own count of admitted calls shows that it
    /// still spent its burst and its rate. Dropping it kills the process.
    struct Running {
        child: Child,
        stdin: Option<std::process::ChildStdin>,
        /// The attacker's lines, read by a thread of their own.
        lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    }

    impl Running {
        /// The attacker's next line.
        async fn line(&mut self) -> Result<String> {
            tokio::time::timeout(ATTACKER_ANSWERS, self.lines.recv())
                .await
                .map_err(|_| "the attacker did not answer")?
                .ok_or_else(|| "the attacker ended".into())
        }

        /// The attacker's calls so far: admitted, refused
        /// `RESOURCE_EXHAUSTED`, failed otherwise.
        async fn calls(&mut self) -> Result<[u64; 3]> {
            use std::io::Write;
            let stdin = self.stdin.as_mut().ok_or("the attacker is stopped")?;
            stdin.write_all(b"count\n")?;
            stdin.flush()?;
            let line = self.line().await?;
            let n: Vec<u64> = line
                .split_whitespace()
                .map(str::parse)
                .collect::<std::result::Result<_, _>>()?;
            match n[..] {
                [a, r, f] => Ok([a, r, f]),
                _ => Err(format!("the attacker answered {line:?}").into()),
            }
        }

        /// Ends the attack: closes its stdin and waits for its process.
        async fn stop(mut self) {
            drop(self.stdin.take());
            let _ = tokio::time::timeout(ATTACKER_ANSWERS, self.lines.recv()).await;
        }
    }

    impl Drop for Running {
        fn drop(&mut self) {
            drop(self.stdin.take());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// How long the attacker's process may take to start or answer.
    const ATTACKER_ANSWERS: Duration = Duration::from_secs(30);

    /// What the attacker's process is told, by environment.
    const ATTACK_ENV: [&str; 7] = [
        "BENCH_ATTACK_ADDR",
        "BENCH_ATTACK_ADMIN",
        "BENCH_ATTACK_IRAN",
        "BENCH_ATTACK_FRANCE",
        "BENCH_ATTACK_US",
        "BENCH_ATTACK_CONNECTIONS",
        "BENCH_ATTACK_CHANNEL",
    ];

    /// The tokens an attack uses, and where.
    struct Target {
        addr: String,
        admin: String,
        iran: String,
        france: String,
        us: String,
        connections: usize,
    }

    /// Starts `attack` in a process of its own (this executable, with the
    /// hidden `--attacker`); it says `ready` once it holds what it attacks
    /// with.
    async fn start(attack: Attack, w: &World, channel: &str) -> Result<Running> {
        let values = [
            w.addr.clone(),
            w.admin.token.clone(),
            w.iran.token.clone(),
            w.france.token.clone(),
            w.us.token.clone(),
            w.iran.per_conn.len().max(1).to_string(),
            channel.to_owned(),
        ];
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--attacker")
            .arg(attack.key())
            .envs(ATTACK_ENV.iter().zip(values))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child
        // between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let mut running = Running {
            child,
            stdin,
            lines,
        };
        let stdout = stdout.ok_or("the attacker's stdout")?;
        std::thread::Builder::new()
            .name("bench-attacker-out".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })?;
        let first = running
            .line()
            .await
            .map_err(|e| format!("attack {}: {e}", attack.name()))?;
        if first == "ready" {
            Ok(running)
        } else {
            Err(format!("attack {}: {first}", attack.name()).into())
        }
    }

    /// The attacker's process (`--attacker KEY`): holds the attack at the
    /// lowest CPU priority, answers `count` on stdin with its calls, and
    /// ends when stdin closes.
    pub fn attacker_main(key: &str) -> std::process::ExitCode {
        let fail = |e: String| {
            println!("{e}");
            std::process::ExitCode::FAILURE
        };
        let Some(attack) = ATTACKS.into_iter().find(|a| a.key() == key) else {
            return fail(format!("no attack {key:?}"));
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; the runtime's threads, made
        // after, inherit its policy. `param` outlives the call.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
            return fail(format!(
                "cannot run at SCHED_IDLE: {}",
                std::io::Error::last_os_error()
            ));
        }
        let env: Vec<String> = ATTACK_ENV
            .iter()
            .map(|k| std::env::var(k).unwrap_or_default())
            .collect();
        let target = Target {
            addr: env[0].clone(),
            admin: env[1].clone(),
            iran: env[2].clone(),
            france: env[3].clone(),
            us: env[4].clone(),
            connections: env[5].parse().unwrap_or(1),
        };
        let channel = env[6].clone();
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return fail(format!("attack runtime: {e}")),
        };
        let calls: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        let outcome: Result<()> = (|| {
            // The attack's tasks run on the runtime's threads; this one
            // answers on stdin.
            let held = rt.block_on(held(attack, &target, &channel, calls.clone()))?;
            let _in_runtime = rt.enter();
            println!("ready");
            for line in std::io::stdin().lines() {
                if line? == "count" {
                    let [a, r, f] = std::array::from_fn(|k| calls[k].load(Ordering::Relaxed));
                    println!("{a} {r} {f}");
                }
            }
            drop(held);
            Ok(())
        })();
        rt.shutdown_background();
        match outcome {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => fail(e.to_string()),
        }
    }

    /// Starts the attack, on the current runtime, with connections of its
    /// own.
    async fn held(
        attack: Attack,
        t: &Target,
        channel: &str,
        calls: Arc<[AtomicU64; 3]>,
    ) -> Result<Held> {
        let mut run = Held {
            tasks: Vec::new(),
            _held: Vec::new(),
        };
        let addr = t.addr.clone();
        let mut conns = Vec::new();
        if matches!(attack, Attack::StalledLive | Attack::RateLimitedParty) {
            for _ in 0..t.connections {
                conns.push(connect(&addr).await?);
            }
        }
        match attack {
            Attack::None => {}
            Attack::StalledReplays => {
                for _ in 0..4 {
                    let send = stalled_h2(&addr).await?;
                    for _ in 0..25 {
                        let s = stalled_subscribe(
                            &send,
                            &t.admin,
                            &pb::SubscribeRequest {
                                start_after: Some(0),
                                ..Default::default()
                            },
                        )
                        .await?;
                        run._held.push(Box::new(s));
                    }
                    run._held.push(Box::new(send));
                }
            }
            Attack::StalledLive => {
                let send = stalled_h2(&addr).await?;
                let s = stalled_subscribe(&send, &t.us, &pb::SubscribeRequest::default()).await?;
                run._held.push(Box::new(s));
                run._held.push(Box::new(send));
                let iran = Identity::new(&conns, &t.iran)?;
                let channel = channel.to_owned();
                run.tasks.push(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_millis(10));
                    let mut i = 0u64;
                    loop {
                        tick.tick().await;
                        let mut c = iran.on(i as usize).messages;
                        let mut r = send_req(&channel, i);
                        r.body = "b".repeat(60 * 1024);
                        i += 1;
                        tokio::spawn(async move {
                            let _ = c.send_message(r).await;
                        });
                    }
                }));
            }
            Attack::IdleSockets => {
                for _ in 0..1000 {
                    let tcp = tokio::net::TcpStream::connect(&addr).await?;
                    run._held.push(Box::new(tcp));
                }
            }
            Attack::WindowUpdateFlood => {
                for _ in 0..3 {
                    let addr = addr.clone();
                    run.tasks.push(tokio::spawn(async move {
                        // Reconnects whenever the server drops it.
                        loop {
                            let Ok(mut tcp) = tokio::net::TcpStream::connect(&addr).await else {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            };
                            let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
                            hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
                            let update = [0u8, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1];
                            let burst: Vec<u8> =
                                update.iter().copied().cycle().take(13 * 4096).collect();
                            if tcp.write_all(&hello).await.is_err() {
                                continue;
                            }
                            while tcp.write_all(&burst).await.is_ok() {}
                        }
                    }));
                }
            }
            Attack::RateLimitedParty => {
                let france = Identity::new(&conns, &t.france)?;
                for task in 0..64 {
                    let mut c = france.on(task).parties;
                    let calls = calls.clone();
                    run.tasks.push(tokio::spawn(async move {
                        loop {
                            let k = match c.who_am_i(pb::WhoAmIRequest {}).await {
                                Ok(_) => 0,
                                Err(s) if s.code() == tonic::Code::ResourceExhausted => 1,
                                Err(_) => 2,
                            };
                            calls[k].fetch_add(1, Ordering::Relaxed);
                        }
                    }));
                }
            }
        }
        Ok(run)
    }

    pub async fn run(
        bin: &Path,
        database_url: Option<&str>,
        plan: &Plan,
        report: &mut Report,
        text: &mut String,
    ) -> Result<()> {
        let token = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let (server, addr) = Spawned::start_with(bin, &token, database_url, true)?;
        raise_fd_limit();
        let w = World::setup(&addr, &token, plan.connections, Some(server.pid)).await?;
        let channel = w.channel("bench abuse").await?;
        // 300 events of 60 KiB, for the replays to read.
        let body = "b".repeat(60 * 1024);
        for i in 0..300 {
            let mut r = send_req(&channel, i);
            r.body = body.clone();
            w.iran.on(i as usize).messages.send_message(r).await?;
        }
        // The well-behaved client: GetChannel as united-states, 16 in
        // flight, each task at most one call per 4 ms (4,000/s in all, under
        // its rate limit). Its latency is the call's own time.
        let us = w.us.clone();
        let ch = channel.clone();
        let op: Op = Arc::new(move |task, _| {
            let mut c = us.on(task).channels;
            let ch = ch.clone();
            Box::pin(async move {
                let a = Instant::now();
                c.get_channel(pb::GetChannelRequest { channel_id: ch })
                    .await?;
                let took = elapsed_ns(a);
                tokio::time::sleep(VICTIM_PERIOD.saturating_sub(a.elapsed())).await;
                Ok([took, 0, 0, 0])
            })
        });
        let mut rows = Vec::new();
        let mut points = Vec::new();
        let mut calm_p99 = None;
        let mut attacker_line = String::new();
        let rss0 = rss_kib(Some(server.pid));
        for attack in ATTACKS {
            let mut running = start(attack, &w, &channel).await?;
            let pid = server.pid;
            let sampler = tokio::spawn(async move {
                let mut peak = 0;
                loop {
                    peak = peak.max(rss_kib(Some(pid)).unwrap_or(0));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if peak == u64::MAX {
                        return peak;
                    }
                }
            });
            let counted_from = running.calls().await?;
            let l = closed_loop(16, plan.timing, Some(pid), op.clone()).await;
            let counted_to = running.calls().await?;
            let attacker: [f64; 3] = std::array::from_fn(|k| {
                counted_to[k].saturating_sub(counted_from[k]) as f64
                    / (plan.timing.warmup + plan.timing.measure).as_secs_f64()
            });
            let peak = rss_kib(Some(pid)).unwrap_or(0);
            sampler.abort();
            let peak = peak.max(sampler.await.unwrap_or(0));
            running.stop().await;
            report.error(&format!("abuse ({})", attack.name()), &l);
            let p99 = l.steps[0].ms(0.99);
            if matches!(attack, Attack::None) {
                calm_p99 = p99;
            }
            let ratio = match (p99, calm_p99) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            progress(format!(
                "abuse ({}): {} calls/s, p99 {} ms ({}x), RSS peak {} MiB",
                attack.name(),
                fmt_rate(l.rate()),
                fmt_ms(p99),
                ratio.map_or("-".into(), |r| format!("{r:.2}")),
                peak / 1024
            ));
            if matches!(attack, Attack::RateLimitedParty) {
                let [admitted, refused, failed] = attacker;
                attacker_line = format!(
                    "the party at its rate limit: {} calls/s admitted, {} refused RESOURCE_EXHAUSTED, {} failed otherwise",
                    fmt_rate(admitted),
                    fmt_rate(refused),
                    fmt_rate(failed)
                );
                if refused == 0.0 {
                    // A short point (--quick) ends before the burst of a
                    // full bucket is spent.
                    attacker_line
                        .push_str(" (no refusal: its burst was not spent within the point)");
                }
                progress(format!("abuse: {attacker_line}"));
                if failed > 0.0 {
                    report.errors += 1;
                    report.failures.push(format!(
                        "abuse: the attack did not run as meant: {attacker_line}"
                    ));
                }
            }
            rows.push(vec![
                attack.name().to_string(),
                fmt_rate(l.rate()),
                fmt_ms(l.steps[0].ms(0.5)),
                fmt_ms(p99),
                ratio.map_or("-".into(), |r| format!("{r:.2}")),
                format!("{}", peak / 1024),
                l.errors.to_string(),
            ]);
            points.push(json!({
                "attack": attack.name(),
                "calls_per_s": round1(l.rate()),
                "latency": l.steps[0].json(),
                "p99_vs_none": ratio.map(|r| (r * 100.0).round() / 100.0),
                "rss_peak_kib": peak,
                "errors": l.errors,
                "attacker_calls_per_s": matches!(attack, Attack::RateLimitedParty).then(|| json!({
                    "admitted": round1(attacker[0]),
                    "refused": round1(attacker[1]),
                    "failed": round1(attacker[2]),
                })),
            }));
        }
        text.push_str(&table(
            "abuse: a well-behaved client (GetChannel, 16 tasks, each at most one call per 4 ms) while each attack runs",
            &format!(
                "a server of its own with the default per-party limits; each attack in a process of its own at SCHED_IDLE (as on another machine); RSS {} MiB before the first point",
                rss0.map_or("-".into(), |r| (r / 1024).to_string())
            ),
            &["attack", "calls/s", "p50 ms", "p99 ms", "p99 x none", "RSS peak MiB", "errors"],
            &rows,
        ));
        if !attacker_line.is_empty() {
            text.push_str(&format!("{attacker_line}\n"));
        }
        report
            .json
            .insert("abuse".into(), json!({ "points": points }));
        drop(w);
        drop(server);
        Ok(())
    }

    /// The bench holds a thousand idle sockets itself.
    fn raise_fd_limit() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
}
