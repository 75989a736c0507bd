//! The writer's transaction: [`WriteTx`] on the embedded store.

use super::*;

/// A write transaction (or savepoint) on the writer's connection, with the
/// writer's cache; or, for reads, a plain connection without one.
pub(super) struct Tx<'c> {
    pub(super) conn: &'c Connection,
    pub(super) cache: Option<&'c mut Cache>,
}

pub(super) fn encode<T: prost::Message>(m: T) -> Vec<u8> {
    m.encode_to_vec()
}

pub(super) fn i64_of(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(corrupt)
}

impl Statements for Tx<'_> {
    const STYLE: Style = Style::Question;

    fn execute(&mut self, sql: &Sql) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(&sql.text)
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(read::params(&sql.args))))
            .map_err(db_err)?;
        Ok(())
    }

    fn first_row(&mut self, sql: &Sql) -> Result<Option<Row>, StoreError> {
        self.conn
            .prepare_cached(&sql.text)
            .and_then(|mut s| {
                s.query_row(
                    rusqlite::params_from_iter(read::params(&sql.args)),
                    read::row_of,
                )
                .optional()
            })
            .map_err(db_err)
    }

    fn rows(&mut self, sql: &Sql) -> Result<Vec<Row>, StoreError> {
        self.conn
            .prepare_cached(&sql.text)
            .and_then(|mut s| {
                s.query_map(
                    rusqlite::params_from_iter(read::params(&sql.args)),
                    read::row_of,
                )?
                .collect()
            })
            .map_err(db_err)
    }
}

impl WriteTx for Tx<'_> {
    fn channel(&mut self, id: Id) -> Result<Option<Channel>, StoreError> {
        if let Some(c) = self.cache.as_ref().and_then(|m| m.channels.get(&id)) {
            return Ok(Some(c.clone()));
        }
        let b: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT data FROM channels WHERE id = ?1")
            .and_then(|mut s| s.query_row([id.to_string()], |r| r.get(0)).optional())
            .map_err(db_err)?;
        let c = b.map(|b| decode_channel(&b)).transpose()?;
        if let (Some(c), Some(m)) = (&c, self.cache.as_mut()) {
            m.channels.insert(id, c.clone());
        }
        Ok(c)
    }

    fn save_channel(&mut self, c: &Channel, insert_seq: Option<u64>) -> Result<(), StoreError> {
        if let Some(m) = self.cache.as_mut() {
            m.channels.insert(c.id, c.clone());
        }
        let data = encode(pb::Channel::from(c));
        let state = convert::channel_state_pb(c.state) as i32;
        match insert_seq {
            Some(seq) => {
                let seq = i64_of(seq)?;
                self.conn
                    .prepare_cached(
                        "INSERT INTO channels (seq, id, state, data) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .and_then(|mut s| s.execute(params![seq, c.id.to_string(), state, data]))
                    .map_err(db_err)?;
                let mut s = self
            .conn
                    .prepare_cached(
                        "INSERT OR IGNORE INTO channel_members (party_id, channel_id) VALUES (?1, ?2)",
                    )
                    .map_err(db_err)?;
                for p in c.members() {
                    s.execute(params![p.as_str(), c.id.to_string()])
                        .map_err(db_err)?;
                }
            }
            None => {
                self.conn
                    .prepare_cached("UPDATE channels SET state = ?2, data = ?3 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![c.id.to_string(), state, data]))
                    .map_err(db_err)?;
            }
        }
        Ok(())
    }

    fn message(&mut self, id: Id) -> Result<Option<Message>, StoreError> {
        if let Some(m) = self.cache.as_ref().and_then(|c| c.messages.get(&id)) {
            return Ok(Some(m.clone()));
        }
        let b: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT data FROM messages WHERE id = ?1")
            .and_then(|mut s| s.query_row([id.to_string()], |r| r.get(0)).optional())
            .map_err(db_err)?;
        let m = b.map(|b| decode_message(&b)).transpose()?;
        if let (Some(m), Some(c)) = (&m, self.cache.as_mut()) {
            c.messages.insert(id, m.clone());
        }
        Ok(m)
    }

    fn save_message(&mut self, m: &Message, insert_seq: Option<u64>) -> Result<(), StoreError> {
        if let Some(c) = self.cache.as_mut() {
            c.messages.insert(m.id, m.clone());
        }
        let data = encode(pb::Message::from(m));
        let state = convert::message_state_pb(m.state) as i32;
        match insert_seq {
            Some(seq) => {
                let seq = i64_of(seq)?;
                self.conn
                .prepare_cached(
                    "INSERT INTO messages (seq, id, channel_id, thread_id, state, respond_by, data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        seq,
                        m.id.to_string(),
                        m.channel_id.to_string(),
                        m.thread_id.to_string(),
                        state,
                        m.respond_by.map(|t| t.0),
                        data
                    ])
                })
            }
            None => self
                .conn
                .prepare_cached("UPDATE messages SET state = ?2, data = ?3 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![m.id.to_string(), state, data])),
        }
        .map_err(db_err)?;
        Ok(())
    }

    fn overdue(&mut self, now: Time, limit: usize) -> Result<Vec<Id>, StoreError> {
        let mut s = self
            .conn
            .prepare_cached(query::overdue(Style::Question))
            .map_err(db_err)?;
        let ids = s
            .query_map(params![now.0, i64_of(limit as u64)?], |r| {
                r.get::<_, String>(0)
            })
            .map_err(db_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_err)?;
        ids.iter().map(|s| Id::parse(s).map_err(corrupt)).collect()
    }

    fn request(
        &mut self,
        caller: &str,
        method: &str,
        request_id: Id,
    ) -> Result<Option<([u8; 32], Id)>, StoreError> {
        if let Some(r) = self
            .cache
            .as_ref()
            .and_then(|c| c.requests.get(caller, method, request_id))
        {
            return Ok(Some((r.fingerprint, r.resource)));
        }
        if self
            .cache
            .as_ref()
            .is_some_and(|c| !c.requests.may_be_indexed(caller, method, request_id))
        {
            return Ok(None);
        }
        let id = request_id.to_string();
        let row = match self.cache.as_ref() {
            Some(c) => runs::find(self.conn, c.runs.live(), caller, method, &id),
            None => runs::listed(self.conn)
                .and_then(|live| runs::find(self.conn, live.into_iter(), caller, method, &id)),
        }
        .map_err(db_err)?;
        match row {
            None => Ok(None),
            Some((fp, id)) => Ok(Some((
                fp.try_into().map_err(|_| corrupt("bad fingerprint"))?,
                Id::parse(&id).map_err(corrupt)?,
            ))),
        }
    }

    /// Appends the record to `requests_recent` (see [`recent`]).
    fn insert_request(
        &mut self,
        caller: &str,
        method: &str,
        request_id: Id,
        fingerprint: &[u8; 32],
        resource: Id,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO requests_recent (caller, method, request_id, fingerprint, resource_id)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    caller,
                    method,
                    request_id.to_string(),
                    &fingerprint[..],
                    resource.to_string()
                ])
            })
            .map_err(db_err)?;
        let row = self.conn.last_insert_rowid();
        if let Some(c) = self.cache.as_mut() {
            c.requests.insert(
                caller,
                method,
                request_id,
                recent::Record {
                    fingerprint: *fingerprint,
                    resource,
                    row,
                },
            );
        }
        Ok(())
    }

    fn probe(&mut self, now: Time) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('write_probe', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut s| s.execute([now.0]))
            .map_err(db_err)?;
        Ok(())
    }

    fn append(
        &mut self,
        e: &Event,
        data: &[u8],
        leaf_hash: &[u8; 32],
        completed: &[(u32, u64, Hash)],
    ) -> Result<(), StoreError> {
        let m = e.message();
        let seq = i64_of(e.sequence)?;
        self.conn
            .prepare_cached(
                "INSERT INTO events (seq, channel_id, message_id, thread_id, type, data, leaf_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    seq,
                    e.channel_id.to_string(),
                    m.map(|m| m.id.to_string()),
                    m.map(|m| m.thread_id.to_string()),
                    convert::event_type_pb(e.kind) as i32,
                    data,
                    &leaf_hash[..]
                ])
            })
            .map_err(db_err)?;
        for (last, level, hash) in tree::rows_of(completed) {
            let last = i64_of(last)?;
            self.conn
                .prepare_cached(
                    "INSERT INTO tree_nodes (last_leaf, level, hash) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![last, level, &hash[..]]))
                .map_err(db_err)?;
        }
        Ok(())
    }
}
