//! The writer's transaction: [`WriteTx`] on PostgreSQL, its hot rows
//! deferred to the batch's end and written one statement per kind.

use super::*;

/// A write transaction (or savepoint) on the writer's connection, with the
/// writer's prepared statements.
pub(super) struct PgTx<'a, 'b> {
    pub(super) tx: &'a mut postgres::Transaction<'b>,
    pub(super) stmts: &'a mut HashMap<String, postgres::Statement>,
    /// Channels read or written in this batch. While the batch holds the
    /// log-head lock no other replica can commit, so they stay current for
    /// the batch (and only for it).
    pub(super) channels: HashMap<Id, Channel>,
    /// The batch's appends, message saves and idempotency records, written
    /// at its end in one statement per kind (see [`Deferred`]).
    pub(super) deferred: Deferred,
    /// The idempotency records of the batch's request ids as stored before
    /// it (`None`: none), read in one statement at its start.
    pub(super) known_requests: HashMap<RequestKey, Option<([u8; 32], Id)>>,
}

/// The hot writes of a batch, held until its end and then written with one
/// statement per kind over arrays (`unnest`), instead of one round trip to
/// the database per row: a send with a `request_id` cost four statements,
/// three of them writes. What the batch reads back (a message it saved, a
/// request id it recorded) is answered from here first. Nothing in the
/// schema refers to these rows, and a failed flush fails the batch as a
/// failed statement did.
#[derive(Default)]
pub(super) struct Deferred {
    /// Events, in sequence order.
    pub(super) events: Vec<DeferredEvent>,
    /// Messages inserted by this batch, as they now are, with their
    /// `MESSAGE_SENT` sequence.
    pub(super) inserted: HashMap<Id, (u64, Message)>,
    /// Messages stored before this batch that it changed, as they now are.
    pub(super) updated: HashMap<Id, Message>,
    /// Idempotency records, by key: (fingerprint, resource).
    pub(super) requests: HashMap<RequestKey, ([u8; 32], Id)>,
    /// Nodes of the log's Merkle tree: (last leaf, level, hash).
    pub(super) nodes: Vec<(i64, i64, Vec<u8>)>,
}

/// An idempotency record's key: caller, method, request id.
pub(super) type RequestKey = (String, String, Id);

pub(super) struct DeferredEvent {
    pub(super) seq: i64,
    pub(super) channel_id: String,
    pub(super) message_id: Option<String>,
    pub(super) thread_id: Option<String>,
    pub(super) kind: i64,
    pub(super) data: Vec<u8>,
    pub(super) leaf_hash: Vec<u8>,
}

impl PgTx<'_, '_> {
    pub(super) fn st(&mut self, sql: &str) -> Result<postgres::Statement, StoreError> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql).map_err(pg_err)?;
        self.stmts.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    pub(super) fn opt_bytes(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let st = self.st(sql)?;
        let row = self.tx.query_opt(&st, params).map_err(pg_err)?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(super) fn exec(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let st = self.st(sql)?;
        self.tx.execute(&st, params).map_err(pg_err)
    }
}

impl PgTx<'_, '_> {
    /// Reads the stored idempotency records of every request id in `jobs`
    /// in one statement, where each command looked its own up.
    pub(super) fn load_requests(&mut self, jobs: &[Job]) -> Result<(), StoreError> {
        let (mut callers, mut methods, mut ids) = (Vec::new(), Vec::new(), Vec::new());
        for job in jobs {
            if let Some((method, request_id)) = job.command.request_key() {
                let caller = job.caller.actor().to_owned();
                callers.push(caller.clone());
                methods.push(method.to_owned());
                ids.push(request_id.to_string());
                self.known_requests
                    .insert((caller, method.to_owned(), request_id), None);
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        let st = self.st(
            "SELECT r.caller, r.method, r.request_id, r.fingerprint, r.resource_id
             FROM requests r
             JOIN unnest($1::text[], $2::text[], $3::text[]) AS k (caller, method, request_id)
               ON r.caller = k.caller AND r.method = k.method AND r.request_id = k.request_id",
        )?;
        let rows = self
            .tx
            .query(&st, &[&callers, &methods, &ids])
            .map_err(pg_err)?;
        for r in rows {
            let key = (
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                Id::parse(r.get::<_, &str>(2)).map_err(corrupt)?,
            );
            let fingerprint: [u8; 32] = r
                .get::<_, Vec<u8>>(3)
                .try_into()
                .map_err(|_| corrupt("bad fingerprint"))?;
            let resource = Id::parse(r.get::<_, &str>(4)).map_err(corrupt)?;
            self.known_requests
                .insert(key, Some((fingerprint, resource)));
        }
        Ok(())
    }

    /// Writes what [`Deferred`] holds: one statement per kind.
    pub(super) fn flush(&mut self) -> Result<(), StoreError> {
        let d = std::mem::take(&mut self.deferred);
        for chunk in in_chunks(d.events) {
            let mut cols = (
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            );
            for e in chunk {
                cols.0.push(e.seq);
                cols.1.push(e.channel_id);
                cols.2.push(e.message_id);
                cols.3.push(e.thread_id);
                cols.4.push(e.kind);
                cols.5.push(e.data);
                cols.6.push(e.leaf_hash);
            }
            self.exec(
                "INSERT INTO events (seq, channel_id, message_id, thread_id, type, data, leaf_hash)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                                      $5::bigint[], $6::bytea[], $7::bytea[])",
                &[
                    &cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &cols.5, &cols.6,
                ],
            )?;
        }
        for chunk in in_chunks(d.nodes) {
            let mut cols = (Vec::new(), Vec::new(), Vec::new());
            for (last, level, hash) in chunk {
                cols.0.push(last);
                cols.1.push(level);
                cols.2.push(hash);
            }
            self.exec(
                "INSERT INTO tree_nodes (last_leaf, level, hash)
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
                &[&cols.0, &cols.1, &cols.2],
            )?;
        }
        let mut inserted: Vec<(u64, Message)> = d.inserted.into_values().collect();
        inserted.sort_by_key(|(seq, _)| *seq);
        for chunk in in_chunks(inserted) {
            let mut cols = (
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            );
            for (seq, m) in &chunk {
                cols.0.push(int(*seq)?);
                cols.1.push(m.id.to_string());
                cols.2.push(m.channel_id.to_string());
                cols.3.push(m.thread_id.to_string());
                cols.4.push(message_state(m));
                cols.5.push(m.respond_by.map(|t| t.0));
                cols.6.push(pb::Message::from(m).encode_to_vec());
            }
            self.exec(
                "INSERT INTO messages (seq, id, channel_id, thread_id, state, respond_by, data)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                                      $5::bigint[], $6::bigint[], $7::bytea[])",
                &[
                    &cols.0, &cols.1, &cols.2, &cols.3, &cols.4, &cols.5, &cols.6,
                ],
            )?;
        }
        // One row per message: the map holds each message's last state.
        for chunk in in_chunks(d.updated.into_values().collect()) {
            let (mut ids, mut states, mut data) = (Vec::new(), Vec::new(), Vec::new());
            for m in &chunk {
                ids.push(m.id.to_string());
                states.push(message_state(m));
                data.push(pb::Message::from(m).encode_to_vec());
            }
            self.exec(
                "UPDATE messages SET state = u.state, data = u.data
                 FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS u (id, state, data)
                 WHERE messages.id = u.id",
                &[&ids, &states, &data],
            )?;
        }
        for chunk in in_chunks(d.requests.into_iter().collect()) {
            let mut cols = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((caller, method, request_id), (fingerprint, resource)) in chunk {
                cols.0.push(caller);
                cols.1.push(method);
                cols.2.push(request_id.to_string());
                cols.3.push(fingerprint.to_vec());
                cols.4.push(resource.to_string());
            }
            self.exec(
                "INSERT INTO requests (caller, method, request_id, fingerprint, resource_id)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[])",
                &[&cols.0, &cols.1, &cols.2, &cols.3, &cols.4],
            )?;
        }
        Ok(())
    }
}

/// Most rows one deferred statement writes: its arrays stay far below
/// PostgreSQL's 1 GB bound on a value even with 1 MiB bodies (an expiry of
/// 1,000 such messages is four statements).
pub(super) const FLUSH_ROWS: usize = 256;

/// `rows` in pieces of at most [`FLUSH_ROWS`], in order.
pub(super) fn in_chunks<T>(mut rows: Vec<T>) -> impl Iterator<Item = Vec<T>> {
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let rest = rows.split_off(rows.len().min(FLUSH_ROWS));
        Some(std::mem::replace(&mut rows, rest))
    })
}

/// A message's state as the `state` column holds it.
pub(super) fn message_state(m: &Message) -> i64 {
    i64::from(convert::message_state_pb(m.state) as i32)
}

impl PgTx<'_, '_> {
    /// Completes `tree` to `head` leaves from the events' leaf hashes,
    /// deferring the nodes they complete (for events appended without them
    /// by replicas of the version before the tree).
    pub(super) fn complete_tree(
        &mut self,
        tree: &mut Frontier,
        head: u64,
    ) -> Result<(), StoreError> {
        let from = tree.size();
        tracing::warn!(
            from,
            head,
            "the log's Merkle tree is behind its head (replicas of an earlier version \
             appended events): completing it"
        );
        let rows = self.rows(&Sql::with(
            Style::Dollar,
            "SELECT seq, leaf_hash FROM events WHERE seq > {1} AND seq <= {2} ORDER BY seq",
            vec![Arg::Int(int(from)?), Arg::Int(int(head)?)],
        ))?;
        for mut r in rows {
            let seq = r.count(0)?;
            let leaf = r.take_opt_bytes(1)?;
            let leaf: [u8; 32] = match leaf.as_deref().map(<[u8; 32]>::try_from) {
                Some(Ok(l)) if seq == tree.size() + 1 => l,
                _ => {
                    return Err(StoreError::new(
                        Fault::Corrupt,
                        format!(
                            "the log cannot be added to its Merkle tree at event #{}: \
                             it is missing or has no leaf hash",
                            tree.size() + 1
                        ),
                    ));
                }
            };
            let done = tree.push(leaf);
            for (last, level, hash) in crate::store::tree::rows_of(&done) {
                self.deferred
                    .nodes
                    .push((int(last)?, i64::from(level), hash.to_vec()));
            }
        }
        if tree.size() != head {
            return Err(StoreError::new(
                Fault::Corrupt,
                format!(
                    "the log holds events up to #{} of its head #{head}",
                    tree.size()
                ),
            ));
        }
        Ok(())
    }
}

impl Statements for PgTx<'_, '_> {
    const STYLE: Style = Style::Dollar;

    fn execute(&mut self, sql: &Sql) -> Result<(), StoreError> {
        let st = self.st(&sql.text)?;
        self.tx
            .execute(&st, &read::bind(&sql.args))
            .map_err(pg_err)?;
        Ok(())
    }

    fn first_row(&mut self, sql: &Sql) -> Result<Option<Row>, StoreError> {
        let st = self.st(&sql.text)?;
        let row = self
            .tx
            .query_opt(&st, &read::bind(&sql.args))
            .map_err(pg_err)?;
        row.as_ref().map(read::row_of).transpose()
    }

    fn rows(&mut self, sql: &Sql) -> Result<Vec<Row>, StoreError> {
        let st = self.st(&sql.text)?;
        let rows = self.tx.query(&st, &read::bind(&sql.args)).map_err(pg_err)?;
        rows.iter().map(read::row_of).collect()
    }
}

impl WriteTx for PgTx<'_, '_> {
    fn channel(&mut self, id: Id) -> Result<Option<Channel>, StoreError> {
        if let Some(c) = self.channels.get(&id) {
            return Ok(Some(c.clone()));
        }
        let c = self
            .opt_bytes(
                "SELECT data FROM channels WHERE id = $1",
                &[&id.to_string()],
            )?
            .map(|b| decode_channel(&b))
            .transpose()?;
        if let Some(c) = &c {
            self.channels.insert(id, c.clone());
        }
        Ok(c)
    }

    fn save_channel(&mut self, c: &Channel, insert_seq: Option<u64>) -> Result<(), StoreError> {
        self.channels.insert(c.id, c.clone());
        let data = pb::Channel::from(c).encode_to_vec();
        let state = i64::from(convert::channel_state_pb(c.state) as i32);
        let id = c.id.to_string();
        match insert_seq {
            Some(seq) => {
                self.exec(
                    "INSERT INTO channels (seq, id, state, data) VALUES ($1, $2, $3, $4)",
                    &[&int(seq)?, &id, &state, &data],
                )?;
                for p in c.members() {
                    self.exec(
                        "INSERT INTO channel_members (party_id, channel_id) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING",
                        &[&p.as_str(), &id],
                    )?;
                }
            }
            None => {
                self.exec(
                    "UPDATE channels SET state = $2, data = $3 WHERE id = $1",
                    &[&id, &state, &data],
                )?;
            }
        }
        Ok(())
    }

    fn message(&mut self, id: Id) -> Result<Option<Message>, StoreError> {
        if let Some((_, m)) = self.deferred.inserted.get(&id) {
            return Ok(Some(m.clone()));
        }
        if let Some(m) = self.deferred.updated.get(&id) {
            return Ok(Some(m.clone()));
        }
        self.opt_bytes(
            "SELECT data FROM messages WHERE id = $1",
            &[&id.to_string()],
        )?
        .map(|b| decode_message(&b))
        .transpose()
    }

    fn save_message(&mut self, m: &Message, insert_seq: Option<u64>) -> Result<(), StoreError> {
        match (insert_seq, self.deferred.inserted.get_mut(&m.id)) {
            (Some(seq), _) => {
                self.deferred.inserted.insert(m.id, (seq, m.clone()));
            }
            // Inserted by this batch: it is inserted as it ends up.
            (None, Some((_, inserted))) => *inserted = m.clone(),
            (None, None) => {
                self.deferred.updated.insert(m.id, m.clone());
            }
        }
        Ok(())
    }

    fn overdue(&mut self, now: Time, limit: usize) -> Result<Vec<Id>, StoreError> {
        let st = self.st(query::overdue(Style::Dollar))?;
        let rows = self
            .tx
            .query(&st, &[&now.0, &int(limit as u64)?])
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| Id::parse(r.get::<_, &str>(0)).map_err(corrupt))
            .collect()
    }

    fn request(
        &mut self,
        caller: &str,
        method: &str,
        request_id: Id,
    ) -> Result<Option<([u8; 32], Id)>, StoreError> {
        let key = (caller.to_owned(), method.to_owned(), request_id);
        if let Some(r) = self.deferred.requests.get(&key) {
            return Ok(Some(*r));
        }
        if let Some(r) = self.known_requests.get(&key) {
            return Ok(*r);
        }
        let st = self.st("SELECT fingerprint, resource_id FROM requests
             WHERE caller = $1 AND method = $2 AND request_id = $3")?;
        let row = self
            .tx
            .query_opt(&st, &[&caller, &method, &request_id.to_string()])
            .map_err(pg_err)?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some((
                r.get::<_, Vec<u8>>(0)
                    .try_into()
                    .map_err(|_| corrupt("bad fingerprint"))?,
                Id::parse(r.get::<_, &str>(1)).map_err(corrupt)?,
            ))),
        }
    }

    fn insert_request(
        &mut self,
        caller: &str,
        method: &str,
        request_id: Id,
        fingerprint: &[u8; 32],
        resource: Id,
    ) -> Result<(), StoreError> {
        self.deferred.requests.insert(
            (caller.to_owned(), method.to_owned(), request_id),
            (*fingerprint, resource),
        );
        Ok(())
    }

    fn probe(&mut self, now: Time) -> Result<(), StoreError> {
        // A real write, so that a database that refuses writes (read-only,
        // out of disk) fails the probe; a row no other batch locks.
        self.exec(
            "INSERT INTO meta (key, value) VALUES ('write_probe', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&now.0.to_be_bytes().to_vec()],
        )?;
        Ok(())
    }

    fn append(
        &mut self,
        e: &Event,
        data: &[u8],
        leaf_hash: &[u8; 32],
        completed: &[(u32, u64, Hash)],
    ) -> Result<(), StoreError> {
        for (last, level, hash) in crate::store::tree::rows_of(completed) {
            self.deferred
                .nodes
                .push((int(last)?, i64::from(level), hash.to_vec()));
        }
        let m = e.message();
        self.deferred.events.push(DeferredEvent {
            seq: int(e.sequence)?,
            channel_id: e.channel_id.to_string(),
            message_id: m.map(|m| m.id.to_string()),
            thread_id: m.map(|m| m.thread_id.to_string()),
            kind: i64::from(convert::event_type_pb(e.kind) as i32),
            data: data.to_vec(),
            leaf_hash: leaf_hash.to_vec(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{FLUSH_ROWS, in_chunks};

    #[test]
    pub(super) fn deferred_rows_are_written_in_order_in_bounded_pieces() {
        let rows: Vec<usize> = (0..2 * FLUSH_ROWS + 88).collect();
        let pieces: Vec<Vec<usize>> = in_chunks(rows.clone()).collect();
        assert_eq!(
            pieces.iter().map(Vec::len).collect::<Vec<_>>(),
            [FLUSH_ROWS, FLUSH_ROWS, 88]
        );
        assert_eq!(pieces.concat(), rows);
        assert_eq!(in_chunks(Vec::<usize>::new()).count(), 0);
    }
}
