//! What the bench is asked to do: its command line, the scenarios, and
//! the plan of a run derived from them.

use crate::*;

/// The scenarios, in the order a full run performs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
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
    /// The verifiable record (DESIGN §7): `AuditService`'s checkpoints and
    /// inclusion and consistency proofs on a store of a million events, and
    /// the `backchannel audit` subcommand over 100,000.
    Audit,
    /// Relay statistics (DESIGN §9): `GetRelayStats` on a store of a
    /// million messages.
    Stats,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Baseline => "baseline",
            Scenario::Send => "send",
            Scenario::Lifecycle => "lifecycle",
            Scenario::Fanout => "fanout",
            Scenario::Catchup => "catchup",
            Scenario::Scale => "scale",
            Scenario::Sustained => "sustained",
            Scenario::Abuse => "abuse",
            Scenario::Audit => "audit",
            Scenario::Stats => "stats",
        }
    }
}

/// Benchmark of a real Backchannel server (see docs/PERFORMANCE.md).
#[derive(Debug, Parser)]
#[command(name = "backchannel-bench")]
pub(crate) struct Args {
    /// Run every scenario briefly (a smoke test: figures are not meaningful).
    #[arg(long)]
    pub(crate) quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Run the started server on PostgreSQL: a fresh database
    /// `bc_bench_<uuid>` is created on this server and dropped afterwards.
    #[arg(long, value_name = "URL", conflicts_with = "target")]
    pub(crate) database_url: Option<String>,
    /// Drive a running server at ADDR (host:port) instead of starting one.
    #[arg(long, value_name = "ADDR", requires = "admin_token")]
    pub(crate) target: Option<String>,
    /// The admin token of the `--target` server.
    #[arg(long, value_name = "TOKEN")]
    pub(crate) admin_token: Option<String>,
    /// Only these scenarios (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub(crate) only: Vec<Scenario>,
    /// Run as the attacker process of the `abuse` scenario (internal).
    #[arg(long, hide = true, value_name = "ATTACK")]
    pub(crate) attacker: Option<String>,
    /// The `backchannel` binary to start (default: next to this executable).
    #[arg(long, value_name = "PATH")]
    pub(crate) server_bin: Option<PathBuf>,
    /// Messages written for `catchup` and the large `scale` point (default
    /// 1,000,000, and at most 90 s of writing; 20,000 with --quick). Given
    /// explicitly, all N are written however long it takes.
    #[arg(long, value_name = "N")]
    pub(crate) catchup_events: Option<u64>,
    /// The `fanout` points, as SUBSCRIBERSxEVENTS_PER_S (comma-separated),
    /// instead of the default ones.
    #[arg(long, value_name = "SxR", value_delimiter = ',', value_parser = parse_point)]
    pub(crate) fanout: Vec<(usize, u64)>,
    /// HTTP/2 connections shared round-robin by the request tasks.
    #[arg(long, default_value_t = 4)]
    pub(crate) connections: usize,
    /// Seconds measured per point (default 2.5; 0.5 with --quick).
    #[arg(long, value_name = "S")]
    pub(crate) measure_secs: Option<f64>,
    /// Seconds of warm-up before each point (default 0.75; 0.2 with --quick).
    #[arg(long, value_name = "S")]
    pub(crate) warmup_secs: Option<f64>,
    /// Messages the store must hold when `sustained` starts sending: those
    /// earlier scenarios of this run stored count, the rest are written
    /// first, as fast as the server takes them, each with a `request_id`
    /// unless --sustained-without-request-id (default 1,000,000; 2,000
    /// with --quick).
    #[arg(long, value_name = "N")]
    pub(crate) sustained_preload: Option<u64>,
    /// Seconds `sustained` sends for, after its warm-up (default 60; 3 with
    /// --quick).
    #[arg(long, value_name = "S", value_parser = parse_secs)]
    pub(crate) sustained_secs: Option<f64>,
    /// Length of the slices `sustained` reports one by one (default 10; 1
    /// with --quick).
    #[arg(long, value_name = "S", value_parser = parse_secs)]
    pub(crate) sustained_slice_secs: Option<f64>,
    /// `SendMessage` calls in flight in `sustained`, and `Health/Check`
    /// calls in its baseline.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub(crate) sustained_in_flight: usize,
    /// `sustained` sends without a `request_id` (to measure what the
    /// idempotency records cost on a full store).
    #[arg(long)]
    pub(crate) sustained_without_request_id: bool,
    /// The bound the server under test claims for its write-ahead log, in
    /// MiB (DESIGN.md §5: 64 by default); `sustained` reports the log's peak
    /// beside it.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub(crate) wal_bound_mib: u64,
    /// Events the log must hold when `audit` measures its proofs: those
    /// earlier scenarios of this run recorded count, the rest are written
    /// first (default 1,000,000; 5,000 with --quick).
    #[arg(long, value_name = "N")]
    pub(crate) audit_events: Option<u64>,
    /// Events the log holds when `audit` times the `backchannel audit`
    /// subcommand: written on this run's store before the rest, or on a
    /// fresh server of its own if the store already holds more (default
    /// 100,000; 1,000 with --quick).
    #[arg(long, value_name = "N")]
    pub(crate) audit_cli_events: Option<u64>,
    /// Messages the store must hold when `stats` asks its questions (what
    /// earlier scenarios wrote counts; default 1,000,000; 5,000 with
    /// --quick).
    #[arg(long, value_name = "N")]
    pub(crate) stats_messages: Option<u64>,
}

/// A positive, finite number of seconds (at most a few years, so that it
/// fits a `Duration`).
pub(crate) fn parse_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e8 => Ok(v),
        _ => Err(format!("'{s}' is not a positive number of seconds")),
    }
}

pub(crate) fn parse_point(s: &str) -> Result<(usize, u64), String> {
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
pub(crate) struct Timing {
    pub(crate) warmup: Duration,
    pub(crate) measure: Duration,
}

/// How `sustained` runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SustainedPlan {
    /// Messages the store holds at least when the sends start.
    pub(crate) preload: u64,
    /// Calls in flight, in the sends and in their baseline.
    pub(crate) in_flight: usize,
    /// How long the sends are measured (after [`Plan::timing`]'s warm-up).
    pub(crate) run: Duration,
    /// Throughput and latency are reported per slice of this length.
    pub(crate) slice: Duration,
    /// The bound the server claims for its write-ahead log, in bytes.
    pub(crate) wal_bound: u64,
    /// Whether each send carries a fresh `request_id`.
    pub(crate) request_id: bool,
}

/// How `audit` runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuditPlan {
    /// Events the log holds at least when the proofs are measured.
    pub(crate) events: u64,
    /// Events the log holds when `backchannel audit` is timed.
    pub(crate) cli_events: u64,
    /// Calls in flight at each point of the proofs.
    pub(crate) levels: [usize; 2],
    /// How long one `backchannel audit` may take before it is killed.
    pub(crate) cli_timeout: Duration,
}

/// Everything a run is configured with.
pub(crate) struct Plan {
    pub(crate) quick: bool,
    pub(crate) timing: Timing,
    pub(crate) connections: usize,
    pub(crate) levels: Vec<usize>,
    pub(crate) lifecycle_in_flight: usize,
    pub(crate) fanout: Vec<(usize, u64)>,
    pub(crate) catchup_events: u64,
    /// When the number of messages is the default, writing stops after this
    /// long even if it has not reached it (and says so).
    pub(crate) catchup_cap: Option<Duration>,
    pub(crate) scale_small: u64,
    pub(crate) scale_calls: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) sustained: SustainedPlan,
    pub(crate) audit: AuditPlan,
    pub(crate) stats: crate::stats::StatsPlan,
}

impl Plan {
    pub(crate) fn new(a: &Args) -> Plan {
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
            audit: AuditPlan {
                events: a
                    .audit_events
                    .unwrap_or(if quick { 5_000 } else { DEFAULT_AUDIT_EVENTS }),
                cli_events: a.audit_cli_events.unwrap_or(if quick {
                    1_000
                } else {
                    DEFAULT_AUDIT_CLI_EVENTS
                }),
                levels: [1, 16],
                cli_timeout: Duration::from_secs(if quick { 120 } else { 1200 }),
            },
            stats: crate::stats::StatsPlan {
                messages: a.stats_messages.unwrap_or(if quick {
                    5_000
                } else {
                    FULL_CATCHUP_EVENTS
                }),
                relayed: if quick { 200 } else { 20_000 },
                calls: if quick { 10 } else { 100 },
            },
        }
    }
}

/// Messages written for `catchup` and the large `scale` point by default:
/// the 1,000,000 (about 40 s of writing on the embedded store here).
/// Writing stops after 90 s, so a slow store keeps the run under three
/// minutes; the output then says how many were written.
pub(crate) const DEFAULT_CATCHUP_EVENTS: u64 = FULL_CATCHUP_EVENTS;
/// The size the issue's `catchup` and `scale` targets speak of.
pub(crate) const FULL_CATCHUP_EVENTS: u64 = 1_000_000;
/// Messages the store holds when `sustained` starts, by default: the
/// issue's "a store that already holds a million messages".
pub(crate) const DEFAULT_SUSTAINED_PRELOAD: u64 = 1_000_000;
/// Events the log holds when `audit` measures its proofs, by default: the
/// "a proof at a million events" of DESIGN §7.
pub(crate) const DEFAULT_AUDIT_EVENTS: u64 = 1_000_000;
/// Events the log holds when `audit` times `backchannel audit`, by default.
pub(crate) const DEFAULT_AUDIT_CLI_EVENTS: u64 = 100_000;
/// Requests in flight while writing the catch-up data set (and the
/// `sustained` preload).
pub(crate) const BULK_CONCURRENCY: usize = 256;
/// How often the catch-up writes say how far they got.
pub(crate) const BULK_PROGRESS: Duration = Duration::from_secs(3);
/// How often the `sustained` preload says how far it got.
pub(crate) const PRELOAD_PROGRESS: Duration = Duration::from_secs(10);
/// One mebibyte.
pub(crate) const MIB: u64 = 1024 * 1024;
/// How often `sustained` looks at the size of the write-ahead log.
pub(crate) const WAL_POLL: Duration = Duration::from_millis(100);
/// Subscribers per HTTP/2 connection in `fanout`.
pub(crate) const SUBSCRIBERS_PER_CONNECTION: usize = 100;
/// Writer tasks that share a `fanout` rate.
pub(crate) const FANOUT_WRITERS: usize = 16;
/// Most sends in flight at once in `fanout`.
pub(crate) const FANOUT_MAX_IN_FLIGHT: usize = 256;
/// A body of typical size for every message the bench sends.
pub(crate) const BODY: &str = "Ready to talk if oil sales resume; the details follow through the usual channel. \
                    Please acknowledge receipt at your convenience.";

pub(crate) fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}
