//! The writer thread: its cache, its commits, the WAL it keeps bounded,
//! and the thread that builds its filter.

use super::*;

/// Most channels the writer keeps in memory.
pub(super) const CHANNEL_CACHE: usize = 10_000;
/// Most messages the writer keeps in memory (the recently touched ones,
/// which are the ones that move next).
pub(super) const MESSAGE_CACHE: usize = 4_096;

/// What the writer has read or written. It is the only writer, so what it
/// holds stays true; cleared whenever a batch does not commit.
#[derive(Default)]
pub(super) struct Cache {
    pub(super) channels: HashMap<Id, Channel>,
    pub(super) messages: HashMap<Id, Message>,
    /// The idempotency records of `requests_recent`: all of them, not a
    /// cache (see [`recent`]).
    pub(super) requests: Recent,
    /// The runs of `request_runs` (see [`runs`]).
    pub(super) runs: Runs,
}

impl Cache {
    /// The batch did not commit: forgets what it read or wrote.
    pub(super) fn clear(&mut self) {
        self.channels.clear();
        self.messages.clear();
        self.requests.rolled_back();
        self.runs.rolled_back();
    }

    /// Keeps the cache bounded (crudely: a full cache starts over).
    pub(super) fn trim(&mut self) {
        if self.channels.len() > CHANNEL_CACHE {
            self.channels.clear();
        }
        if self.messages.len() > MESSAGE_CACHE {
            self.messages.clear();
        }
    }
}

/// The writer thread's state: the only write connection, the data
/// directory it watches, and what it has read or written.
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) dir: DataDir,
    pub(super) cache: Cache,
    /// No restarting checkpoint before this: one was just blocked by a
    /// reader on an old snapshot (a long listing, a backup), and trying
    /// after every commit would stall the writer for nothing.
    pub(super) next_checkpoint: std::time::Instant,
    /// The filter of the idempotency records' keys being built, if it is.
    pub(super) filter_build: Option<FilterBuild>,
    /// The database's page size: a WAL frame holds one page.
    pub(super) page_size: u64,
    /// The log's Merkle tree as last committed (its size is the head).
    pub(super) tree: Frontier,
}

/// The bytes of a WAL frame's header, before its page.
pub(super) const WAL_FRAME_HEADER: u64 = 24;

thread_local! {
    /// The frames in the writer's WAL after its last commit (SQLite's WAL
    /// hook tells; the writer thread is the one that commits).
    static WAL_FRAMES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// SQLite's WAL hook: called on the committing thread after each commit.
pub(super) fn note_wal_frames(
    _: &rusqlite::hooks::Wal,
    frames: std::ffi::c_int,
) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(u64::try_from(frames).unwrap_or(0)));
    Ok(())
}

/// The thread building the filter of the idempotency records' keys hands it over here.
pub(super) struct FilterBuild {
    /// Where the thread hands the filter over.
    pub(super) built: std::sync::mpsc::Receiver<Option<recent::Keys>>,
    /// Asks the thread to stop (the store is closing).
    pub(super) stop: Arc<AtomicBool>,
    /// The thread, joined before the writer's last checkpoint (its read
    /// snapshot would keep the WAL from being emptied).
    pub(super) thread: std::thread::JoinHandle<()>,
}

impl Writer {
    /// Prepares the writer's thread: the WAL hook (it keeps its count in a
    /// thread-local of the committing thread) and the filter's build.
    pub(super) fn start(&mut self) {
        self.conn.wal_hook(Some(note_wal_frames));
        self.build_filter();
    }

    /// One transaction over `jobs`; `Ok` only once it is durable in the
    /// data directory the server opened.
    pub(super) fn commit_batch(
        &mut self,
        jobs: &[Job],
        tree: &mut Frontier,
        now: Time,
        results: &mut Vec<Result<Outcome, Rejection>>,
        events: &mut Vec<crate::store::Committed>,
    ) -> Result<(recent::StepDone, runs::Done), StoreError> {
        self.dir.check()?;
        self.dir.writable()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let mut wt = Tx {
            conn: &tx,
            cache: Some(&mut self.cache),
        };
        run_batch(&mut wt, jobs, tree, now, results, events)?;
        let budget = recent::move_budget(jobs.len());
        let step = move_step(&tx, &mut self.cache.requests, budget)?;
        let runs_done = self
            .cache
            .runs
            .step(
                &tx,
                runs::merge_budget(jobs.len(), self.cache.runs.live_count()),
            )
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        // Committed into files that are no longer the data directory's
        // (removed or replaced meanwhile): not acknowledged.
        self.dir.check()?;
        Ok((step, runs_done))
    }

    /// Checkpoints and restarts the WAL once it reaches
    /// [`WAL_CHECKPOINT_AT`]. It is restarted, not truncated: the next
    /// commits overwrite blocks the file already has, which costs the file
    /// system far less than growing it again (measured: +13 % sustained
    /// sends, docs/PERFORMANCE.md); the file stays at about
    /// [`WAL_CHECKPOINT_AT`] and is emptied at a clean stop. The writer does it itself, between commits:
    /// a checkpoint that runs beside a writer that never pauses never
    /// catches up (the WAL restarts only when a checkpoint has copied all of
    /// it and no reader is on it), so under sustained writes the WAL grew
    /// without end. A background checkpoint beside this one was measured
    /// too: it took the checkpoint lock when this one needed it, and the
    /// WAL went over its bound again (docs/PERFORMANCE.md).
    pub(super) fn bound_wal(&mut self) {
        let wal = self.dir.path().join(format!("{DB_FILE}-wal"));
        let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        metrics::gauge!(crate::observe::WAL_BYTES).set(size as f64);
        // What the WAL holds since it was last restarted, not the file's
        // size: a restarted WAL keeps its size, and judged by it every
        // commit after the first checkpoint checkpointed again (two more
        // fsyncs per commit).
        let held = WAL_FRAMES.with(std::cell::Cell::get) * (self.page_size + WAL_FRAME_HEADER);
        let started = std::time::Instant::now();
        if held < WAL_CHECKPOINT_AT || started < self.next_checkpoint {
            return;
        }
        let done = match self
            .conn
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0))
        {
            Ok(0) => {
                // The next commit writes from the WAL's start again.
                WAL_FRAMES.with(|f| f.set(0));
                true
            }
            Ok(_) => {
                tracing::debug!(bytes = size, "WAL checkpoint blocked by a reader");
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "WAL checkpoint failed");
                false
            }
        };
        if !done {
            self.next_checkpoint = started + CHECKPOINT_RETRY;
            if size > WAL_LIMIT {
                tracing::warn!(
                    bytes = size,
                    "the WAL is over its bound: a reader (a long listing or a backup) holds an old snapshot"
                );
            }
        }
        metrics::histogram!(crate::observe::WAL_CHECKPOINT).record(started.elapsed().as_secs_f64());
    }

    /// Has a thread of its own build the filter of the idempotency records' keys.
    pub(super) fn build_filter(&mut self) {
        let path = self.dir.path().join(DB_FILE);
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("backchannel-filter".into())
            .spawn(move || {
                let built = build_filter(&path, &stopped)
                    .inspect_err(|e| {
                        if e.fault == Fault::Closing {
                            return;
                        }
                        tracing::warn!(
                            error = %e,
                            "cannot build the filter of idempotency records; every lookup reads the runs"
                        );
                    })
                    .ok();
                let _ = tx.send(built);
            });
        match spawned {
            Ok(thread) => {
                self.filter_build = Some(FilterBuild {
                    built: rx,
                    stop,
                    thread,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the thread that builds the filter of idempotency records");
                self.cache.requests.filter_built(None);
            }
        }
    }

    /// Installs the filter once it is built.
    pub(super) fn poll_filter(&mut self) {
        if let Some(f) = &self.filter_build {
            match f.built.try_recv() {
                Ok(built) => {
                    self.cache.requests.filter_built(built);
                    self.filter_build = None;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.cache.requests.filter_built(None);
                    self.filter_build = None;
                }
            }
        }
    }

    /// Empties the WAL into the database file on a clean stop.
    pub(super) fn shut(mut self) {
        if let Some(f) = self.filter_build.take() {
            f.stop.store(true, Ordering::Relaxed);
            if f.thread.join().is_err() {
                tracing::warn!("the thread building the filter of idempotency records panicked");
            }
        }
        // Readers finishing their last page may still need a moment.
        let _ = self.conn.busy_timeout(Duration::from_secs(5));
        if !self.dir.is_lost() {
            match self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    r.get::<_, i64>(0)
                }) {
                Ok(0) => {}
                Ok(_) => tracing::warn!("the WAL could not be emptied at stop (a reader was busy)"),
                Err(e) => tracing::warn!(error = %e, "the WAL could not be emptied at stop"),
            }
        }
        tracing::info!("writer stopped");
    }
}

impl crate::store::writer::Commit for Writer {
    type Done = (recent::StepDone, runs::Done);

    fn commit(
        &mut self,
        jobs: &[Job],
        now: Time,
        results: &mut Vec<Result<Outcome, Rejection>>,
        events: &mut Vec<crate::store::Committed>,
    ) -> Result<Self::Done, StoreError> {
        self.cache.trim();
        // The head (the tree's size) moves only with a commit.
        let mut tree = self.tree.clone();
        let done = self
            .commit_batch(jobs, &mut tree, now, results, events)
            .map_err(|e| refine(e, &self.dir))?;
        self.tree = tree;
        Ok(done)
    }

    fn committed(&mut self, (step, runs_done): Self::Done) {
        self.cache.requests.committed();
        if let recent::StepDone::Inserted {
            completed: Some((run, records)),
            ..
        } = step
        {
            self.cache.runs.added(run, records);
        }
        if let Some((merged, records, took)) = self.cache.runs.committed(runs_done) {
            tracing::info!(
                merged,
                records,
                ms = took.as_millis() as u64,
                live = self.cache.runs.live_count(),
                "runs of idempotency records merged"
            );
        }
        if let Some((moved, took)) = self.cache.requests.step_committed(step) {
            tracing::info!(
                moved,
                ms = took.as_millis() as u64,
                held = self.cache.requests.len(),
                live = self.cache.runs.live_count(),
                "recent idempotency records moved into a run"
            );
        }
        let runs = &mut self.cache.runs;
        self.cache.requests.start_move(|| runs.allocate());
    }

    fn failed(&mut self, _e: &StoreError) {
        // What the cache learned in the batch was not committed.
        self.cache.clear();
    }

    fn after_batch(&mut self, ok: bool) {
        if ok {
            self.bound_wal();
        }
        self.poll_filter();
    }

    fn close(self) {
        self.shut();
    }
}
