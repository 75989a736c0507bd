//! The destination: DEST must be absent or empty; the backup is built in a
//! private temporary directory ([`Partial`]), made durable, and only then
//! put in place.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use super::SIDE_FILES;
use super::error::{BackupError, io_error};
use crate::store::sqlite::DB_FILE;

/// DEST must be absent or an empty directory; it is left as it is.
pub(super) fn check_dest(dest: &Path) -> Result<(), BackupError> {
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

/// The parent directory of `path` (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The temporary directory a backup is built in; removed unless
/// [`Partial::finish`] puts the backup in place.
pub(super) struct Partial {
    /// Where the backup is built: `.DEST.partial-PID` beside DEST, so that
    /// one rename makes DEST whole; or `DEST/.partial-PID` when DEST is an
    /// empty mount point, which no rename can replace.
    pub(super) path: PathBuf,
    /// The backup directory asked for.
    dest: PathBuf,
    /// Whether `path` is inside DEST.
    inside: bool,
    /// Set once the backup is in place.
    finished: bool,
}

impl Partial {
    pub(super) fn create(dest: &Path) -> Result<Partial, BackupError> {
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
    pub(super) fn finish(mut self) -> Result<(), BackupError> {
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

/// Makes every file of the backup and the directory itself durable; returns
/// the bytes in it.
pub(super) fn sync_tree(dir: &Path, dest: &Path) -> Result<u64, BackupError> {
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
