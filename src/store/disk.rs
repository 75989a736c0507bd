//! The embedded store's data directory: one owner at a time (an exclusive
//! lock), private files, and a watch on its identity so that a directory
//! removed or replaced while running is noticed before anything more is
//! acknowledged. Also tells apart the file-system faults SQLite reports as
//! a bare I/O error (full, read-only, gone).

use crate::store::error::{Fault, StoreError};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The lock file's name inside the data directory; it holds the owner's pid.
pub const LOCK_FILE: &str = "backchannel.lock";

/// Mode of the data directory: only its owner may enter it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in it: bodies, token hashes and keys.
pub const FILE_MODE: u32 = 0o600;

/// How often the watch thread checks the directory's identity.
pub const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Where a file lives on disk: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(path: &Path) -> std::io::Result<FileId> {
        let m = std::fs::metadata(path)?;
        Ok(FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// The data directory, owned by this process for as long as the value lives
/// (the lock is released when its file is closed).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Holds the exclusive lock.
    _lock: File,
    /// The directory and the database file as they were opened: if the
    /// paths come to name something else, the store was lost.
    dir_id: FileId,
    lock_id: FileId,
    db: Option<(PathBuf, FileId)>,
    /// Set once the directory was found lost; never cleared.
    lost: Arc<AtomicBool>,
}

fn unavailable(what: String) -> StoreError {
    StoreError::new(Fault::Unavailable, what)
}

impl DataDir {
    /// Creates `dir` (mode 0700) if needed, tightens its mode and takes the
    /// exclusive lock. A second server on the same directory is refused with
    /// the directory and the holder's pid named.
    pub fn lock(dir: &Path) -> Result<DataDir, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| {
                unavailable(format!(
                    "cannot create data directory {}: {e}",
                    dir.display()
                ))
            })?;
        private(dir, DIR_MODE)?;
        let lock_path = dir.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&lock_path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "another process".to_owned()
                } else {
                    format!("another backchannel server (pid {holder})")
                };
                return Err(unavailable(format!(
                    "the data directory {} is in use by {holder}; stop it first, \
                     or give this server its own --data-dir",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(unavailable(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )));
            }
        }
        // The holder's pid, for the message a second server prints.
        let written = lock
            .set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .and_then(|()| lock.sync_all());
        if let Err(e) = written {
            // The lock holds without the pid; only the message is poorer.
            tracing::warn!(path = %lock_path.display(), error = %e, "cannot write the pid into the lock file");
        }
        let id = |p: &Path| {
            FileId::of(p).map_err(|e| unavailable(format!("cannot stat {}: {e}", p.display())))
        };
        Ok(DataDir {
            path: dir.to_owned(),
            dir_id: id(dir)?,
            lock_id: id(&lock_path)?,
            _lock: lock,
            db: None,
            lost: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the database file `name` (mode 0600) if it does not exist,
    /// tightens the mode of it and of its WAL and shared-memory files if
    /// they do (SQLite gives those the database file's mode), and watches it
    /// from now on.
    pub fn database(&mut self, name: &str) -> Result<PathBuf, StoreError> {
        let path = self.path.join(name);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", path.display())))?;
        for suffix in ["", "-wal", "-shm"] {
            let p = self.path.join(format!("{name}{suffix}"));
            if p.exists() {
                private(&p, FILE_MODE)?;
            }
        }
        let id = FileId::of(&path)
            .map_err(|e| unavailable(format!("cannot stat {}: {e}", path.display())))?;
        self.db = Some((path.clone(), id));
        Ok(path)
    }

    /// `Err(STORE_LOST)` if the directory, its lock file or its database
    /// file was removed or replaced since it was opened. Two or three
    /// `stat`s: cheap enough to run before every acknowledgement.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.lost.load(Ordering::Relaxed) {
            return Err(self.lost_rejection());
        }
        let same = |p: &Path, id: FileId| FileId::of(p).is_ok_and(|now| now == id);
        let intact = same(&self.path, self.dir_id)
            && same(&self.path.join(LOCK_FILE), self.lock_id)
            && self.db.as_ref().is_none_or(|(p, id)| same(p, *id));
        if intact {
            return Ok(());
        }
        // Logged once, by the writer, as the fault it is.
        self.lost.store(true, Ordering::Relaxed);
        Err(self.lost_rejection())
    }

    /// `Err(STORE_READ_ONLY)` if the data directory's file system is
    /// mounted read-only now: the operator (or the kernel, after an error)
    /// made it refuse writes, so nothing more is committed until it is
    /// writable again. One `statvfs`.
    pub fn writable(&self) -> Result<(), StoreError> {
        match statvfs(&self.path) {
            Some(st) if st.read_only => Err(StoreError::new(
                Fault::ReadOnly,
                format!(
                    "the file system of the data directory {} is read-only; nothing was written",
                    self.path.display()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Whether the directory was found lost.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    fn lost_rejection(&self) -> StoreError {
        StoreError::new(
            Fault::Lost,
            format!(
                "the data directory {} was removed or replaced while the server was running; \
                 no write is acknowledged from now on: restore the directory (or its backup) \
                 and restart the server",
                self.path.display()
            ),
        )
    }

    /// What a failed write most likely ran into, asked of the file system
    /// itself: SQLite reports several faults as a bare I/O error.
    pub fn fault(&self) -> Option<Fault> {
        if self.check().is_err() {
            return Some(Fault::Lost);
        }
        let st = statvfs(&self.path)?;
        if st.read_only {
            Some(Fault::ReadOnly)
        } else if st.available_blocks == 0 {
            Some(Fault::Full)
        } else {
            None
        }
    }
}

/// Sets `path`'s mode to `mode` if it is looser.
fn private(path: &Path, mode: u32) -> Result<(), StoreError> {
    let m = std::fs::metadata(path)
        .map_err(|e| unavailable(format!("cannot stat {}: {e}", path.display())))?;
    if m.permissions().mode() & 0o777 & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
            unavailable(format!(
                "cannot make {} private (mode {mode:o}): {e}",
                path.display()
            ))
        })?;
        tracing::info!(path = %path.display(), mode = format!("{mode:o}"), "tightened permissions");
    }
    Ok(())
}

/// What `statvfs(2)` says of a file system.
struct FsStatus {
    read_only: bool,
    available_blocks: u64,
}

fn statvfs(path: &Path) -> Option<FsStatus> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable
    // memory of the right type; statvfs only writes it and fully on success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Some(FsStatus {
        read_only: st.f_flag & libc::ST_RDONLY != 0,
        available_blocks: st.f_bavail,
    })
}
