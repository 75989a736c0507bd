//! The recent records' unit tests: batches that commit or not, moves, the
//! filter, and the bound on what is held.

use super::*;

fn id(n: u128) -> Id {
    Id(uuid::Uuid::from_u128(n))
}

fn record(row: i64) -> Record {
    Record {
        fingerprint: [0; 32],
        resource: id(row as u128),
        row,
    }
}

const SEND: &str = "SendMessage";

#[test]
fn a_batch_that_does_not_commit_leaves_no_record() {
    let mut r = Recent::new(10);
    r.load("iran", SEND, id(1), record(1));
    r.insert("iran", SEND, id(2), record(2));
    assert!(
        r.get("iran", SEND, id(2)).is_some(),
        "a batch sees its own records"
    );
    assert!(
        r.get("france", SEND, id(2)).is_none(),
        "scoped to the caller"
    );
    assert!(
        r.get("iran", "AcceptMessage", id(2)).is_none(),
        "and the method"
    );
    r.rolled_back();
    assert!(r.get("iran", SEND, id(2)).is_none());
    assert!(r.get("iran", SEND, id(1)).is_some());
    r.insert("iran", SEND, id(3), record(2));
    r.committed();
    r.rolled_back();
    assert!(r.get("iran", SEND, id(3)).is_some());
}

/// The budget of a move's step number `step`: varied, as batches vary,
/// from none to more than a chunk.
fn budget(step: usize) -> usize {
    (step * 389) % (MOVE_CHUNK + 200)
}

/// Runs the move under way to its end, as the writer would, one step
/// per commit, with `during` called after each; returns the keys
/// inserted and the rows removed, in order.
fn run_move(
    r: &mut Recent,
    mut during: impl FnMut(&mut Recent, usize),
) -> (Vec<(String, Id)>, Vec<i64>) {
    let (mut inserted, mut removed) = (Vec::new(), Vec::new());
    let mut step = 0;
    while r.moving() {
        let b = budget(step);
        let done = match r.step(b) {
            Step::Idle => StepDone::Idle,
            Step::Insert { entries: chunk, .. } => {
                assert!(!chunk.is_empty() && chunk.len() <= b.clamp(1, MOVE_CHUNK));
                let n = chunk.len();
                inserted.extend(chunk.iter().map(|e| (e.caller.to_string(), e.request_id)));
                assert_eq!(r.chunk_written(b), n);
                StepDone::Inserted {
                    keys: n,
                    completed: None,
                }
            }
            Step::Remove(rows) => {
                assert!(rows.len() <= MOVE_CHUNK);
                removed.extend_from_slice(rows);
                StepDone::Removed
            }
        };
        r.step_committed(done);
        during(r, step);
        step += 1;
    }
    (inserted, removed)
}

#[test]
fn a_move_goes_in_key_order_and_keeps_what_came_during_it() {
    const AT: usize = 10_000;
    let mut r = Recent::new(AT);
    r.start_move(|| 1);
    assert!(!r.moving());
    // Inserted in a scrambled order, by two callers.
    for i in 0..AT as u128 {
        let n = (i * 7_919) % AT as u128;
        let caller = if n.is_multiple_of(3) {
            "united-states"
        } else {
            "iran"
        };
        r.insert(caller, SEND, id(n), record(i as i64 + 1));
    }
    r.committed();
    r.start_move(|| 1);
    assert!(r.moving());
    // A record that arrives meanwhile is not part of this move.
    let (moved, rows) = run_move(&mut r, |r, step| {
        r.insert(
            "iran",
            SEND,
            id(u128::MAX - step as u128),
            record(1_000_000 + step as i64),
        );
        r.committed();
    });
    assert_eq!(moved.len(), AT);
    assert!(moved.windows(2).all(|w| w[0] < w[1]), "in key order");
    assert_eq!(moved[0].0, "iran");
    assert_eq!(
        rows,
        (1..=AT as i64).collect::<Vec<_>>(),
        "exactly its own rows"
    );
    let inserting = (0..)
        .scan(0, |done, step| {
            (*done < AT).then(|| *done += budget(step).clamp(1, MOVE_CHUNK))
        })
        .count();
    assert_eq!(r.len(), inserting + AT.div_ceil(MOVE_CHUNK));
    assert!(r.get("iran", SEND, id(u128::MAX)).is_some());
    assert!(
        r.get("iran", SEND, id(1)).is_none(),
        "moved records are forgotten"
    );
}

#[test]
fn a_move_never_takes_the_records_of_a_batch_that_has_not_committed() {
    let mut r = Recent::new(4);
    for n in 0..3 {
        r.insert("iran", SEND, id(n), record(n as i64 + 1));
    }
    r.committed();
    // The fourth arrives in a batch that then fails: no move starts
    // from it, and its row (4) may be handed out again.
    r.insert("iran", SEND, id(3), record(4));
    r.start_move(|| 1);
    assert!(!r.moving());
    r.rolled_back();
    r.start_move(|| 1);
    assert!(!r.moving());
    r.insert("iran", SEND, id(9), record(4));
    r.committed();
    r.start_move(|| 1);
    let (moved, rows) = run_move(&mut r, |_, _| {});
    assert_eq!(rows, vec![1, 2, 3, 4]);
    assert!(moved.contains(&("iran".to_string(), id(9))));
    assert!(!moved.contains(&("iran".to_string(), id(3))));
}

#[test]
fn the_filter_never_misses_a_key_moved_while_it_was_built() {
    let mut r = Recent::new(8);
    assert!(
        r.may_be_indexed("iran", SEND, id(1)),
        "not built yet: ask the index"
    );
    for n in 0..8 {
        r.insert("iran", SEND, id(n), record(n as i64 + 1));
    }
    r.committed();
    // Moved while the filter is being built.
    r.start_move(|| 1);
    assert!(matches!(r.step(MOVE_CHUNK), Step::Insert { .. }));
    let n = r.chunk_written(MOVE_CHUNK);
    assert_eq!(n, 8);
    r.step_committed(StepDone::Inserted {
        keys: n,
        completed: None,
    });
    // Built from runs that hold id(100) only.
    let mut keys = Keys::new(1);
    keys.insert(&filter_item("iran", SEND, &id(100)));
    r.filter_built(Some(keys));
    assert!(r.filter_ready());
    for n in (0..8).chain([100]) {
        assert!(r.may_be_indexed("iran", SEND, id(n)), "key {n} missed");
    }
    let fresh = (1_000..11_000)
        .filter(|n| r.may_be_indexed("iran", SEND, id(*n)))
        .count();
    assert!(fresh < 300, "{fresh} of 10,000 fresh ids not filtered out");
}

#[test]
fn a_full_filter_grows_and_keeps_its_false_positives_low() {
    let mut keys = Keys::with_capacity(100);
    for n in 0..10_000u128 {
        keys.insert(&filter_item("iran", SEND, &id(n)));
    }
    assert_eq!(keys.len(), 10_000);
    assert!(keys.capacity() >= 10_000, "it grew");
    for n in 0..10_000u128 {
        assert!(
            keys.contains(&filter_item("iran", SEND, &id(n))),
            "key {n} missed"
        );
    }
    let fresh = (1_000_000..1_100_000u128)
        .filter(|n| keys.contains(&filter_item("iran", SEND, &id(*n))))
        .count();
    assert!(
        fresh < 2_000,
        "{fresh} of 100,000 fresh ids not filtered out (2 % at most)"
    );
}

/// Batches of `j` new records each, as the writer runs them, for
/// twenty moves: the records held never pass twice the threshold.
#[test]
fn under_sustained_writes_the_records_held_stay_bounded() {
    const AT: usize = 4_096;
    for j in [1usize, 25, 64, 128] {
        let mut r = Recent::new(AT);
        let (mut next, mut moves, mut most) = (0u128, 0, 0);
        while moves < 20 {
            for _ in 0..j {
                r.insert("iran", SEND, id(next), record(next as i64 + 1));
                next += 1;
            }
            let b = move_budget(j);
            let done = match r.step(b) {
                Step::Idle => StepDone::Idle,
                Step::Insert { .. } => StepDone::Inserted {
                    keys: r.chunk_written(b),
                    completed: None,
                },
                Step::Remove(_) => StepDone::Removed,
            };
            r.committed();
            moves += usize::from(r.step_committed(done).is_some());
            r.start_move(|| 1);
            most = most.max(r.len());
        }
        assert!(
            most <= 2 * AT + 2 * MOVE_MIN.max(j),
            "batches of {j}: {most} records held at once (threshold {AT})"
        );
    }
}

#[test]
fn a_move_is_paced_by_its_batches() {
    assert_eq!(move_budget(1), MOVE_MIN);
    assert_eq!(move_budget(64), 80);
    assert_eq!(move_budget(100_000), MOVE_CHUNK);
}

#[test]
fn key_order_is_the_order_of_the_stored_text() {
    let mut ids: Vec<Id> = (0..1000).map(|_| Id::new()).collect();
    ids.push(id(u128::MAX));
    ids.push(id(0));
    let mut by_text = ids.clone();
    by_text.sort_by_key(|i| i.to_string());
    ids.sort();
    assert_eq!(ids, by_text);
}
