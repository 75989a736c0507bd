//! The copy itself: the store's database opened read-only and copied with
//! SQLite's online backup API from one snapshot, and the small files beside
//! it.

use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::error::{BackupError, io_error, sqlite_error};
use super::{BUSY_LIMIT, BUSY_TIMEOUT, PROGRESS_INTERVAL, STEP_PAUSE, Stage};
use crate::store::sqlite::DB_FILE;

/// The database file of the store in `data_dir`, which must exist.
pub(super) fn store_file(data_dir: &Path) -> Result<PathBuf, BackupError> {
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
pub(super) fn open_source(path: &Path) -> Result<Connection, BackupError> {
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

/// Copies the database at `source` (open as `conn`) to `copy` in steps of
/// `step_pages`, all from one snapshot, and leaves the copy self-contained
/// (rollback journal mode: no `-wal` file belongs to it).
pub(super) fn copy_database(
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
pub(super) fn copy_side_file(from: &Path, to: &Path, dest: &Path) -> Result<(), BackupError> {
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
