//! The writer: its connection, re-established after the database goes
//! away, and its batch under the `log_head` lock.

use super::*;

/// The writer: like the embedded store's, plus the `log_head` lock that
/// orders every replica's appends, and a connection re-established after
/// the database goes away.
pub(super) struct PgWriter {
    pub(super) cfg: postgres::Config,
    pub(super) conn: Option<postgres::Client>,
    pub(super) stmts: HashMap<String, postgres::Statement>,
    /// The log's Merkle tree as this writer last committed it: still the
    /// right edge while no other replica has appended since (the head under
    /// the lock is its size), else read again.
    pub(super) tree: Option<Frontier>,
}

impl crate::store::writer::Commit for PgWriter {
    type Done = ();

    fn commit(
        &mut self,
        jobs: &[Job],
        now: Time,
        results: &mut Vec<Result<Outcome, Rejection>>,
        events: &mut Vec<crate::store::Committed>,
    ) -> Result<(), StoreError> {
        let client = match &mut self.conn {
            Some(c) if !c.is_closed() => c,
            _ => {
                self.stmts.clear();
                let c = self
                    .cfg
                    .connect(postgres::NoTls)
                    .and_then(keyed_plans)
                    .map_err(|e| unavailable(pg_cause(&e)))?;
                self.conn.insert(c)
            }
        };
        let tree = commit_batch(
            client,
            &mut self.stmts,
            self.tree.take(),
            jobs,
            now,
            results,
            events,
        )?;
        self.tree = tree;
        Ok(())
    }

    fn failed(&mut self, e: &StoreError) {
        if e.fault == Fault::Unavailable || self.conn.as_ref().is_some_and(|c| c.is_closed()) {
            self.conn = None;
        }
    }

    fn close(self) {}
}

/// Every statement of the writer finds its rows by key, the batch's
/// statements over arrays too (`unnest` joined to a table's key). Given a
/// few hundred keys, the planner chose to hash the keys and scan the whole
/// table instead, so each batch got slower as the table grew (sends fell
/// from 4,600/s to under 1,000/s within 300,000 messages). On the writer's
/// connection joins are nested loops over the index.
pub(super) fn keyed_plans(mut c: postgres::Client) -> Result<postgres::Client, postgres::Error> {
    c.batch_execute("SET enable_hashjoin = off; SET enable_mergejoin = off")?;
    Ok(c)
}

/// Commits `jobs` in one transaction, appending to `tree` if it is still
/// the log's right edge; returns the tree as committed (`None` for a batch
/// of probes alone, which appends nothing and takes no lock).
pub(super) fn commit_batch(
    client: &mut postgres::Client,
    stmts: &mut HashMap<String, postgres::Statement>,
    tree: Option<Frontier>,
    jobs: &[Job],
    now: Time,
    results: &mut Vec<Result<Outcome, Rejection>>,
    events: &mut Vec<crate::store::Committed>,
) -> Result<Option<Frontier>, StoreError> {
    let mut tx = client.transaction().map_err(pg_err)?;
    // A batch of health probes appends nothing and decides nothing on what
    // it reads: it leaves the other replicas' lock alone (its one row,
    // `meta.write_probe`, is locked by nothing else, so it cannot deadlock
    // with an ordered batch). Every other batch takes the lock first, so
    // the writers of all replicas lock rows in one order.
    let ordered = jobs.iter().any(|j| !matches!(j.command, Command::Probe));
    let mut head = 0;
    if ordered {
        let h: i64 = tx
            .query_one("SELECT head FROM log_head FOR UPDATE", &[])
            .map_err(pg_err)?
            .get(0);
        head = u64::try_from(h).map_err(corrupt)?;
    }
    let mut wt = PgTx {
        tx: &mut tx,
        stmts: &mut *stmts,
        channels: HashMap::new(),
        deferred: Deferred::default(),
        known_requests: HashMap::new(),
    };
    let mut tree = match tree {
        Some(t) if t.size() == head => t,
        _ if !ordered => Frontier::default(),
        _ => crate::store::tree::frontier(&mut wt, head)?,
    };
    wt.load_requests(jobs)?;
    run_batch(&mut wt, jobs, &mut tree, now, results, events)?;
    if !ordered && !events.is_empty() {
        return Err(StoreError::internal("an unordered batch appended events"));
    }
    wt.flush()?;
    let tokens_changed = results.iter().any(|r| {
        matches!(
            r,
            Ok(Outcome::TokenIssued(_) | Outcome::TokenRevoked { .. })
        )
    });
    if !events.is_empty() {
        let h = int(tree.size())?;
        // The new head, and the notification of it, in one round trip.
        tx.execute(
            "WITH moved AS (UPDATE log_head SET head = $1 RETURNING head)
             SELECT pg_notify($2, moved.head::text) FROM moved",
            &[&h, &EVENTS_CHANNEL],
        )
        .map_err(pg_err)?;
    }
    if tokens_changed {
        tx.execute("SELECT pg_notify($1, '')", &[&TOKENS_CHANNEL])
            .map_err(pg_err)?;
    }
    tx.commit().map_err(pg_err)?;
    Ok(ordered.then_some(tree))
}
