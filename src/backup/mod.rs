//! `backchannel backup DEST`: a consistent copy of the embedded store, taken
//! while the server runs (DESIGN §5, "The store defends the record").
//!
//! The copy is made with SQLite's online backup API inside one read
//! transaction, so it is the record as of one commit however long the copy
//! takes. The store is in WAL mode, so the server's writer goes on
//! committing meanwhile; only the WAL cannot be recycled past that commit
//! until the copy ends. Nothing here touches the server's lock file: the
//! backup only reads the data directory.
//!
//! The copy is built in a temporary directory beside DEST, checked, and
//! renamed to DEST only when whole, so DEST is either absent (or still
//! empty) or a complete data directory, ready for a server to start on.
//! (An empty mount point cannot be renamed over; there the backup is built
//! in a hidden directory inside DEST and moved up, the database first.)
//!
//! Here are the request, the command and the order of its steps; `copy.rs`
//! opens the store and copies it, `dest.rs` builds the backup beside (or
//! inside) DEST and puts it in place, `check.rs` checks the finished copy,
//! and `error.rs` says what went wrong.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::auth::ADMIN_TOKEN_FILE;
use crate::cli::BackupArgs;
use crate::config::Config;
use crate::store::sqlite::DB_FILE;

mod check;
mod copy;
mod dest;
mod error;

use check::check_copy;
use copy::{copy_database, copy_side_file, open_source, store_file};
use dest::{Partial, check_dest, sync_tree};
pub use error::BackupError;

/// The audit signing key's file in the data directory (DESIGN §7), copied
/// when it exists.
pub const SIGNING_KEY_FILE: &str = "signing.key";

/// The data directory's small files copied beside the database, when present.
const SIDE_FILES: &[&str] = &[ADMIN_TOKEN_FILE, SIGNING_KEY_FILE];

/// Pages copied per step by default: 4 MiB at SQLite's default page size,
/// a few milliseconds of disk time.
pub const DEFAULT_STEP_PAGES: u32 = 1024;

/// Pause between steps, which leaves the disk and a core to the live server.
pub const STEP_PAUSE: Duration = Duration::from_millis(5);

/// How often progress is reported while a copy runs.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// How long the store may stay busy before the backup gives up. The copy
/// holds its own read transaction, so a busy step is rare and brief.
const BUSY_LIMIT: Duration = Duration::from_secs(30);

/// Waits this long for a lock when opening the store (the server may be
/// checkpointing or recovering its WAL at that moment).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What to copy and where.
#[derive(Debug, Clone)]
pub struct Request {
    /// The data directory of the store to copy.
    pub data_dir: PathBuf,
    /// The new (or empty) directory that receives the copy.
    pub dest: PathBuf,
    /// Set when the record is in PostgreSQL, which this command refuses.
    pub database_url: Option<String>,
    /// Pages copied per step of the online backup.
    pub step_pages: u32,
}

impl Request {
    /// The request `backchannel backup` was given: its own `--data-dir`
    /// and `--database-url`, else the server's settings (flags before the
    /// subcommand, environment, defaults).
    pub fn new(args: &BackupArgs, config: &Config) -> Request {
        Request {
            data_dir: args
                .data_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.clone()),
            dest: args.dest.clone(),
            database_url: args
                .database_url
                .clone()
                .or_else(|| config.database_url.clone()),
            step_pages: args.step_pages,
        }
    }
}

/// Where a running backup is, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Copying: `copied` of `total` pages so far.
    Copying {
        /// Pages copied.
        copied: u64,
        /// Pages in the snapshot being copied.
        total: u64,
    },
    /// The copy is whole and its integrity check is running.
    Checking,
}

/// A finished backup.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The backup directory.
    pub dest: PathBuf,
    /// Bytes in it.
    pub bytes: u64,
    /// Events in the copied log.
    pub events: u64,
    /// The copied log's head sequence.
    pub head: u64,
    /// How long the whole backup took.
    pub elapsed: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backup {}: {}, {} events, head {}, {:.2}s",
            self.dest.display(),
            human_bytes(self.bytes),
            self.events,
            self.head,
            self.elapsed.as_secs_f64()
        )
    }
}

/// `backchannel backup`: runs the backup off the async runtime, reports
/// progress on stderr and the summary on stdout; exits 0, or 1 with
/// `error: …` on stderr.
pub async fn command(request: Request) -> ExitCode {
    let done = tokio::task::spawn_blocking(move || {
        run(&request, &mut |stage| match stage {
            Stage::Copying { copied, total } => eprintln!(
                "backup: copied {copied} of {total} pages ({}%)",
                copied * 100 / total.max(1)
            ),
            Stage::Checking => eprintln!("backup: checking the copy"),
        })
    })
    .await;
    match done {
        Ok(Ok(summary)) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: the backup stopped: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Makes the backup `request` asks for, reporting long stages to `progress`.
pub fn run(request: &Request, progress: &mut dyn FnMut(Stage)) -> Result<Summary, BackupError> {
    let start = Instant::now();
    if request.database_url.is_some() {
        return Err(BackupError::Postgres);
    }
    let dest = &request.dest;
    check_dest(dest)?;
    let source_path = store_file(&request.data_dir)?;
    let source = open_source(&source_path)?;

    let partial = Partial::create(dest)?;
    let copy_path = partial.path.join(DB_FILE);
    copy_database(
        &source,
        &source_path,
        &copy_path,
        dest,
        request.step_pages,
        start,
        progress,
    )?;
    drop(source);
    for name in SIDE_FILES {
        copy_side_file(&request.data_dir.join(name), &partial.path.join(name), dest)?;
    }
    if start.elapsed() >= PROGRESS_INTERVAL {
        progress(Stage::Checking);
    }
    let (events, head) = check_copy(&copy_path, dest)?;
    let bytes = sync_tree(&partial.path, dest)?;
    partial.finish()?;
    Ok(Summary {
        dest: dest.clone(),
        bytes,
        events,
        head,
        elapsed: start.elapsed(),
    })
}

/// `1536` → `1.5 KiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
