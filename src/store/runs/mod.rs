//! The embedded store's idempotency records, in sorted runs.
//!
//! A client's `request_id` is a random UUID, so one B-tree keyed by it
//! takes every new record at a random leaf. Moving records into it in key
//! order, many at a time (see [`super::recent`]), spared most of that while
//! it was small, but the more records it held, the fewer of a move's shared
//! a leaf: on this machine, sends with a `request_id` lost a tenth of their
//! speed in a minute as it grew from none to a million records, heading for
//! a dirtied page (4 KiB written twice) per record (docs/PERFORMANCE.md).
//!
//! So each move writes its records as a *run* of their own, in key order:
//! `request_runs` is keyed by the run's number first, so a move only ever
//! appends, filling each page it writes once. A lookup that the filter of
//! keys cannot answer reads each live run, newest first. To keep those few,
//! [`FAN_IN`] runs of like size are merged into one, a chunk in each
//! batch's commit like a move, and the merged ones are then removed, so a
//! record is rewritten once per tier (about `log₈(records / move size)`
//! times), always by appending.
//!
//! Nothing here is lost to a crash: a run is only read once it is complete
//! (its records are found where they came from until then), a merge makes
//! its run live and its sources dead in one commit, and a run found half
//! written at start is removed (what it held is still where it came from).
//!
//! Here are the runs as the writer keeps them, the list entries a move
//! writes, and the lookups; `merge.rs` holds the merging of runs and the
//! removal of the merged ones.

use rusqlite::{Connection, OptionalExtension, params};

mod merge;
#[cfg(test)]
mod tests;

use merge::Merge;
pub use merge::{Done, FAN_IN, STEP_MAX, merge_budget};

/// A run being written: its records are still found where they came from.
const BUILDING: i64 = 0;
/// A run lookups read.
const LIVE: i64 = 1;
/// A run merged into another, its rows being removed.
const DEAD: i64 = 2;

/// The runs, as the writer keeps track of them.
#[derive(Debug)]
pub struct Runs {
    /// The records of a move (tier 0).
    base: usize,
    /// Live runs and their records, oldest first.
    live: Vec<(i64, i64)>,
    /// Runs whose rows are to be removed.
    dead: Vec<i64>,
    next: i64,
    merge: Option<Merge>,
}

impl Default for Runs {
    fn default() -> Runs {
        Runs {
            base: super::recent::DEFAULT_MOVE_AT,
            live: Vec::new(),
            dead: Vec::new(),
            next: 1,
            merge: None,
        }
    }
}

impl Runs {
    /// The runs `request_run_list` lists; a run found half written (a move
    /// or a merge a crash interrupted) is taken as dead, to be removed. It
    /// writes nothing: a server on a full disk must still start.
    pub fn load(conn: &Connection, base: usize) -> rusqlite::Result<Runs> {
        let mut runs = Runs {
            base: base.max(1),
            ..Runs::default()
        };
        let mut s =
            conn.prepare("SELECT run, state, records FROM request_run_list ORDER BY run")?;
        let rows = s.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (run, state, records) = row?;
            if state == LIVE {
                runs.live.push((run, records));
            } else {
                runs.dead.push(run);
            }
        }
        let highest: Option<i64> = conn.query_row(
            "SELECT max(m) FROM (SELECT max(run) AS m FROM request_run_list
                                 UNION ALL SELECT max(run) FROM request_runs)",
            [],
            |r| r.get(0),
        )?;
        runs.next = highest.unwrap_or(0) + 1;
        Ok(runs)
    }

    /// A number for a new run.
    pub fn allocate(&mut self) -> i64 {
        let n = self.next;
        self.next += 1;
        n
    }

    /// A move's run is live (committed).
    pub fn added(&mut self, run: i64, records: i64) {
        self.live.push((run, records));
    }

    /// The live runs, newest first: where a lookup reads.
    pub fn live(&self) -> impl Iterator<Item = i64> + '_ {
        self.live.iter().rev().map(|(run, _)| *run)
    }

    /// How many runs are live.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }
}

/// A record's fingerprint and resource from the live runs, newest first.
pub fn find(
    conn: &Connection,
    live: impl Iterator<Item = i64>,
    caller: &str,
    method: &str,
    request_id: &str,
) -> rusqlite::Result<Option<(Vec<u8>, String)>> {
    let mut s = conn.prepare_cached(
        "SELECT fingerprint, resource_id FROM request_runs
         WHERE run = ?1 AND caller = ?2 AND method = ?3 AND request_id = ?4",
    )?;
    for run in live {
        let found = s
            .query_row(params![run, caller, method, request_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// The live runs as `request_run_list` lists them, newest first (for a
/// lookup outside the writer, which keeps its own list).
pub fn listed(conn: &Connection) -> rusqlite::Result<Vec<i64>> {
    conn.prepare_cached("SELECT run FROM request_run_list WHERE state = ?1 ORDER BY run DESC")?
        .query_map([LIVE], |r| r.get(0))?
        .collect()
}

/// The list entry of a move's run, written by its first step.
pub fn move_started(tx: &Connection, run: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO request_run_list (run, state, records) VALUES (?1, ?2, 0)
         ON CONFLICT (run) DO NOTHING",
    )?
    .execute([run, BUILDING])?;
    Ok(())
}

/// A move's run is complete: lookups may read it.
pub fn move_ended(tx: &Connection, run: i64, records: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE request_run_list SET state = ?1, records = ?2 WHERE run = ?3")?
        .execute([LIVE, records, run])?;
    Ok(())
}
