//! The check of the finished copy: SQLite's integrity check, and the size
//! of the copied log.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::error::{BackupError, sqlite_error};

/// Checks the copy as a whole and reads the size of its log: (events, head).
pub(super) fn check_copy(copy: &Path, dest: &Path) -> Result<(u64, u64), BackupError> {
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
