//! Merging: once [`FAN_IN`] live runs share a tier, they are merged into
//! one of the next, a chunk in each batch's commit, and the merged runs are
//! then removed; what a step did, and what its commit or rollback means.

use std::collections::VecDeque;

use rusqlite::{Connection, OptionalExtension, params};

use super::{BUILDING, DEAD, LIVE, Runs};
use crate::store::recent;

/// Runs of one tier merged into one of the next.
pub const FAN_IN: usize = 8;

/// Records copied, or rows of a dead run removed (neighbours, a handful of
/// pages), per step at most.
pub const STEP_MAX: usize = recent::MOVE_CHUNK;

/// Records a merge step copies in a batch of `requests` requests, with
/// `live` runs live: one per request while the runs are few (at least
/// [`recent::MOVE_MIN`]), so that a merge of the first tier takes
/// about as long as the next runs take to gather and its cost is spread
/// evenly over that time instead of coming in a burst; one more per
/// request for every [`FAN_IN`] runs beyond the first `FAN_IN`, so that
/// merges catch up when a large one made runs pile up.
pub fn merge_budget(requests: usize, live: usize) -> usize {
    let pace = 1 + live.saturating_sub(FAN_IN) / FAN_IN;
    requests
        .saturating_mul(pace)
        .clamp(recent::MOVE_MIN, STEP_MAX)
}

/// Records read from a source run at a time, while merging.
const REFILL: usize = 256;

/// A record's key, as `request_runs` stores and orders it (text compared
/// bytewise, as Rust compares strings).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    caller: String,
    method: String,
    request_id: String,
}

/// A record read from a run.
#[derive(Debug)]
struct Row {
    key: Key,
    fingerprint: Vec<u8>,
    resource_id: String,
}

/// A run being merged, read in key order.
#[derive(Debug)]
struct Source {
    run: i64,
    /// Read ahead, not yet copied.
    buf: VecDeque<Row>,
    /// The last key read into `buf`.
    read: Option<Key>,
    /// Nothing after `read`.
    exhausted: bool,
}

#[derive(Debug)]
pub(super) struct Merge {
    target: i64,
    sources: Vec<Source>,
    /// The last key copied by a committed step, and the records copied.
    copied: Option<Key>,
    records: i64,
    /// The same, by the step not yet committed.
    pending: Option<Key>,
    pending_records: i64,
    /// Its run is in `request_run_list` (being written).
    listed: bool,
    started: std::time::Instant,
}

/// What a step did, for [`Runs::committed`] once its transaction commits.
#[derive(Debug, PartialEq, Eq)]
pub enum Done {
    /// Nothing.
    Idle,
    /// Copied records into the merge's run.
    Copied,
    /// Finished the merge: its run is live, its sources dead.
    Merged,
    /// Removed rows of a dead run; `all`: the last, and its entry.
    Removed { run: i64, all: bool },
}

/// The tier of a run of `records`: the smallest `t` with `records` at most
/// twice `base · FAN_INᵗ`, so that a move's run is of tier 0 and a merge of
/// runs of tier `t` is of tier `t + 1`.
pub(super) fn tier(records: i64, base: usize) -> u32 {
    let mut cap = (base.max(1) as i64).saturating_mul(2);
    let mut t = 0;
    while records > cap {
        cap = cap.saturating_mul(FAN_IN as i64);
        t += 1;
    }
    t
}

impl Runs {
    /// One step of keeping the runs few, inside the batch's transaction:
    /// removes up to [`STEP_MAX`] rows of a dead run, or copies up to
    /// `budget` records into the run of a merge (starting one when
    /// `FAN_IN` runs of a tier are live).
    pub fn step(&mut self, tx: &Connection, budget: usize) -> rusqlite::Result<Done> {
        let budget = budget.max(1);
        if let Some(&run) = self.dead.first() {
            return remove_step(tx, run, STEP_MAX);
        }
        if self.merge.is_none() {
            self.plan();
        }
        let Some(m) = self.merge.as_mut() else {
            return Ok(Done::Idle);
        };
        if !m.listed {
            tx.execute(
                "INSERT INTO request_run_list (run, state, records) VALUES (?1, ?2, 0)
                 ON CONFLICT (run) DO NOTHING",
                [m.target, BUILDING],
            )?;
        }
        let mut insert = tx.prepare_cached(
            "INSERT INTO request_runs (run, caller, method, request_id, fingerprint, resource_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
        )?;
        let mut copied = 0;
        while copied < budget {
            for s in m.sources.iter_mut() {
                if s.buf.is_empty() && !s.exhausted {
                    refill(tx, s)?;
                }
            }
            let next = m
                .sources
                .iter()
                .enumerate()
                .filter_map(|(i, s)| Some((i, &s.buf.front()?.key)))
                .min_by(|a, b| a.1.cmp(b.1))
                .map(|(i, _)| i);
            let Some(i) = next else { break };
            let Some(row) = m.sources[i].buf.pop_front() else {
                break;
            };
            m.pending_records += insert.execute(params![
                m.target,
                row.key.caller,
                row.key.method,
                row.key.request_id,
                row.fingerprint,
                row.resource_id
            ])? as i64;
            m.pending = Some(row.key);
            copied += 1;
        }
        drop(insert);
        let done = m.sources.iter().all(|s| s.exhausted && s.buf.is_empty());
        if !done {
            return Ok(Done::Copied);
        }
        tx.execute(
            "UPDATE request_run_list SET state = ?1, records = ?2 WHERE run = ?3",
            params![LIVE, m.pending_records, m.target],
        )?;
        for s in &m.sources {
            tx.execute(
                "UPDATE request_run_list SET state = ?1 WHERE run = ?2",
                [DEAD, s.run],
            )?;
        }
        Ok(Done::Merged)
    }

    /// Starts a merge if `FAN_IN` live runs share a tier (the oldest of
    /// the lowest such tier).
    fn plan(&mut self) {
        let mut tiers: Vec<(u32, i64)> = self
            .live
            .iter()
            .map(|&(run, records)| (tier(records, self.base), run))
            .collect();
        tiers.sort_unstable();
        let Some(chosen) = tiers
            .chunk_by(|a, b| a.0 == b.0)
            .find(|group| group.len() >= FAN_IN)
            .map(|group| {
                group[..FAN_IN]
                    .iter()
                    .map(|&(_, run)| run)
                    .collect::<Vec<_>>()
            })
        else {
            return;
        };
        let target = self.allocate();
        self.merge = Some(Merge {
            target,
            sources: chosen
                .into_iter()
                .map(|run| Source {
                    run,
                    buf: VecDeque::new(),
                    read: None,
                    exhausted: false,
                })
                .collect(),
            copied: None,
            records: 0,
            pending: None,
            pending_records: 0,
            listed: false,
            started: std::time::Instant::now(),
        });
    }

    /// The step's transaction committed. Returns, when a merge ended, how
    /// many runs it merged, the records of its run and how long it took.
    pub fn committed(&mut self, done: Done) -> Option<(usize, i64, std::time::Duration)> {
        match done {
            Done::Idle => None,
            Done::Copied => {
                if let Some(m) = self.merge.as_mut() {
                    m.listed = true;
                    m.copied = m.pending.clone();
                    m.records = m.pending_records;
                }
                None
            }
            Done::Merged => {
                let m = self.merge.take()?;
                let merged: Vec<i64> = m.sources.iter().map(|s| s.run).collect();
                self.live.retain(|(run, _)| !merged.contains(run));
                self.live.push((m.target, m.pending_records));
                self.live.sort_unstable();
                self.dead.extend(&merged);
                Some((merged.len(), m.pending_records, m.started.elapsed()))
            }
            Done::Removed { run, all } => {
                if all {
                    self.dead.retain(|r| *r != run);
                }
                None
            }
        }
    }

    /// The step's transaction did not commit: the merge reads again from
    /// where its last committed step left off.
    pub fn rolled_back(&mut self) {
        if let Some(m) = self.merge.as_mut() {
            m.pending = m.copied.clone();
            m.pending_records = m.records;
            for s in &mut m.sources {
                s.buf.clear();
                s.read = m.copied.clone();
                s.exhausted = false;
            }
        }
    }
}

/// Reads the next records of a source run into its buffer.
fn refill(tx: &Connection, s: &mut Source) -> rusqlite::Result<()> {
    let row = |r: &rusqlite::Row<'_>| {
        Ok(Row {
            key: Key {
                caller: r.get(0)?,
                method: r.get(1)?,
                request_id: r.get(2)?,
            },
            fingerprint: r.get(3)?,
            resource_id: r.get(4)?,
        })
    };
    let rows: Vec<Row> = match &s.read {
        None => tx
            .prepare_cached(
                "SELECT caller, method, request_id, fingerprint, resource_id FROM request_runs
                 WHERE run = ?1 ORDER BY caller, method, request_id LIMIT ?2",
            )?
            .query_map(params![s.run, REFILL as i64], row)?
            .collect::<rusqlite::Result<_>>()?,
        Some(k) => tx
            .prepare_cached(
                "SELECT caller, method, request_id, fingerprint, resource_id FROM request_runs
                 WHERE run = ?1 AND (caller, method, request_id) > (?2, ?3, ?4)
                 ORDER BY caller, method, request_id LIMIT ?5",
            )?
            .query_map(
                params![s.run, k.caller, k.method, k.request_id, REFILL as i64],
                row,
            )?
            .collect::<rusqlite::Result<_>>()?,
    };
    s.exhausted = rows.len() < REFILL;
    if let Some(last) = rows.last() {
        s.read = Some(last.key.clone());
    }
    s.buf.extend(rows);
    Ok(())
}

/// Removes up to `budget` rows of a dead run, in key order; once none is
/// left, its entry too.
fn remove_step(tx: &Connection, run: i64, budget: usize) -> rusqlite::Result<Done> {
    let upto: Option<(String, String, String)> = tx
        .prepare_cached(
            "SELECT caller, method, request_id FROM request_runs WHERE run = ?1
             ORDER BY caller, method, request_id LIMIT 1 OFFSET ?2",
        )?
        .query_row(params![run, budget as i64 - 1], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    match upto {
        Some((caller, method, request_id)) => {
            tx.prepare_cached(
                "DELETE FROM request_runs
                 WHERE run = ?1 AND (caller, method, request_id) <= (?2, ?3, ?4)",
            )?
            .execute(params![run, caller, method, request_id])?;
            Ok(Done::Removed { run, all: false })
        }
        None => {
            tx.prepare_cached("DELETE FROM request_runs WHERE run = ?1")?
                .execute([run])?;
            tx.prepare_cached("DELETE FROM request_run_list WHERE run = ?1")?
                .execute([run])?;
            Ok(Done::Removed { run, all: true })
        }
    }
}
