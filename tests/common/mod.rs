//! Shared test setup: start the real `backchannel` binary on a random port
//! with a temporary data directory, and talk to it with the generated clients.
#![allow(dead_code, unused_macros, unused_imports)]

pub mod board;
pub mod http1;
pub mod raw;
pub mod story;
pub mod stream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backchannel::pb;
use backchannel::pb::audit_service_client::AuditServiceClient;
use backchannel::pb::channel_service_client::ChannelServiceClient;
use backchannel::pb::message_service_client::MessageServiceClient;
use backchannel::pb::party_service_client::PartyServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// The admin token every test server starts with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// How long a test waits for something before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A running `backchannel` process.
pub struct Server {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    _tmp: Option<Arc<tempfile::TempDir>>,
    db: Option<Arc<TestDb>>,
    /// Every log line it printed, for diagnosis.
    pub log: Arc<Mutex<Vec<String>>>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    fd_limit: Option<u64>,
}

/// Options for starting a server.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Start without BACKCHANNEL_ADMIN_TOKEN (the server generates one).
    pub no_admin_env: bool,
    /// Both the soft and the hard RLIMIT_NOFILE of the server process (so
    /// it cannot raise it).
    pub fd_limit: Option<u64>,
}

impl Options {
    /// These options, and a Prometheus endpoint on a free port (see
    /// [`Server::metrics_addr`]).
    pub fn with_metrics(mut self) -> Options {
        self.args
            .extend(["--metrics-listen".to_string(), "127.0.0.1:0".to_string()]);
        self
    }
}

impl Server {
    /// Starts a server with a fresh temporary data directory.
    pub async fn start() -> Server {
        Server::start_with(Options::default()).await
    }

    /// Starts a server with options and a fresh temporary data directory.
    pub async fn start_with(opts: Options) -> Server {
        Server::start_replicas_with(1, opts, false).await.remove(0)
    }

    /// Starts `n` servers on one record. On the PostgreSQL backend they are
    /// replicas of one fresh database; on the embedded backend `n` must be 1.
    pub async fn start_replicas(n: usize) -> Vec<Server> {
        Server::start_replicas_with(n, Options::default(), false).await
    }

    /// Starts `n` replicas on one fresh PostgreSQL database, whatever the
    /// suite's backend.
    pub async fn start_postgres_replicas(n: usize) -> Vec<Server> {
        Server::start_replicas_with(n, Options::default(), true).await
    }

    /// Starts `n` replicas with options on one fresh PostgreSQL database,
    /// whatever the suite's backend.
    pub async fn start_postgres_replicas_with(n: usize, opts: Options) -> Vec<Server> {
        Server::start_replicas_with(n, opts, true).await
    }

    /// Starts one server with options on a fresh PostgreSQL database,
    /// whatever the suite's backend.
    pub async fn start_postgres_with(opts: Options) -> Server {
        Server::start_replicas_with(1, opts, true).await.remove(0)
    }

    async fn start_replicas_with(n: usize, mut opts: Options, postgres: bool) -> Vec<Server> {
        let db = (postgres || backend_is_postgres()).then(|| Arc::new(TestDb::create()));
        assert!(
            n == 1 || db.is_some(),
            "replicas need the PostgreSQL backend"
        );
        if let Some(db) = &db {
            opts.args.push("--database-url".into());
            opts.args.push(db.url.clone());
        }
        let mut servers = Vec::new();
        for _ in 0..n {
            let tmp = Arc::new(tempfile::tempdir().expect("temp dir"));
            let data_dir = tmp.path().join("data");
            let mut s = Server::spawn(data_dir, Some(tmp), opts.clone()).await;
            s.db = db.clone();
            servers.push(s);
        }
        servers
    }

    /// Starts a server on an existing data directory (a restored backup,
    /// say) that the caller keeps; always the embedded backend.
    pub async fn start_in(data_dir: PathBuf, opts: Options) -> Server {
        Server::spawn(data_dir, None, opts).await
    }

    async fn spawn(
        data_dir: PathBuf,
        tmp: Option<Arc<tempfile::TempDir>>,
        opts: Options,
    ) -> Server {
        Server::spawn_at(data_dir, tmp, opts, "127.0.0.1:0").await
    }

    async fn spawn_at(
        data_dir: PathBuf,
        tmp: Option<Arc<tempfile::TempDir>>,
        opts: Options,
        listen: &str,
    ) -> Server {
        Server::try_spawn_at(data_dir, tmp, opts, listen)
            .await
            .unwrap_or_else(|log| panic!("server exited: {log:?}"))
    }

    /// Starts a server, or gives every line it logged if it exits instead
    /// (it refuses a damaged store, say).
    async fn try_spawn_at(
        data_dir: PathBuf,
        tmp: Option<Arc<tempfile::TempDir>>,
        opts: Options,
        listen: &str,
    ) -> Result<Server, Vec<String>> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_backchannel"));
        cmd.arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--log-format")
            .arg("json")
            .args(&opts.args)
            .env_remove("BACKCHANNEL_ADMIN_TOKEN")
            // Most tests are one party calling as fast as they can: no
            // per-party rate or subscription limit unless a test sets one
            // (a flag overrides these).
            .env("BACKCHANNEL_RATE_LIMIT", "0")
            .env("BACKCHANNEL_MAX_SUBSCRIPTIONS_PER_PARTY", "1000000")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if !opts.no_admin_env {
            cmd.env("BACKCHANNEL_ADMIN_TOKEN", ADMIN_TOKEN);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if let Some(n) = opts.fd_limit {
            // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd.spawn().expect("start backchannel");
        let stdout = child.stdout.take().expect("stdout");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let log2 = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut addr_tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "serving"
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_string());
                }
                log2.lock().unwrap().push(line);
            }
        });
        let addr = tokio::time::timeout(DEADLINE, addr_rx)
            .await
            .unwrap_or_else(|_| panic!("server did not start: {:?}", log.lock().unwrap()));
        let Ok(addr) = addr else {
            // The reader dropped the sender at the end of the output, after
            // its last line.
            let _ = child.wait().await;
            return Err(log.lock().unwrap().clone());
        };
        Ok(Server {
            child: Some(child),
            addr: addr.parse().expect("addr"),
            data_dir,
            _tmp: tmp,
            db: None,
            log,
            extra_args: opts.args.clone(),
            env: opts.env.clone(),
            fd_limit: opts.fd_limit,
        })
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    /// Where the server serves its metrics (started with
    /// [`Options::with_metrics`]).
    pub fn metrics_addr(&self) -> String {
        self.log_value("serving metrics", "addr")
            .expect("metrics address in the log")
    }

    pub async fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        if let Some(pid) = child.id() {
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        let status = tokio::time::timeout(DEADLINE, child.wait())
            .await
            .expect("server did not stop within the deadline")
            .expect("wait");
        status.code()
    }

    /// Sends SIGKILL — a crash: no shutdown, nothing flushed or closed — and
    /// waits for the process to die. [`Server::restart`] then starts a new
    /// server on the same store.
    pub async fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        let status = tokio::time::timeout(DEADLINE, child.wait())
            .await
            .expect("server did not die within the deadline")
            .expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "killed: {status}");
    }

    /// Stops this server (unless [`Server::stop`] or [`Server::kill`]
    /// already did) and starts a new one on the same data directory.
    pub async fn restart(self) -> Server {
        self.restart_at("127.0.0.1:0").await
    }

    /// Like [`Server::restart`], on the same address, so that a client
    /// that knows only the address (the command line) finds it again.
    pub async fn restart_on_same_address(self) -> Server {
        let addr = self.addr.to_string();
        self.restart_at(&addr).await
    }

    /// Like [`Server::restart`], for a server that may refuse to start:
    /// if it does, this (stopped) server and every line the new one logged.
    pub async fn try_restart(mut self) -> Result<Server, (Server, Vec<String>)> {
        let opts = self.stopped().await;
        match Server::try_spawn_at(
            self.data_dir.clone(),
            self._tmp.clone(),
            opts,
            "127.0.0.1:0",
        )
        .await
        {
            Ok(mut s) => {
                s.db = self.db.clone();
                Ok(s)
            }
            Err(log) => Err((self, log)),
        }
    }

    /// Stops this server (unless it stopped already); the options it was
    /// started with, to start it again.
    async fn stopped(&mut self) -> Options {
        if self.child.is_some() {
            let code = self.stop().await;
            assert_eq!(code, Some(0), "server should exit 0 on SIGTERM");
        }
        Options {
            args: self.extra_args.clone(),
            env: self.env.clone(),
            no_admin_env: false,
            fd_limit: self.fd_limit,
        }
    }

    async fn restart_at(mut self, listen: &str) -> Server {
        let opts = self.stopped().await;
        let mut s = Server::spawn_at(self.data_dir.clone(), self._tmp.clone(), opts, listen).await;
        s.db = self.db.clone();
        s
    }

    /// The test database, on the PostgreSQL backend.
    pub fn database(&self) -> Option<&TestDb> {
        self.db.as_deref()
    }

    /// A gRPC channel to the server.
    pub async fn connect(&self) -> Channel {
        backchannel_testkit::connect(&self.addr.to_string())
            .await
            .expect("connect")
    }

    /// Clients calling as the admin.
    pub async fn admin(&self) -> Clients {
        self.clients(ADMIN_TOKEN).await
    }

    /// Clients calling with `token`.
    pub async fn clients(&self, token: &str) -> Clients {
        Clients::new(self.connect().await, Some(token))
    }

    /// Clients sending no token.
    pub async fn anonymous(&self) -> Clients {
        Clients::new(self.connect().await, None)
    }

    /// The value of `field` in the first log line whose message is `message`.
    pub fn log_value(&self, message: &str, field: &str) -> Option<String> {
        self.log.lock().unwrap().iter().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["message"] == message).then(|| v[field].as_str().map(str::to_owned))?
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// The server's resident memory in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().expect("server running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// The data directory's path.
    pub fn data_path(&self) -> &Path {
        &self.data_dir
    }
}

pub use backchannel_testkit::{Bearer, admin_database_url, backend_is_postgres};

/// Whether the PostgreSQL server of `DATABASE_URL` answers, for the tests
/// that always run on it (replicas share one database). Without it a plain
/// `cargo test` skips them, saying how to get one; `./scripts/test.sh`
/// starts a local cluster and requires it.
pub fn postgres_available() -> bool {
    let reachable =
        backchannel_testkit::on_server(&admin_database_url(), |c| c.batch_execute("SELECT 1"))
            .is_ok();
    backchannel_testkit::tool_available(
        "PostgreSQL",
        reachable,
        &format!(
            "no server answers at {} (./scripts/test.sh starts a local cluster; or set \
             DATABASE_URL)",
            admin_database_url()
        ),
    )
}

/// A fresh database for one test, dropped when the test ends.
pub struct TestDb {
    /// The database's name.
    pub name: String,
    /// Its URL.
    pub url: String,
    _db: backchannel_testkit::TempDb,
}

/// Runs blocking PostgreSQL work on a thread outside the async runtime.
pub fn with_admin_db<T: Send + 'static>(
    f: impl FnOnce(&mut postgres::Client) -> T + Send + 'static,
) -> T {
    backchannel_testkit::on_server(&admin_database_url(), move |c| Ok(f(c)))
        .expect("connect to PostgreSQL (is it running? see ./scripts/test.sh)")
}

impl TestDb {
    /// Creates a database with a unique name.
    pub fn create() -> TestDb {
        let db = backchannel_testkit::TempDb::create(&admin_database_url(), "bc_test")
            .expect("create test database (is PostgreSQL running? see ./scripts/test.sh)");
        TestDb {
            name: db.name.clone(),
            url: db.url.clone(),
            _db: db,
        }
    }

    /// Ends every connection of the servers to this database (a fault).
    pub fn kill_connections(&self) -> u64 {
        let n = self.name.clone();
        with_admin_db(move |c| {
            c.query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&n],
            )
            .expect("terminate backends")
            .len() as u64
        })
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// The three service clients with one identity.
#[derive(Clone)]
pub struct Clients {
    /// PartyService.
    pub parties: PartyServiceClient<Authed>,
    /// ChannelService.
    pub channels: ChannelServiceClient<Authed>,
    /// MessageService.
    pub messages: MessageServiceClient<Authed>,
    /// AuditService.
    pub audit: AuditServiceClient<Authed>,
}

impl Clients {
    /// Clients over `channel` with an optional token.
    pub fn new(channel: Channel, token: Option<&str>) -> Clients {
        let b = match token {
            Some(t) => Bearer::new(t).expect("ascii token"),
            None => Bearer::none(),
        };
        Clients {
            parties: PartyServiceClient::with_interceptor(channel.clone(), b.clone()),
            channels: ChannelServiceClient::with_interceptor(channel.clone(), b.clone()),
            messages: MessageServiceClient::with_interceptor(channel.clone(), b.clone()),
            audit: AuditServiceClient::with_interceptor(channel, b),
        }
    }
}

/// Creates a party (as the admin) and returns a token for it.
pub async fn party(admin: &mut Clients, id: &str) -> String {
    admin
        .parties
        .create_party(pb::CreatePartyRequest {
            party_id: id.into(),
            display_name: id.to_uppercase(),
            kind: pb::party::Kind::State as i32,
        })
        .await
        .unwrap_or_else(|e| panic!("create party {id}: {e}"));
    admin
        .parties
        .issue_token(pb::IssueTokenRequest {
            party_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("issue token {id}: {e}"))
        .into_inner()
        .token
}

/// The parties of the Biarritz exchange, each with its own clients.
pub struct World {
    /// The admin.
    pub admin: Clients,
    /// Tehran.
    pub iran: Clients,
    /// Washington.
    pub us: Clients,
    /// Paris (Macron), first mediator.
    pub france: Clients,
    /// Tokyo (Abe), second mediator.
    pub japan: Clients,
    /// A party on no channel.
    pub outsider: Clients,
    /// iran → france → japan → united-states.
    pub channel: pb::Channel,
    /// Tokens by party id.
    pub tokens: std::collections::HashMap<String, String>,
}

/// Registers iran, united-states, france, japan and an outsider, and opens
/// a two-mediator channel iran → france → japan → united-states.
pub async fn world(server: &Server) -> World {
    let mut admin = server.admin().await;
    let mut tokens = std::collections::HashMap::new();
    for p in ["iran", "united-states", "france", "japan", "outsider"] {
        tokens.insert(p.to_string(), party(&mut admin, p).await);
    }
    let channel = admin
        .channels
        .create_channel(pb::CreateChannelRequest {
            display_name: "Biarritz".into(),
            parties: vec!["iran".into(), "united-states".into()],
            mediators: vec!["france".into(), "japan".into()],
            request_id: String::new(),
        })
        .await
        .expect("create channel")
        .into_inner();
    World {
        iran: server.clients(&tokens["iran"]).await,
        us: server.clients(&tokens["united-states"]).await,
        france: server.clients(&tokens["france"]).await,
        japan: server.clients(&tokens["japan"]).await,
        outsider: server.clients(&tokens["outsider"]).await,
        admin,
        channel,
        tokens,
    }
}

/// A plain send request on `channel_id`.
pub fn send_req(channel_id: &str, subject: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        channel_id: channel_id.into(),
        subject: subject.into(),
        ..Default::default()
    }
}

/// A move request (accept, forward, …) with a note.
macro_rules! move_req {
    ($ty:ident, $id:expr) => {
        backchannel::pb::$ty {
            message_id: $id.to_string(),
            note: "noted".into(),
            ..Default::default()
        }
    };
}
pub(crate) use move_req;

/// The `ErrorInfo.reason` of a status, or "" if it has none.
pub fn reason(s: &Status) -> String {
    use tonic_types::StatusExt;
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// Asserts that `r` failed with `code` and `reason`.
#[track_caller]
pub fn assert_err<T: std::fmt::Debug>(r: Result<T, Status>, code: Code, want_reason: &str) {
    match r {
        Ok(v) => panic!("expected {code:?}/{want_reason}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "status {s:?}");
            assert_eq!(reason(&s), want_reason, "status {s:?}");
        }
    }
}

/// Polls `f` until it returns `Some`, or panics after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every event the admin can see, oldest first (all pages).
pub async fn all_events(admin: &mut Clients, req: pb::ListEventsRequest) -> Vec<pb::Event> {
    let mut out = Vec::new();
    let mut req = req;
    req.page_size = 1000;
    loop {
        let r = admin
            .messages
            .list_events(req.clone())
            .await
            .expect("list events")
            .into_inner();
        out.extend(r.events);
        if r.next_page_token.is_empty() {
            return out;
        }
        req.page_token = r.next_page_token;
    }
}

/// SQL that takes an embedded store's idempotency records back from runs
/// (schema version 5) to the one `requests` index of the versions before,
/// empty: for tests of the migrations, on a stopped server's database.
pub const REQUESTS_BEFORE_RUNS: &str = "
    DROP TABLE request_runs;
    DROP TABLE request_run_list;
    CREATE TABLE requests (
        caller      TEXT NOT NULL,
        method      TEXT NOT NULL,
        request_id  TEXT NOT NULL,
        fingerprint BLOB NOT NULL,
        resource_id TEXT NOT NULL,
        PRIMARY KEY (caller, method, request_id)
    ) WITHOUT ROWID;";

/// The Prometheus text of the metrics endpoint at `addr`.
pub async fn scrape(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("response");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the first sample line starting with `prefix`.
pub fn metric_sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The address the README's tours call; the tests put the test server's there.
pub const README_ADDR: &str = "127.0.0.1:50051";
/// The data directory the README's tours read the admin token from.
pub const README_DATA_DIR: &str = "backchannel-data";

/// The shell code of the README's tour between `<!-- NAME:start -->` and
/// `<!-- NAME:end -->`, pointed at `server`.
pub fn readme_tour(name: &str, server: &Server) -> String {
    let (start_mark, end_mark) = (
        format!("<!-- {name}:start -->"),
        format!("<!-- {name}:end -->"),
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let start = readme
        .find(&start_mark)
        .unwrap_or_else(|| panic!("README.md has no {start_mark}"));
    let end = readme[start..]
        .find(&end_mark)
        .map(|i| start + i)
        .unwrap_or_else(|| panic!("README.md has no {end_mark} after {start_mark}"));
    let mut script = String::new();
    let mut in_block = false;
    for line in readme[start..end].lines() {
        if in_block {
            if line.trim_start().starts_with("```") {
                in_block = false;
            } else {
                script.push_str(line);
                script.push('\n');
            }
        } else if line.trim_start().starts_with("```") {
            let lang = line.trim_start().trim_start_matches('`').trim();
            assert!(
                matches!(lang, "sh" | "bash"),
                "the tour's code blocks must be ```sh, found {line:?}"
            );
            in_block = true;
        }
    }
    assert!(!in_block, "the README's tour has an unclosed code block");
    assert!(
        script.contains(README_ADDR),
        "the tour does not call {README_ADDR}"
    );
    assert!(
        script.contains(&format!("{README_DATA_DIR}/admin.token")),
        "the tour does not read {README_DATA_DIR}/admin.token"
    );
    let data_dir = server.data_path().to_str().expect("UTF-8 data dir");
    assert!(
        !data_dir.contains(char::is_whitespace),
        "data dir {data_dir:?}"
    );
    let script = script
        .replace(README_ADDR, &server.addr.to_string())
        .replace(README_DATA_DIR, data_dir);
    assert!(
        !script.contains(":50051"),
        "the tour still names port 50051:\n{script}"
    );
    script
}

/// Sends and moves messages on the world's channel until the log holds at
/// least `n` events; returns the head.
pub async fn grow(w: &mut World, n: u64) -> u64 {
    let mut i = 0;
    loop {
        let head = stream::head(&mut w.admin).await;
        if head >= n {
            return head;
        }
        let m = w
            .iran
            .messages
            .send_message(send_req(&w.channel.id, &format!("message {i}")))
            .await
            .expect("send")
            .into_inner();
        if i % 3 == 0 {
            w.france
                .messages
                .accept_message(move_req!(AcceptMessageRequest, m.id))
                .await
                .expect("accept");
        }
        i += 1;
    }
}

/// Opens a second channel, france → japan → united-states, that iran is
/// not on.
pub async fn aside_channel(w: &mut World) -> pb::Channel {
    w.admin
        .channels
        .create_channel(pb::CreateChannelRequest {
            display_name: "Osaka".into(),
            parties: vec!["france".into(), "united-states".into()],
            mediators: vec!["japan".into()],
            request_id: String::new(),
        })
        .await
        .expect("create channel")
        .into_inner()
}

/// Runs the binary on `data_dir` expecting it to refuse to start; returns
/// its exit code and everything it printed.
pub async fn refused_start(data_dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_backchannel"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--log-format")
        .arg("json")
        .args(extra)
        .env("BACKCHANNEL_ADMIN_TOKEN", ADMIN_TOKEN)
        .env_remove("BACKCHANNEL_DATABASE_URL")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, out)
        .await
        .expect("the second server ended within the deadline")
        .expect("run backchannel");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}
