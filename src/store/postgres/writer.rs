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
/// the log's right edge; returns the tree as committed (a batch of probes
/// alone appends nothing, takes no lock, and gives `tree` back).
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
    let (mut head, mut tree_size) = (0, 0);
    if ordered {
        let row = tx
            .query_one("SELECT head, tree_size FROM log_head FOR UPDATE", &[])
            .map_err(pg_err)?;
        head = u64::try_from(row.get::<_, i64>(0)).map_err(corrupt)?;
        tree_size = u64::try_from(row.get::<_, i64>(1)).map_err(corrupt)?;
    }
    let mut wt = PgTx {
        tx: &mut tx,
        stmts: &mut *stmts,
        channels: HashMap::new(),
        deferred: Deferred::default(),
        known_requests: HashMap::new(),
    };
    let (mut tree, given) = match tree {
        _ if !ordered => (Frontier::default(), tree),
        Some(t) if t.size() == head => (t, None),
        // Another replica committed since: the edge is read again (and
        // completed from the leaves, should replicas of the version before
        // the tree have appended events without nodes).
        _ => (
            crate::store::tree::frontier(&mut wt, tree_size.min(head))?,
            None,
        ),
    };
    let caught_up = tree.size() < head;
    if caught_up {
        wt.complete_tree(&mut tree, head)?;
    }
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
            "WITH moved AS (UPDATE log_head SET head = $1, tree_size = $1 RETURNING head)
             SELECT pg_notify($2, moved.head::text) FROM moved",
            &[&h, &EVENTS_CHANNEL],
        )
        .map_err(pg_err)?;
    } else if caught_up {
        tx.execute("UPDATE log_head SET tree_size = $1", &[&int(tree.size())?])
            .map_err(pg_err)?;
    }
    if tokens_changed {
        tx.execute("SELECT pg_notify($1, '')", &[&TOKENS_CHANNEL])
            .map_err(pg_err)?;
    }
    tx.commit().map_err(pg_err)?;
    Ok(if ordered { Some(tree) } else { given })
}
