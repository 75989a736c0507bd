//! What the behavioural tests (`tests/common`) and the benchmark
//! (`bench/`) share: adding a bearer token to calls, opening a client
//! connection, a fresh PostgreSQL database dropped when done, and a local
//! process's resident memory. It knows nothing of the proto, so it builds
//! without the service.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// The error of the kit's fallible calls.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Adds `authorization: Bearer TOKEN` to every call (nothing when made
/// without a token).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Calls with `token`; an error if it cannot be a header value.
    pub fn new(token: &str) -> Result<Bearer, Error> {
        Ok(Bearer(Some(format!("Bearer {token}").parse()?)))
    }

    /// Calls with no token at all.
    pub fn none() -> Bearer {
        Bearer(None)
    }

    /// The `authorization` value it adds, if any.
    pub fn header(&self) -> Option<&MetadataValue<Ascii>> {
        self.0.as_ref()
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// One HTTP/2 connection to `addr` (host:port, plaintext), with
/// `TCP_NODELAY` and a 10 s connect timeout.
pub async fn connect(addr: &str) -> Result<Channel, Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await?)
}

/// Set by `./scripts/test.sh` (and so by `.ci/run`): a test whose outside
/// tool (grpcurl, a linter) is missing fails instead of skipping.
pub const REQUIRE_TOOLS: &str = "BACKCHANNEL_REQUIRE_TOOLS";

/// Whether a test that needs the outside tool `name` can run. When it was
/// not `found`, the test is skipped with a line saying `how` to get it,
/// unless [`REQUIRE_TOOLS`] is set, where that is a failure: a plain
/// `cargo test` passes on a machine with only Rust, and the test script
/// always runs these checks.
pub fn tool_available(name: &str, found: bool, how: &str) -> bool {
    if found {
        return true;
    }
    assert!(
        std::env::var_os(REQUIRE_TOOLS).is_none(),
        "{name} is not installed: {how} ({REQUIRE_TOOLS} is set)"
    );
    eprintln!("skipped: {name} is not installed: {how}");
    false
}

/// Whether the tests run on PostgreSQL (`BACKCHANNEL_TEST_BACKEND=postgres`;
/// the embedded store otherwise).
pub fn backend_is_postgres() -> bool {
    std::env::var("BACKCHANNEL_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// The PostgreSQL server the tests use: `DATABASE_URL`, or the local one
/// with trust auth.
pub fn admin_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database `<prefix>_<uuid>` on a PostgreSQL server, dropped
/// (with `FORCE`) when this is dropped.
pub struct TempDb {
    /// The server's URL it was made with.
    pub admin_url: String,
    /// The database's name.
    pub name: String,
    /// Its URL: the server's URL with the database's name as its path.
    pub url: String,
}

impl TempDb {
    /// Creates it on the server at `admin_url`, as that URL's user.
    pub fn create(admin_url: &str, prefix: &str) -> Result<TempDb, Error> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let n = name.clone();
        on_server(admin_url, move |c| {
            c.batch_execute(&format!("CREATE DATABASE {n}"))
        })
        .map_err(|e| format!("cannot create database {name} on {admin_url}: {e}"))?;
        Ok(TempDb {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name),
            name,
        })
    }

    /// Runs `f` on a connection to the server as its admin user, on a
    /// thread of its own (the synchronous client must not run inside an
    /// async runtime).
    pub fn on_admin<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send + 'static,
    ) -> Result<T, Error> {
        on_server(&self.admin_url, f)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let n = self.name.clone();
        let dropped = self.on_admin(move |c| {
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"))
        });
        if let Err(e) = dropped {
            eprintln!("warning: could not drop database {}: {e}", self.name);
        }
    }
}

/// Runs `f` on a fresh connection to `url`, on a thread of its own.
pub fn on_server<T: Send + 'static>(
    url: &str,
    f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send + 'static,
) -> Result<T, Error> {
    let url = url.to_owned();
    std::thread::spawn(move || -> Result<T, Error> {
        let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
        Ok(f(&mut c)?)
    })
    .join()
    .map_err(|_| "the database thread panicked")?
}

/// `url` with its database (the path) replaced by `name`, its query kept.
pub fn with_database(url: &str, name: &str) -> String {
    let (prefix, query) = match url.split_once('?') {
        Some((p, q)) => (p, format!("?{q}")),
        None => (url, String::new()),
    };
    let root = match prefix.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((host, _)) => format!("{scheme}://{host}"),
            None => prefix.to_owned(),
        },
        None => prefix.to_owned(),
    };
    format!("{root}/{name}{query}")
}

/// The resident memory of local process `pid` in KiB (Linux), if known.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn a_database_url_gets_the_new_name_and_keeps_its_query() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "bc_x"),
            "postgres://postgres@127.0.0.1:5432/bc_x"
        );
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "bc_x"),
            "postgres://u@h/bc_x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@h", "bc_x"),
            "postgres://u@h/bc_x"
        );
    }
}
