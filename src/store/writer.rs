//! The one writer loop of every backend: take what has queued (group
//! commit), commit it in one transaction, and only then publish the events
//! and answer the callers. A backend supplies the transaction and what it
//! keeps around it ([`Commit`]).

use tokio::sync::mpsc;

use super::error::{StoreError, WriteError};
use super::{Committed, Job, Publish, WriterState};
use crate::clock::Clock;
use crate::domain::{Outcome, Rejection, Time};

/// A backend's side of the writer.
pub trait Commit {
    /// What a successful commit leaves for [`Commit::committed`].
    type Done;

    /// Commits `jobs` in one transaction: each job's result into `results`
    /// (a refusal has written nothing), the events of the successful ones
    /// into `events`. `Ok` only once the transaction is durable; an `Err`
    /// has committed nothing.
    fn commit(
        &mut self,
        jobs: &[Job],
        now: Time,
        results: &mut Vec<Result<Outcome, Rejection>>,
        events: &mut Vec<Committed>,
    ) -> Result<Self::Done, StoreError>;

    /// After a durable commit, before its events are published.
    fn committed(&mut self, _done: Self::Done) {}

    /// After a commit failed (the batch committed nothing).
    fn failed(&mut self, _e: &StoreError) {}

    /// After a batch's callers were answered (`ok`: it committed).
    fn after_batch(&mut self, _ok: bool) {}

    /// When the writer stops, after its last batch.
    fn close(self);
}

/// Waits for the next job, then takes whatever else has queued, up to `max`,
/// into `jobs` (group commit). `false` once the queue is closed and empty.
pub fn next_batch(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>, max: usize) -> bool {
    let Some(first) = rx.blocking_recv() else {
        return false;
    };
    jobs.push(first);
    while jobs.len() < max {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
    true
}

/// Runs the writer on this thread until the queue closes or the store is
/// closing: batches of at most `max_batch` jobs, each committed by `backend`.
pub fn run<C: Commit>(
    mut backend: C,
    mut rx: mpsc::Receiver<Job>,
    publish: Publish,
    state: WriterState,
    clock: Clock,
    max_batch: usize,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    while next_batch(&mut rx, &mut jobs, max_batch) {
        let now = clock.now();
        let started = std::time::Instant::now();
        metrics::histogram!(crate::observe::WRITER_BATCH).record(jobs.len() as f64);
        let mut results = Vec::with_capacity(jobs.len());
        let mut events = Vec::new();
        let outcome = backend.commit(&jobs, now, &mut results, &mut events);
        metrics::histogram!(crate::observe::WRITER_COMMIT).record(started.elapsed().as_secs_f64());
        let ok = outcome.is_ok();
        match outcome {
            Ok(done) => {
                state.committed();
                backend.committed(done);
                publish(events);
                for (job, r) in jobs.drain(..).zip(results) {
                    let _ = job.reply.send(r.map_err(WriteError::Refused));
                }
            }
            Err(e) => {
                state.failed(&e);
                backend.failed(&e);
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(WriteError::Store(e.clone())));
                }
            }
        }
        backend.after_batch(ok);
        if state.closing() {
            break;
        }
    }
    // Whatever is still queued is refused (SHUTTING_DOWN) as `rx` drops.
    drop(rx);
    backend.close();
    tracing::info!("writer stopped");
}
