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

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::auth::ADMIN_TOKEN_FILE;
use crate::config::{Config, Subcommand};
use crate::store::sqlite::DB_FILE;

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
    /// The request `backchannel backup` was given, if that is the command:
    /// its own `--data-dir` and `--database-url`, else the server's settings
    /// (flags before the subcommand, environment, defaults).
    pub fn from_config(config: &Config) -> Option<Request> {
        let Some(Subcommand::Backup {
            dest,
            data_dir,
            database_url,
            step_pages,
        }) = &config.command
        else {
            return None;
        };
        Some(Request {
            data_dir: data_dir.clone().unwrap_or_else(|| config.data_dir.clone()),
            dest: dest.clone(),
            database_url: database_url.clone().or_else(|| config.database_url.clone()),
            step_pages: *step_pages,
        })
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

/// Why a backup failed. Each names the path it concerns and the cause.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The record is in PostgreSQL.
    #[error(
        "backup copies the embedded store, and this record is in PostgreSQL (--database-url): \
         back it up with pg_dump, e.g. pg_dump --format=custom --file=backchannel.dump \"$BACKCHANNEL_DATABASE_URL\""
    )]
    Postgres,
    /// The data directory is not there.
    #[error(
        "data directory {} does not exist (give --data-dir or BACKCHANNEL_DATA_DIR)",
        .0.display()
    )]
    NoDataDir(PathBuf),
    /// The data directory, or its database, is not a backchannel store.
    #[error("{} is not a backchannel store: {why}", path.display())]
    NotAStore {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// DEST has something in it.
    #[error(
        "{} is not empty; a backup goes into a new or empty directory",
        .0.display()
    )]
    DestNotEmpty(PathBuf),
    /// DEST exists and is not a directory.
    #[error("{} exists and is not a directory", .0.display())]
    DestNotDir(PathBuf),
    /// DEST cannot hold the copy.
    #[error("no space left on the device of {}", .0.display())]
    DiskFull(PathBuf),
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// SQLite failed.
    #[error("{}: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: rusqlite::Error,
    },
    /// The store stayed locked.
    #[error("{} stayed busy for {}s; try again", .0.display(), BUSY_LIMIT.as_secs())]
    Busy(PathBuf),
    /// The finished copy failed its integrity check.
    #[error("the copy {} failed its integrity check: {report}", path.display())]
    Damaged {
        /// The copied database file.
        path: PathBuf,
        /// What the check found (its first lines).
        report: String,
    },
}

/// An I/O failure at `path`, where a full disk is the destination's.
fn io_error(path: &Path, dest: &Path) -> impl FnOnce(io::Error) -> BackupError {
    move |source| {
        if source.kind() == io::ErrorKind::StorageFull {
            BackupError::DiskFull(dest.to_owned())
        } else {
            BackupError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }
}

/// An SQLite failure on `path`, where a full disk is the destination's.
fn sqlite_error(path: &Path, dest: &Path) -> impl FnOnce(rusqlite::Error) -> BackupError {
    move |source| {
        if source.sqlite_error_code() == Some(ErrorCode::DiskFull) {
            BackupError::DiskFull(dest.to_owned())
        } else {
            BackupError::Sqlite {
                path: path.to_owned(),
                source,
            }
        }
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

/// DEST must be absent or an empty directory; it is left as it is.
fn check_dest(dest: &Path) -> Result<(), BackupError> {
    match fs::symlink_metadata(dest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(dest, dest)(e)),
        Ok(m) if !m.is_dir() => Err(BackupError::DestNotDir(dest.to_owned())),
        Ok(_) => {
            let mut entries = fs::read_dir(dest).map_err(io_error(dest, dest))?;
            match entries.next() {
                None => Ok(()),
                Some(_) => Err(BackupError::DestNotEmpty(dest.to_owned())),
            }
        }
    }
}

/// The database file of the store in `data_dir`, which must exist.
fn store_file(data_dir: &Path) -> Result<PathBuf, BackupError> {
    match fs::metadata(data_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BackupError::NoDataDir(data_dir.to_owned()));
        }
        Err(e) => return Err(io_error(data_dir, data_dir)(e)),
        Ok(m) if !m.is_dir() => {
            return Err(BackupError::NotAStore {
                path: data_dir.to_owned(),
                why: "it is not a directory".into(),
            });
        }
        Ok(_) => {}
    }
    let path = data_dir.join(DB_FILE);
    match fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(_) => Err(BackupError::NotAStore {
            path,
            why: "it is not a file".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BackupError::NotAStore {
            path: data_dir.to_owned(),
            why: format!("it holds no {DB_FILE}"),
        }),
        Err(e) => Err(io_error(&path, &path)(e)),
    }
}

/// Opens the store's database read-only: the backup never writes to it.
fn open_source(path: &Path) -> Result<Connection, BackupError> {
    let err = |source| BackupError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    Ok(conn)
}

/// The parent directory of `path` (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The temporary directory a backup is built in; removed unless
/// [`Partial::finish`] puts the backup in place.
struct Partial {
    /// Where the backup is built: `.DEST.partial-PID` beside DEST, so that
    /// one rename makes DEST whole; or `DEST/.partial-PID` when DEST is an
    /// empty mount point, which no rename can replace.
    path: PathBuf,
    /// The backup directory asked for.
    dest: PathBuf,
    /// Whether `path` is inside DEST.
    inside: bool,
    /// Set once the backup is in place.
    finished: bool,
}

impl Partial {
    fn create(dest: &Path) -> Result<Partial, BackupError> {
        use std::os::unix::fs::MetadataExt as _;
        let name = dest.file_name().ok_or_else(|| BackupError::Io {
            path: dest.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "name the backup directory itself (it ends in `..` or is `/`)",
            ),
        })?;
        let parent = parent_of(dest);
        let device = |p: &Path| fs::metadata(p).map(|m| m.dev());
        let inside = match device(dest) {
            Ok(d) => d != device(parent).map_err(io_error(parent, dest))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_error(dest, dest)(e)),
        };
        let pid = std::process::id();
        let path = if inside {
            dest.join(format!(".partial-{pid}"))
        } else {
            parent.join(format!(".{}.partial-{pid}", name.to_string_lossy()))
        };
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io_error(&path, dest))?;
        let partial = Partial {
            path,
            dest: dest.to_owned(),
            inside,
            finished: false,
        };
        // The mode given at creation is narrowed by the umask, never widened;
        // set it exactly.
        private(&partial.path, dest)?;
        Ok(partial)
    }

    /// Puts the whole backup at DEST and makes that durable.
    fn finish(mut self) -> Result<(), BackupError> {
        let dest = self.dest.clone();
        if self.inside {
            self.move_up()?;
        } else {
            fs::rename(&self.path, &dest).map_err(|e| match e.kind() {
                // Something appeared in DEST while the copy ran.
                io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists => {
                    BackupError::DestNotEmpty(dest.clone())
                }
                io::ErrorKind::NotADirectory => BackupError::DestNotDir(dest.clone()),
                _ => io_error(&dest, &dest)(e),
            })?;
        }
        self.finished = true;
        let parent = parent_of(&dest);
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_error(parent, &dest))
    }

    /// Moves the files built inside DEST up into it: the database first, so
    /// that, interrupted, DEST never holds a token without its record.
    fn move_up(&self) -> Result<(), BackupError> {
        let dest = &self.dest;
        let others = fs::read_dir(dest)
            .map_err(io_error(dest, dest))?
            .filter_map(Result::ok)
            .any(|e| e.path() != self.path);
        if others {
            return Err(BackupError::DestNotEmpty(dest.clone()));
        }
        private(dest, dest)?;
        for name in std::iter::once(DB_FILE).chain(SIDE_FILES.iter().copied()) {
            let from = self.path.join(name);
            if from.exists() {
                fs::rename(&from, dest.join(name)).map_err(io_error(&from, dest))?;
            }
        }
        fs::remove_dir(&self.path).map_err(io_error(&self.path, dest))?;
        fs::File::open(dest)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dest, dest))
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort: a leftover is named `.partial-PID`, never DEST's
            // files.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Makes the directory `dir` its owner's only (0700).
fn private(dir: &Path, dest: &Path) -> Result<(), BackupError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_error(dir, dest))
}

/// Copies the database at `source` (open as `conn`) to `copy` in steps of
/// `step_pages`, all from one snapshot, and leaves the copy self-contained
/// (rollback journal mode: no `-wal` file belongs to it).
fn copy_database(
    conn: &Connection,
    source: &Path,
    copy: &Path,
    dest: &Path,
    step_pages: u32,
    start: Instant,
    progress: &mut dyn FnMut(Stage),
) -> Result<(), BackupError> {
    let source_err = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => BackupError::NotAStore {
            path: source.to_owned(),
            why: "it is not an SQLite database".into(),
        },
        _ => BackupError::Sqlite {
            path: source.to_owned(),
            source: e,
        },
    };
    // Every step reads through this transaction, so all of them copy the
    // same snapshot; without it each step would begin a new one and restart
    // the copy whenever the server had committed in between.
    let snapshot = conn.unchecked_transaction().map_err(source_err)?;
    let tables: Vec<String> = snapshot
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name IN ('meta', 'events')",
        )
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(source_err)?;
    if tables.len() != 2 {
        return Err(BackupError::NotAStore {
            path: source.to_owned(),
            why: "it lacks the meta and events tables".into(),
        });
    }

    // Created here so that it is 0600 from the start; SQLite keeps the mode
    // of a file that exists (and gives its journal the same).
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(copy)
        .map_err(io_error(copy, dest))?;
    let copy_err = |e| sqlite_error(copy, dest)(e);
    let mut target = Connection::open(copy).map_err(copy_err)?;
    {
        let backup = Backup::new(&snapshot, &mut target).map_err(copy_err)?;
        let pages = i32::try_from(step_pages).unwrap_or(i32::MAX).max(1);
        let mut reported = start;
        let mut busy_since: Option<Instant> = None;
        loop {
            match backup.step(pages).map_err(copy_err)? {
                StepResult::Done => break,
                StepResult::Busy | StepResult::Locked => {
                    let since = *busy_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > BUSY_LIMIT {
                        return Err(BackupError::Busy(source.to_owned()));
                    }
                }
                // More, and whatever outcome a later rusqlite adds: step on.
                _ => busy_since = None,
            }
            if reported.elapsed() >= PROGRESS_INTERVAL {
                let p = backup.progress();
                let total = u64::try_from(p.pagecount).unwrap_or(0);
                let remaining = u64::try_from(p.remaining).unwrap_or(0);
                progress(Stage::Copying {
                    copied: total.saturating_sub(remaining),
                    total,
                });
                reported = Instant::now();
            }
            std::thread::sleep(STEP_PAUSE);
        }
    }
    // The copy is whole: let the server's checkpoints go on.
    drop(snapshot);
    // Page 1 came over as it was, marked WAL; mark the copy as a plain
    // database file, complete without a -wal.
    let mode: String = target
        .pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0))
        .map_err(copy_err)?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(BackupError::Damaged {
            path: copy.to_owned(),
            report: format!("its journal mode stayed {mode}"),
        });
    }
    target.close().map_err(|(_, e)| copy_err(e))
}

/// Copies a small file of the data directory (0600), if it exists.
fn copy_side_file(from: &Path, to: &Path, dest: &Path) -> Result<(), BackupError> {
    let mut source = match fs::File::open(from) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(from, dest)(e)),
    };
    let mut target = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(io_error(to, dest))?;
    io::copy(&mut source, &mut target).map_err(io_error(to, dest))?;
    Ok(())
}

/// Checks the copy as a whole and reads the size of its log: (events, head).
fn check_copy(copy: &Path, dest: &Path) -> Result<(u64, u64), BackupError> {
    let err = |e| sqlite_error(copy, dest)(e);
    let conn = Connection::open_with_flags(
        copy,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    let findings: Vec<String> = conn
        .prepare("PRAGMA integrity_check(10)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(err)?;
    if findings != ["ok"] {
        return Err(BackupError::Damaged {
            path: copy.to_owned(),
            report: findings.join("; "),
        });
    }
    let (events, head): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM events",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(err)?;
    let count = |n: i64| {
        u64::try_from(n).map_err(|_| BackupError::Damaged {
            path: copy.to_owned(),
            report: format!("a negative count or sequence ({n})"),
        })
    };
    Ok((count(events)?, count(head)?))
}

/// Makes every file of the backup and the directory itself durable; returns
/// the bytes in it.
fn sync_tree(dir: &Path, dest: &Path) -> Result<u64, BackupError> {
    let mut bytes = 0;
    for entry in fs::read_dir(dir).map_err(io_error(dir, dest))? {
        let path = entry.map_err(io_error(dir, dest))?.path();
        let file = fs::File::open(&path).map_err(io_error(&path, dest))?;
        file.sync_all().map_err(io_error(&path, dest))?;
        bytes += file.metadata().map_err(io_error(&path, dest))?.len();
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir, dest))?;
    Ok(bytes)
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
