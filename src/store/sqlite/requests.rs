//! The writer's idempotency records at start: the recent records it holds,
//! the step that moves them into a run, and the filter of every key.

use super::*;

/// Every record of `requests_recent`, for the writer to hold.
pub(super) fn recent_requests(conn: &Connection, move_at: usize) -> Result<Recent, StoreError> {
    let mut s = conn
        .prepare(
            "SELECT seq, caller, method, request_id, fingerprint, resource_id
             FROM requests_recent",
        )
        .map_err(db_err)?;
    let rows = s
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .map_err(db_err)?;
    let mut held = Recent::new(move_at);
    for row in rows {
        let (seq, caller, method, request_id, fingerprint, resource) = row.map_err(db_err)?;
        held.load(
            &caller,
            &method,
            Id::parse(&request_id).map_err(corrupt)?,
            recent::Record {
                fingerprint: fingerprint
                    .try_into()
                    .map_err(|_| corrupt("bad fingerprint"))?,
                resource: Id::parse(&resource).map_err(corrupt)?,
                row: seq,
            },
        );
    }
    Ok(held)
}

/// One step of moving the recent idempotency records into a run of their
/// own (see [`recent`] and [`runs`]), inside the batch's transaction, so
/// that it costs no commit of its own: the next `budget` records in key
/// order (see [`recent::move_budget`]), or, once all are there, the removal
/// of the next [`recent::MOVE_CHUNK`] of the move's own rows from
/// `requests_recent`.
pub(super) fn move_step(
    tx: &Connection,
    held: &mut Recent,
    budget: usize,
) -> Result<recent::StepDone, StoreError> {
    match held.step(budget) {
        recent::Step::Idle => Ok(recent::StepDone::Idle),
        recent::Step::Remove(rows) => {
            let mut s = tx
                .prepare_cached("DELETE FROM requests_recent WHERE seq = ?1")
                .map_err(db_err)?;
            for row in rows {
                s.execute([row]).map_err(db_err)?;
            }
            Ok(recent::StepDone::Removed)
        }
        recent::Step::Insert {
            run,
            entries,
            first,
            last,
            records,
        } => {
            if first {
                runs::move_started(tx, run).map_err(db_err)?;
            }
            let mut s = tx
                .prepare_cached(
                    "INSERT INTO request_runs (run, caller, method, request_id, fingerprint, resource_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                )
                .map_err(db_err)?;
            for e in &entries {
                s.execute(params![
                    run,
                    e.caller,
                    e.method,
                    e.request_id.to_string(),
                    &e.record.fingerprint[..],
                    e.record.resource.to_string()
                ])
                .map_err(db_err)?;
            }
            drop(s);
            let records = i64::try_from(records).map_err(corrupt)?;
            if last {
                runs::move_ended(tx, run, records).map_err(db_err)?;
            }
            Ok(recent::StepDone::Inserted {
                keys: held.chunk_written(budget),
                completed: last.then_some((run, records)),
            })
        }
    }
}

/// Builds the filter of the keys in `request_runs` (see [`recent`]) on a
/// connection of its own, a page of keys per read, so that no snapshot is
/// held for long (the writer's checkpoints wait for none). Keys the writer
/// moves meanwhile may be missed here: the writer adds those itself. (A
/// key in two runs, or in a dead one, only costs the filter room.)
pub(super) fn build_filter(path: &Path, stop: &AtomicBool) -> Result<recent::Keys, StoreError> {
    const PAGE: i64 = 10_000;
    let started = std::time::Instant::now();
    let conn = open(path)?;
    let count: i64 = conn
        .query_row("SELECT count(*) FROM request_runs", [], |r| r.get(0))
        .map_err(db_err)?;
    let mut filter = recent::Keys::new(usize::try_from(count).unwrap_or(0));
    type RunKey = (i64, String, String, String);
    let mut after: Option<RunKey> = None;
    let mut first = conn
        .prepare(
            "SELECT run, caller, method, request_id FROM request_runs
             ORDER BY run, caller, method, request_id LIMIT ?1",
        )
        .map_err(db_err)?;
    let mut next = conn
        .prepare(
            "SELECT run, caller, method, request_id FROM request_runs
             WHERE (run, caller, method, request_id) > (?1, ?2, ?3, ?4)
             ORDER BY run, caller, method, request_id LIMIT ?5",
        )
        .map_err(db_err)?;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(StoreError::new(Fault::Closing, "the store is closing"));
        }
        let row = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?));
        let page: Vec<RunKey> = match &after {
            None => first.query_map([PAGE], row),
            Some((run, c, m, id)) => next.query_map(params![run, c, m, id, PAGE], row),
        }
        .and_then(|rows| rows.collect())
        .map_err(db_err)?;
        for (_, caller, method, id) in &page {
            let id = Id::parse(id).map_err(corrupt)?;
            filter.insert(&recent::filter_item(caller, method, &id));
        }
        match page.into_iter().last() {
            Some(last) => after = Some(last),
            None => break,
        }
    }
    tracing::info!(
        keys = filter.len(),
        capacity = filter.capacity(),
        ms = started.elapsed().as_millis() as u64,
        "filter of idempotency records built"
    );
    Ok(filter)
}
