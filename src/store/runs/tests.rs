//! The runs' unit tests, on an in-memory database with the real migration:
//! merges that lose nothing, half-written runs, pacing and tiers.

use super::merge::tier;
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
        "../../../migrations/sqlite/0005_request_runs.sql"
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
        .prepare(
            "SELECT request_id FROM request_runs WHERE run = (SELECT max(run) FROM request_runs)",
        )
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
        "../../../migrations/sqlite/0005_request_runs.sql"
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
