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

use std::collections::VecDeque;

use rusqlite::{Connection, OptionalExtension, params};

/// Runs of one tier merged into one of the next.
pub const FAN_IN: usize = 8;

/// Records copied, or rows of a dead run removed (neighbours, a handful of
/// pages), per step at most.
pub const STEP_MAX: usize = super::recent::MOVE_CHUNK;

/// Records a merge step copies in a batch of `requests` requests, with
/// `live` runs live: one per request while the runs are few (at least
/// [`super::recent::MOVE_MIN`]), so that a merge of the first tier takes
/// about as long as the next runs take to gather and its cost is spread
/// evenly over that time instead of coming in a burst; one more per
/// request for every [`FAN_IN`] runs beyond the first `FAN_IN`, so that
/// merges catch up when a large one made runs pile up.
pub fn merge_budget(requests: usize, live: usize) -> usize {
    let pace = 1 + live.saturating_sub(FAN_IN) / FAN_IN;
    requests
        .saturating_mul(pace)
        .clamp(super::recent::MOVE_MIN, STEP_MAX)
}

/// Records read from a source run at a time, while merging.
const REFILL: usize = 256;

/// A run being written: its records are still found where they came from.
const BUILDING: i64 = 0;
/// A run lookups read.
const LIVE: i64 = 1;
/// A run merged into another, its rows being removed.
const DEAD: i64 = 2;

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
struct Merge {
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

/// The tier of a run of `records`: the smallest `t` with `records` at most
/// twice `base · FAN_INᵗ`, so that a move's run is of tier 0 and a merge of
/// runs of tier `t` is of tier `t + 1`.
fn tier(records: i64, base: usize) -> u32 {
    let mut cap = (base.max(1) as i64).saturating_mul(2);
    let mut t = 0;
    while records > cap {
        cap = cap.saturating_mul(FAN_IN as i64);
        t += 1;
    }
    t
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(
            "CREATE TABLE requests (caller TEXT NOT NULL, method TEXT NOT NULL,
                 request_id TEXT NOT NULL, fingerprint BLOB NOT NULL, resource_id TEXT NOT NULL,
                 PRIMARY KEY (caller, method, request_id)) WITHOUT ROWID;",
        )
        .expect("schema");
        conn.execute_batch(include_str!(
            "../../migrations/sqlite/0005_request_runs.sql"
        ))
        .expect("migration");
        conn
    }

    /// Writes a complete run of `ids`, as a move would.
    fn write_run(conn: &Connection, runs: &mut Runs, ids: impl Iterator<Item = u32>) {
        let run = runs.allocate();
        move_started(conn, run).expect("listed");
        let mut n = 0;
        for id in ids {
            conn.execute(
                "INSERT INTO request_runs VALUES (?1, 'iran', 'SendMessage', ?2, x'00', ?3)",
                params![run, format!("{id:08}"), format!("r{id}")],
            )
            .expect("insert");
            n += 1;
        }
        move_ended(conn, run, n).expect("live");
        runs.added(run, n);
    }

    fn lookup(conn: &Connection, runs: &Runs, id: u32) -> Option<String> {
        find(
            conn,
            runs.live(),
            "iran",
            "SendMessage",
            &format!("{id:08}"),
        )
        .expect("find")
        .map(|(_, r)| r)
    }

    /// Steps inside transactions until idle; every third fails once
    /// (rolled back) before it is done again.
    fn run_steps(conn: &mut Connection, runs: &mut Runs, budget: usize) -> usize {
        let mut merges = 0;
        for attempt in 0.. {
            let tx = conn.transaction().expect("tx");
            let done = runs.step(&tx, budget + attempt % 7).expect("step");
            if done == Done::Idle {
                return merges;
            }
            if attempt % 3 == 0 {
                drop(tx);
                runs.rolled_back();
                continue;
            }
            tx.commit().expect("commit");
            merges += usize::from(runs.committed(done).is_some());
        }
        merges
    }

    #[test]
    fn runs_of_a_tier_merge_into_one_and_every_record_stays_found() {
        let mut conn = store();
        let mut runs = Runs::load(&conn, 10).expect("load");
        // Eight runs of ten, interleaved keys, and keys in two of them
        // (a move done again after a crash).
        for r in 0..FAN_IN as u32 {
            let twice = [1_000 + r, 1_000 + (r + 1) % FAN_IN as u32];
            write_run(&conn, &mut runs, (0..10).map(|i| i * 8 + r).chain(twice));
        }
        write_run(&conn, &mut runs, [1_000, 2_000].into_iter());
        assert_eq!(runs.live_count(), FAN_IN + 1);
        let merges = run_steps(&mut conn, &mut runs, 5);
        assert_eq!(merges, 1);
        assert_eq!(runs.live_count(), 2, "the eight merged into one");
        for id in (0..80).chain([1_000, 1_007, 2_000]) {
            assert!(lookup(&conn, &runs, id).is_some(), "{id} lost");
        }
        assert_eq!(lookup(&conn, &runs, 80), None);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM request_runs", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 88 + 2, "the merged runs' rows are removed");
        let listed: i64 = conn
            .query_row("SELECT count(*) FROM request_run_list", [], |r| r.get(0))
            .expect("count");
        assert_eq!(listed, 2);
        // In key order, so that the merged run's pages were appended.
        let merged: Vec<String> = conn
            .prepare("SELECT request_id FROM request_runs WHERE run = (SELECT max(run) FROM request_runs)")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(merged.len(), 88);
        let records: i64 = conn
            .query_row(
                "SELECT records FROM request_run_list ORDER BY run DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .expect("records");
        assert_eq!(records, 88);
    }

    #[test]
    fn a_run_half_written_at_start_is_removed_and_its_number_not_reused() {
        let mut conn = store();
        let mut runs = Runs::load(&conn, 10).expect("load");
        write_run(&conn, &mut runs, 0..5);
        // A move cut short by a crash: listed as being written.
        let run = runs.allocate();
        move_started(&conn, run).expect("listed");
        conn.execute(
            "INSERT INTO request_runs VALUES (?1, 'iran', 'SendMessage', '00000007', x'00', 'r7')",
            [run],
        )
        .expect("insert");
        let mut runs = Runs::load(&conn, 10).expect("load again");
        assert_eq!(runs.live().collect::<Vec<_>>(), vec![1]);
        assert!(runs.allocate() > run);
        run_steps(&mut conn, &mut runs, 3);
        let rows: i64 = conn
            .query_row(
                "SELECT count(*) FROM request_runs WHERE run = ?1",
                [run],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(rows, 0);
        assert!(lookup(&conn, &runs, 3).is_some());
    }

    #[test]
    fn the_old_index_becomes_the_first_run() {
        let conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(
            "CREATE TABLE requests (caller TEXT NOT NULL, method TEXT NOT NULL,
                 request_id TEXT NOT NULL, fingerprint BLOB NOT NULL, resource_id TEXT NOT NULL,
                 PRIMARY KEY (caller, method, request_id)) WITHOUT ROWID;
             INSERT INTO requests VALUES ('iran', 'SendMessage', '00000001', x'00', 'r1');",
        )
        .expect("old schema");
        conn.execute_batch(include_str!(
            "../../migrations/sqlite/0005_request_runs.sql"
        ))
        .expect("migration");
        let runs = Runs::load(&conn, 10).expect("load");
        assert_eq!(lookup(&conn, &runs, 1).as_deref(), Some("r1"));
    }

    #[test]
    fn a_merge_is_paced_by_its_batches() {
        assert_eq!(merge_budget(1, 9), super::super::recent::MOVE_MIN);
        assert_eq!(merge_budget(64, 9), 64);
        assert_eq!(merge_budget(64, 2 * FAN_IN + 3), 128, "catching up");
        assert_eq!(merge_budget(100_000, 9), STEP_MAX);
    }

    #[test]
    fn tiers_grow_by_the_fan_in() {
        assert_eq!(tier(1, 100), 0);
        assert_eq!(tier(200, 100), 0);
        assert_eq!(tier(800, 100), 1);
        assert_eq!(tier(1_600, 100), 1);
        assert_eq!(tier(6_400, 100), 2);
    }
}
