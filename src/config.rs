//! Settings: every one a flag and an environment variable (DESIGN §5).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::ValueEnum;

use crate::domain::validate::{self, Limits};

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default data directory of the embedded store.
pub const DEFAULT_DATA_DIR: &str = "./backchannel-data";
/// How often the server looks for messages past their `respond_by`.
pub const DEFAULT_EXPIRY_INTERVAL_MS: u64 = 500;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Whether the board (DESIGN §9) is served on the gRPC port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Web {
    /// `/`, its files and the JSON view under `/api/`.
    On,
    /// None of them (gRPC and gRPC-Web still served).
    Off,
}

/// Default most subscriptions one server holds.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 10_000;
/// Default most concurrent HTTP/2 streams per connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Default per-request timeout in seconds (streams excepted).
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;

/// Default seconds a connection gets to complete TLS and the HTTP/2 preface.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
/// Default seconds a connection may stay open with no stream.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;

/// The server's settings, from flags and the environment: those of
/// `backchannel serve`, and of `backchannel` with no subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to serve gRPC on (port 0 picks a free port; the log says which).
    #[arg(long, env = "BACKCHANNEL_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Directory of the embedded store and the generated admin token and signing key.
    #[arg(long, env = "BACKCHANNEL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// PostgreSQL URL; when set, the record lives there instead of the data directory.
    #[arg(long, env = "BACKCHANNEL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Log format; the level comes from RUST_LOG (default `info`).
    #[arg(
        long,
        env = "BACKCHANNEL_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,

    /// The admin token. Unset: generated once into `<data-dir>/admin.token`.
    #[arg(long, env = "BACKCHANNEL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// The file holding the key that signs the log's checkpoints, in Go's
    /// sumdb/note form (`PRIVATE+KEY+<name>+<id>+<key>`). Unset: generated
    /// once into `<data-dir>/signing.key`. Replicas sharing a database must
    /// share one key.
    #[arg(long, env = "BACKCHANNEL_SIGNING_KEY_FILE")]
    pub signing_key: Option<PathBuf>,

    /// The log's name in its checkpoints (and its key's name). Unset:
    /// `backchannel/<log id>`, the log id being a UUID made with the store.
    #[arg(long, env = "BACKCHANNEL_LOG_ORIGIN")]
    pub log_origin: Option<String>,

    /// Address to serve Prometheus metrics on (`GET /metrics`); off when unset.
    #[arg(long, env = "BACKCHANNEL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// PEM certificate chain to serve gRPC over TLS; give --tls-key too.
    #[arg(long, env = "BACKCHANNEL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "BACKCHANNEL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: require clients to present a certificate they sign (mTLS).
    #[arg(long, env = "BACKCHANNEL_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// The board (a web page on the gRPC port, `http://ADDR/`) and its JSON
    /// view (`/api/...`); `off` leaves gRPC and gRPC-Web alone.
    #[arg(long, env = "BACKCHANNEL_WEB", value_enum, default_value = "on")]
    pub web: Web,

    /// An origin (`https://app.example.com`) whose browser apps may call
    /// gRPC-Web and the JSON view (CORS); repeatable, or comma-separated in
    /// the environment. None by default: the board is same-origin.
    #[arg(
        long = "cors-allow-origin",
        env = "BACKCHANNEL_CORS_ALLOW_ORIGIN",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub cors_allow_origins: Vec<String>,

    /// Seconds a unary call may take before it fails with DEADLINE_EXCEEDED.
    #[arg(long, env = "BACKCHANNEL_REQUEST_TIMEOUT_SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS)]
    pub request_timeout_secs: u64,

    /// Seconds a new connection gets to complete TLS (when on) and send the
    /// HTTP/2 preface or its first HTTP/1.1 request head; closed after.
    #[arg(long, env = "BACKCHANNEL_HANDSHAKE_TIMEOUT_SECS", default_value_t = DEFAULT_HANDSHAKE_TIMEOUT_SECS)]
    pub handshake_timeout_secs: u64,

    /// Seconds a connection may stay open with no stream (HTTP/1.1: with
    /// no request in flight); then GOAWAY (HTTP/1.1: closed).
    #[arg(long, env = "BACKCHANNEL_IDLE_TIMEOUT_SECS", default_value_t = DEFAULT_IDLE_TIMEOUT_SECS)]
    pub idle_timeout_secs: u64,

    /// Most client connections open at once [default: the file-descriptor
    /// limit, raised to its hard limit at start, less a reserve of 128; never
    /// above that].
    #[arg(long, env = "BACKCHANNEL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Most open subscriptions; beyond it Subscribe is RESOURCE_EXHAUSTED.
    #[arg(long, env = "BACKCHANNEL_MAX_SUBSCRIPTIONS", default_value_t = DEFAULT_MAX_SUBSCRIPTIONS)]
    pub max_subscriptions: usize,

    /// Bytes of recent events kept in memory for live subscribers (beside
    /// at most 8,192 events); a subscriber further behind reads the log.
    #[arg(long, env = "BACKCHANNEL_WINDOW_BYTES", default_value_t = crate::feed::DEFAULT_WINDOW_BYTES)]
    pub window_bytes: usize,

    /// Most open subscriptions of one party (and of the admin).
    #[arg(long, env = "BACKCHANNEL_MAX_SUBSCRIPTIONS_PER_PARTY", default_value_t = crate::quota::DEFAULT_SUBSCRIPTIONS_PER_PARTY)]
    pub max_subscriptions_per_party: usize,

    /// Requests per second per party (the admin has a bucket of its own),
    /// with a burst of twice that; over it calls are RESOURCE_EXHAUSTED
    /// RATE_LIMITED with RetryInfo. 0 turns the limit off.
    #[arg(long, env = "BACKCHANNEL_RATE_LIMIT", default_value_t = crate::quota::DEFAULT_RATE_LIMIT)]
    pub rate_limit: u32,

    /// Most open health Watch streams (they need no token).
    #[arg(long, env = "BACKCHANNEL_MAX_HEALTH_WATCHES", default_value_t = crate::quota::DEFAULT_HEALTH_WATCHES)]
    pub max_health_watches: usize,

    /// Most concurrent calls and streams on one HTTP/2 connection.
    #[arg(long, env = "BACKCHANNEL_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,

    /// Milliseconds between checks for messages past their deadline.
    #[arg(long, env = "BACKCHANNEL_EXPIRY_INTERVAL_MS", default_value_t = DEFAULT_EXPIRY_INTERVAL_MS)]
    pub expiry_interval_ms: u64,

    /// Most characters in a subject.
    #[arg(long, env = "BACKCHANNEL_MAX_SUBJECT_CHARS", default_value_t = validate::DEFAULT_SUBJECT_CHARS)]
    pub max_subject_chars: usize,

    /// Most bytes in a message body.
    #[arg(long, env = "BACKCHANNEL_MAX_BODY_BYTES", default_value_t = validate::DEFAULT_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Most bytes in a note.
    #[arg(long, env = "BACKCHANNEL_MAX_NOTE_BYTES", default_value_t = validate::DEFAULT_NOTE_BYTES)]
    pub max_note_bytes: usize,

    /// Most labels on a message.
    #[arg(long, env = "BACKCHANNEL_MAX_LABELS", default_value_t = validate::DEFAULT_LABELS)]
    pub max_labels: usize,

    /// Largest page size (larger requests are clamped).
    #[arg(long, env = "BACKCHANNEL_MAX_PAGE_SIZE", default_value_t = validate::DEFAULT_MAX_PAGE_SIZE)]
    pub max_page_size: usize,

    /// How many of the newest events the start-up integrity check verifies
    /// (their leaf hashes), besides a sample of 10,000 spread over the rest
    /// of the log. Embedded store only.
    #[arg(long, env = "BACKCHANNEL_STARTUP_CHECK_EVENTS", default_value_t = crate::store::sqlite::DEFAULT_STARTUP_CHECK_EVENTS)]
    pub startup_check_events: u64,

    /// Recent idempotency records the embedded store holds in memory (and
    /// appends to a table of their own) before it moves them, in key order,
    /// into a run of their own; also the size of the smallest runs it
    /// merges. At most about twice this many are held, some 160 bytes of
    /// memory each.
    #[arg(long, env = "BACKCHANNEL_REQUESTS_MOVE_AT", default_value_t = crate::store::recent::DEFAULT_MOVE_AT, hide = true)]
    pub requests_move_at: usize,

    /// Largest decoded request in bytes.
    #[arg(long, env = "BACKCHANNEL_MAX_REQUEST_BYTES", default_value_t = validate::DEFAULT_REQUEST_BYTES)]
    pub max_request_bytes: usize,
}

impl Config {
    /// The request limits these settings give.
    pub fn limits(&self) -> Limits {
        Limits {
            subject_chars: self.max_subject_chars,
            body_bytes: self.max_body_bytes,
            note_bytes: self.max_note_bytes,
            labels: self.max_labels,
            max_page_size: self.max_page_size.max(1),
            default_page_size: validate::DEFAULT_PAGE_SIZE.min(self.max_page_size.max(1)),
            request_bytes: self.max_request_bytes,
            ..Limits::default()
        }
    }
}
