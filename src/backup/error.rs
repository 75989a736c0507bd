//! Why a backup failed, and the conversions that blame a full disk on the
//! destination.

use std::io;
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

use super::BUSY_LIMIT;

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
pub(super) fn io_error(path: &Path, dest: &Path) -> impl FnOnce(io::Error) -> BackupError {
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
pub(super) fn sqlite_error(
    path: &Path,
    dest: &Path,
) -> impl FnOnce(rusqlite::Error) -> BackupError {
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
