//! Opening checks and migrations: the schema brought up to date, and the
//! log verified against its leaf hashes before it is served.

use super::*;

/// Verifies the leaf hashes of the newest `newest` events and of
/// [`STARTUP_CHECK_SAMPLE`] events spread over the rest, and that the log
/// has no gap. Refuses to serve a damaged store.
pub(super) fn integrity_check(conn: &Connection, head: u64, newest: u64) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let count: i64 = conn
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .map_err(db_err)?;
    let damaged = |what: String| {
        StoreError::new(
            Fault::Corrupt,
            format!(
                "the store in this data directory is damaged: {what}. It is not served. \
                 Stop here, keep the damaged directory for inspection, and restore the \
                 latest backup (see the README, \"Backup and restore\")"
            ),
        )
    };
    if u64::try_from(count).ok() != Some(head) {
        return Err(damaged(format!(
            "the log holds {count} events but its last sequence is {head} (events are missing)"
        )));
    }
    let mut checked = 0u64;
    let mut verify = |seq: i64, data: Vec<u8>, hash: Option<Vec<u8>>| -> Result<(), StoreError> {
        if hash.as_deref() != Some(&leaf_hash(&data)[..]) {
            tracing::error!(sequence = seq, "event failed its integrity check at start");
            return Err(damaged(format!(
                "event #{seq} does not match its leaf hash"
            )));
        }
        checked += 1;
        Ok(())
    };
    // The newest events, in one range scan.
    let recent_from = head.saturating_sub(newest) + 1;
    {
        let mut s = conn
            .prepare("SELECT seq, data, leaf_hash FROM events WHERE seq >= ?1 ORDER BY seq")
            .map_err(db_err)?;
        let mut rows = s.query([query::int(recent_from)?]).map_err(db_err)?;
        while let Some(r) = rows.next().map_err(db_err)? {
            verify(
                r.get(0).map_err(db_err)?,
                r.get(1).map_err(db_err)?,
                r.get(2).map_err(db_err)?,
            )?;
        }
    }
    // A sample of the older ones, each looked up by its sequence: the cost
    // does not grow with the log.
    let older = recent_from.saturating_sub(1);
    if older > 0 && newest > 0 {
        let step = (older / STARTUP_CHECK_SAMPLE).max(1);
        let mut s = conn
            .prepare("SELECT seq, data, leaf_hash FROM events WHERE seq = ?1")
            .map_err(db_err)?;
        let mut seq = step;
        while seq <= older {
            let row: Option<(i64, Vec<u8>, Option<Vec<u8>>)> = s
                .query_row([query::int(seq)?], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
                .map_err(db_err)?;
            match row {
                Some((seq, data, hash)) => verify(seq, data, hash)?,
                None => {
                    return Err(damaged(format!("event #{seq} is missing from the log")));
                }
            }
            seq += step;
        }
    }
    tracing::info!(
        events = head,
        checked,
        ms = started.elapsed().as_millis() as u64,
        "start-up integrity check passed"
    );
    Ok(())
}

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(db_err)?;
    for i in crate::store::schema::pending(applied, MIGRATIONS.len())? {
        let m = &MIGRATIONS[i];
        let tx = conn.transaction().map_err(db_err)?;
        match m {
            Migration::Sql(sql) => tx.execute_batch(sql).map_err(db_err)?,
            Migration::LeafHashes(sql) => {
                tx.execute_batch(sql).map_err(db_err)?;
                fill_leaf_hashes(&tx)?;
            }
            Migration::Tree(sql) => {
                tx.execute_batch(sql).map_err(db_err)?;
                build_tree(&tx)?;
            }
        }
        tx.pragma_update(None, "user_version", i + 1)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::info!(version = i + 1, "applied schema migration");
    }
    let key: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = 'page_key'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(db_err)?;
    if key.is_none() {
        let k = crate::store::schema::new_page_key()?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('page_key', ?1)",
            [&k[..]],
        )
        .map_err(db_err)?;
    }
    // The log's id, made once with the store (it names the log in
    // checkpoints by default).
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('log_id', ?1) ON CONFLICT (key) DO NOTHING",
        [crate::domain::Id::new().to_string().into_bytes()],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Builds the log's Merkle tree over the events stored before schema
/// version 6, with a progress line every 100,000 events.
pub(super) fn build_tree(tx: &Connection) -> Result<(), StoreError> {
    let total = super::head(tx)?;
    if total == 0 {
        return Ok(());
    }
    tracing::info!(events = total, "building the log's Merkle tree");
    let mut tree = crate::audit::merkle::Frontier::default();
    loop {
        let after = tx::i64_of(tree.size())?;
        let batch: Vec<(i64, Option<Vec<u8>>)> = tx
            .prepare_cached(
                "SELECT seq, leaf_hash FROM events WHERE seq > ?1 ORDER BY seq LIMIT 10000",
            )
            .and_then(|mut s| {
                s.query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(db_err)?;
        if batch.is_empty() {
            break;
        }
        let mut insert = tx
            .prepare_cached("INSERT INTO tree_nodes (last_leaf, level, hash) VALUES (?1, ?2, ?3)")
            .map_err(db_err)?;
        for (seq, hash) in batch {
            if u64::try_from(seq).ok() != Some(tree.size() + 1) {
                return Err(corrupt(format!(
                    "the log has no event {} (the next is {seq})",
                    tree.size() + 1
                )));
            }
            let hash: [u8; 32] = hash
                .as_deref()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| corrupt(format!("event {seq} has no leaf hash")))?;
            let done = tree.push(hash);
            for (last, level, h) in crate::store::tree::rows_of(&done) {
                insert
                    .execute(params![tx::i64_of(last)?, level, &h[..]])
                    .map_err(db_err)?;
            }
        }
        if tree.size() % 100_000 < 10_000 {
            tracing::info!(done = tree.size(), total, "building the log's Merkle tree");
        }
    }
    Ok(())
}

/// Computes the leaf hash of every event that has none (a store made before
/// schema version 2), with a progress line every 100,000 events.
pub(super) fn fill_leaf_hashes(tx: &Connection) -> Result<(), StoreError> {
    let total: i64 = tx
        .query_row(
            "SELECT COUNT(*) FROM events WHERE leaf_hash IS NULL",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    if total == 0 {
        return Ok(());
    }
    tracing::info!(
        events = total,
        "computing the leaf hash of every stored event"
    );
    let mut after = 0i64;
    let mut done = 0i64;
    loop {
        let batch: Vec<(i64, Vec<u8>)> = tx
            .prepare_cached("SELECT seq, data FROM events WHERE seq > ?1 ORDER BY seq LIMIT 10000")
            .and_then(|mut s| {
                s.query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(db_err)?;
        let Some(last) = batch.last().map(|(seq, _)| *seq) else {
            break;
        };
        let mut update = tx
            .prepare_cached("UPDATE events SET leaf_hash = ?2 WHERE seq = ?1")
            .map_err(db_err)?;
        for (seq, data) in &batch {
            update
                .execute(params![seq, &leaf_hash(data)[..]])
                .map_err(db_err)?;
        }
        done += batch.len() as i64;
        if done % 100_000 < 10_000 {
            tracing::info!(done, total, "leaf hashes computed");
        }
        after = last;
    }
    Ok(())
}
