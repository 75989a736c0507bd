//! Where the server under test keeps its record, and what it takes on
//! disk: the data directory, the write-ahead log, the PostgreSQL database.

use crate::*;

/// Where the server under test keeps its record, for the disk figures.
#[derive(Debug, Clone)]
pub(crate) enum Storage {
    /// The embedded store, in this data directory.
    Embedded(PathBuf),
    /// The PostgreSQL database `name`, sized through a connection to
    /// `admin_url`.
    Postgres { admin_url: String, name: String },
    /// A `--target` server: its storage is out of the bench's sight.
    Remote,
}

impl Storage {
    /// The embedded store's write-ahead log file.
    pub(crate) fn wal_path(&self) -> Option<PathBuf> {
        match self {
            Storage::Embedded(dir) => {
                Some(dir.join(format!("{}-wal", backchannel::store::sqlite::DB_FILE)))
            }
            Storage::Postgres { .. } | Storage::Remote => None,
        }
    }

    /// What [`Storage::bytes`] measures, for the report.
    pub(crate) fn source(&self) -> Option<&'static str> {
        match self {
            Storage::Embedded(_) => Some("data_dir"),
            Storage::Postgres { .. } => Some("pg_database_size"),
            Storage::Remote => None,
        }
    }

    /// The bytes the record takes now: every file in the data directory,
    /// or PostgreSQL's `pg_database_size` of the bench's database; `None`
    /// for a server the bench did not start.
    pub(crate) async fn bytes(&self) -> Result<Option<u64>> {
        match self {
            Storage::Embedded(dir) => {
                let dir = dir.clone();
                Ok(Some(
                    tokio::task::spawn_blocking(move || dir_bytes(&dir)).await??,
                ))
            }
            Storage::Postgres { admin_url, name } => {
                let (url, name) = (admin_url.clone(), name.clone());
                let size = tokio::task::spawn_blocking(move || -> Result<i64> {
                    let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
                    let row = c.query_one("SELECT pg_database_size($1::name)", &[&name])?;
                    Ok(row.try_get(0)?)
                })
                .await??;
                Ok(Some(u64::try_from(size)?))
            }
            Storage::Remote => Ok(None),
        }
    }
}

/// The total length of the files under `dir`. A file that goes away while
/// it is counted (SQLite's `-shm`, say) counts as empty.
pub(crate) fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = match entry.path().symlink_metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            total += dir_bytes(&entry.path())?;
        } else {
            total += meta.len();
        }
    }
    Ok(total)
}

/// A file's length: 0 if it does not exist (SQLite removes its WAL when
/// the last connection closes cleanly), `None` if it cannot be looked at.
pub(crate) fn file_len(path: &Path) -> Option<u64> {
    match std::fs::metadata(path) {
        Ok(m) => Some(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(0),
        Err(_) => None,
    }
}

/// Samples the length of the write-ahead log every [`WAL_POLL`] until it
/// is stopped.
pub(crate) struct WalWatch {
    pub(crate) stop: tokio::sync::oneshot::Sender<()>,
    pub(crate) task: tokio::task::JoinHandle<Vec<(Instant, u64)>>,
}

impl WalWatch {
    pub(crate) fn start(path: PathBuf) -> WalWatch {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(WAL_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        if let Some(n) = file_len(&path) {
                            samples.push((Instant::now(), n));
                        }
                    }
                }
            }
            samples
        });
        WalWatch { stop, task }
    }

    /// Stops polling; the samples taken (time, bytes), oldest first.
    pub(crate) async fn stop(self) -> Vec<(Instant, u64)> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// The largest WAL length sampled in `[from, to)`.
pub(crate) fn wal_peak(samples: &[(Instant, u64)], from: Instant, to: Instant) -> Option<u64> {
    samples
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, n)| *n)
        .max()
}

pub(crate) fn fmt_mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1}", b as f64 / MIB as f64))
}
