//! The write path, shared by every backend: load what a command names,
//! let the domain decide ([`decide`]), write the decision and append its
//! events. Runs inside the writer's transaction; a backend provides
//! [`WriteTx`].

use crate::audit::merkle::{Frontier, Hash};
use crate::domain::decide::{self, Context, Draft, EXPIRE_BATCH, Loaded, Prior, Resource, Write};
use crate::domain::{
    Caller, Channel, Command, Event, Id, Message, Outcome, Party, PartyId, Rejection, Subject, Time,
};
use crate::pb;
use crate::store::error::StoreError;
use crate::store::query::{Arg, Sql, Style};
use crate::store::read::Row;
use crate::store::record::decode_party;
use prost::Message as _;

/// What the statements written here need from a backend's transaction:
/// one statement in the backend's placeholder style, run inside it.
pub trait Statements {
    /// The backend's placeholder style.
    const STYLE: Style;
    /// Runs a statement that returns no rows.
    fn execute(&mut self, sql: &Sql) -> Result<(), StoreError>;
    /// The first row a query returns, if any.
    fn first_row(&mut self, sql: &Sql) -> Result<Option<Row>, StoreError>;
    /// Every row a query returns.
    fn rows(&mut self, sql: &Sql) -> Result<Vec<Row>, StoreError>;
}

/// What the writer needs from a backend inside one transaction. Parties
/// and tokens are the same few statements on every backend and are written
/// here; the hot rows (channels, messages, events, idempotency records) are
/// each backend's, cached or deferred as it can.
pub trait WriteTx: Statements {
    /// Loads a party.
    fn party(&mut self, id: &PartyId) -> Result<Option<Party>, StoreError> {
        let sql = Sql::with(
            Self::STYLE,
            "SELECT data FROM parties WHERE id = {1}",
            vec![Arg::Text(id.as_str().to_owned())],
        );
        self.first_row(&sql)?
            .map(|mut r| decode_party(&r.take_bytes(0)?))
            .transpose()
    }

    /// Inserts a party (its id is not taken).
    fn insert_party(&mut self, p: &Party) -> Result<(), StoreError> {
        self.execute(&Sql::with(
            Self::STYLE,
            "INSERT INTO parties (id, data) VALUES ({1}, {2})",
            vec![
                Arg::Text(p.id.as_str().to_owned()),
                Arg::Bytes(pb::Party::from(p).encode_to_vec()),
            ],
        ))
    }

    /// Inserts a token.
    fn insert_token(&mut self, t: &super::TokenRecord) -> Result<(), StoreError> {
        self.execute(&Sql::with(
            Self::STYLE,
            "INSERT INTO tokens (id, party_id, secret_hash, create_time, read_only, expire_time)
             VALUES ({1}, {2}, {3}, {4}, {5}, {6})",
            vec![
                Arg::Text(t.token_id.to_string()),
                Arg::Text(t.party_id.as_str().to_owned()),
                Arg::Bytes(t.secret_hash.to_vec()),
                Arg::Int(t.create_time.0),
                Arg::Bool(t.read_only),
                Arg::OptInt(t.expire_time.map(|e| e.0)),
            ],
        ))
    }

    /// Moves a token's stored last use forward to `at` (never back).
    fn touch_token(&mut self, id: Id, at: Time) -> Result<(), StoreError> {
        self.execute(&Sql::with(
            Self::STYLE,
            "UPDATE tokens SET last_use_time = {2}
             WHERE id = {1} AND (last_use_time IS NULL OR last_use_time < {2})",
            vec![Arg::Text(id.to_string()), Arg::Int(at.0)],
        ))
    }

    /// Whether a token is revoked; `None` if there is no such token.
    fn token_revoked(&mut self, id: Id) -> Result<Option<bool>, StoreError> {
        let sql = Sql::with(
            Self::STYLE,
            "SELECT revoke_time FROM tokens WHERE id = {1}",
            vec![Arg::Text(id.to_string())],
        );
        self.first_row(&sql)?
            .map(|r| Ok(r.opt_int(0)?.is_some()))
            .transpose()
    }

    /// Marks a token revoked at `at`.
    fn revoke_token(&mut self, id: Id, at: Time) -> Result<(), StoreError> {
        self.execute(&Sql::with(
            Self::STYLE,
            "UPDATE tokens SET revoke_time = {2} WHERE id = {1}",
            vec![Arg::Text(id.to_string()), Arg::Int(at.0)],
        ))
    }

    /// Loads a channel.
    fn channel(&mut self, id: Id) -> Result<Option<Channel>, StoreError>;
    /// Inserts (`seq` = its CHANNEL_OPENED sequence) or updates a channel.
    fn save_channel(&mut self, c: &Channel, insert_seq: Option<u64>) -> Result<(), StoreError>;
    /// Loads a message.
    fn message(&mut self, id: Id) -> Result<Option<Message>, StoreError>;
    /// Inserts (`seq` = its MESSAGE_SENT sequence) or updates a message.
    fn save_message(&mut self, m: &Message, insert_seq: Option<u64>) -> Result<(), StoreError>;
    /// Messages whose deadline has passed at `now` in a state that expires.
    fn overdue(&mut self, now: Time, limit: usize) -> Result<Vec<Id>, StoreError>;
    /// Looks up an idempotency record: (fingerprint, resource id).
    fn request(
        &mut self,
        caller: &str,
        method: &str,
        request_id: Id,
    ) -> Result<Option<([u8; 32], Id)>, StoreError>;
    /// Stores an idempotency record.
    fn insert_request(
        &mut self,
        caller: &str,
        method: &str,
        request_id: Id,
        fingerprint: &[u8; 32],
        resource: Id,
    ) -> Result<(), StoreError>;
    /// Appends an event, encoded as `data`, to the log, with its leaf hash
    /// (see [`super::record::leaf_hash`]), and the nodes of the log's
    /// Merkle tree it completed (`completed`, from [`Frontier::push`]; its
    /// level-0 entry is the leaf hash, kept with the event).
    fn append(
        &mut self,
        e: &Event,
        data: &[u8],
        leaf_hash: &[u8; 32],
        completed: &[(u32, u64, Hash)],
    ) -> Result<(), StoreError>;
    /// Writes one small row outside the record (the health probe's write).
    fn probe(&mut self, now: Time) -> Result<(), StoreError>;
}

/// Runs a batch of jobs in one transaction: appends each job's result to
/// `results` and the events of the successful ones to `events`, growing
/// `tree` (the log's Merkle tree, whose size is the head). A command is decided before it writes, so a refused one has
/// written nothing and the batch goes on without it; a store failure fails
/// the whole batch, which then commits nothing.
pub fn run_batch<T: WriteTx>(
    tx: &mut T,
    jobs: &[super::Job],
    tree: &mut Frontier,
    now: Time,
    results: &mut Vec<Result<Outcome, Rejection>>,
    events: &mut Vec<super::Committed>,
) -> Result<(), StoreError> {
    for job in jobs {
        let loaded = load(tx, &job.caller, &job.command, now)?;
        let cx = Context {
            caller: &job.caller,
            now,
            fresh: Id::new(),
        };
        match decide::decide(cx, &job.command, &loaded) {
            Ok(d) => {
                for w in d.writes {
                    write(tx, &job.caller, w, tree, now, events)?;
                }
                results.push(Ok(d.outcome));
            }
            Err(r) => results.push(Err(r)),
        }
    }
    Ok(())
}

/// Reads what `cmd` names, as the record is before it.
fn load<T: WriteTx>(
    tx: &mut T,
    caller: &Caller,
    cmd: &Command,
    now: Time,
) -> Result<Loaded, StoreError> {
    let mut l = Loaded::default();
    let named = |tx: &mut T, l: &mut Loaded, p: &PartyId| -> Result<(), StoreError> {
        if tx.party(p)?.is_some() {
            l.registered.insert(p.clone());
        }
        Ok(())
    };
    match cmd {
        Command::CreateParty(p) => named(tx, &mut l, &p.id)?,
        Command::IssueToken { party_id, .. } => named(tx, &mut l, party_id)?,
        Command::RevokeToken { token_id } => l.token_revoked = tx.token_revoked(*token_id)?,
        Command::CreateChannel(c) => {
            for p in c.parties.iter().chain(&c.mediators) {
                named(tx, &mut l, p)?;
            }
        }
        Command::ChangeChannel(c) => l.channel = tx.channel(c.channel_id)?,
        Command::SendMessage(m) => {
            if let Some(id) = m.in_reply_to {
                l.message = tx.message(id)?;
            }
            // The channel `decide` will ask for (it checks it is that one).
            if let Some(id) = m.channel_id.or(l.message.as_ref().map(|o| o.channel_id)) {
                l.channel = tx.channel(id)?;
            }
        }
        Command::MoveMessage(mv) => l.message = tx.message(mv.message_id)?,
        Command::ExpireDue => {
            for id in tx.overdue(now, EXPIRE_BATCH)? {
                l.overdue.extend(tx.message(id)?);
            }
        }
        Command::TouchTokens(_) | Command::Probe => {}
    }
    if let Some((method, rid)) = cmd.request_key()
        && let Some((fingerprint, id)) = tx.request(caller.actor(), method, rid)?
    {
        let resource = match cmd {
            Command::CreateChannel(_) => tx.channel(id)?.map(Resource::Channel),
            _ => tx.message(id)?.map(Resource::Message),
        };
        l.prior = Some(Prior {
            fingerprint,
            resource,
        });
    }
    Ok(l)
}

/// Makes one write of a decision.
fn write<T: WriteTx>(
    tx: &mut T,
    caller: &Caller,
    w: Write,
    tree: &mut Frontier,
    now: Time,
    events: &mut Vec<super::Committed>,
) -> Result<(), StoreError> {
    match w {
        Write::Party(p) => tx.insert_party(&p),
        Write::Token(t) => tx.insert_token(&t),
        Write::TouchToken { token_id, at } => tx.touch_token(token_id, at),
        Write::RevokeToken { token_id, at } => tx.revoke_token(token_id, at),
        Write::Event(d) => {
            let creates = d.kind.creates();
            let c = append(tx, d, tree, now)?;
            let seq = creates.then_some(c.event.sequence);
            match &c.event.subject {
                Subject::Channel(ch) => tx.save_channel(ch, seq)?,
                Subject::Message(m) => tx.save_message(m, seq)?,
            }
            events.push(c);
            Ok(())
        }
        Write::Request {
            method,
            request_id,
            fingerprint,
            resource,
        } => tx.insert_request(caller.actor(), method, request_id, &fingerprint, resource),
        Write::Probe(at) => tx.probe(at),
    }
}

/// Appends a drafted event to the log, with the next sequence, and to the
/// log's Merkle tree, and returns it as committed.
fn append<T: WriteTx>(
    tx: &mut T,
    d: Draft,
    tree: &mut Frontier,
    now: Time,
) -> Result<super::Committed, StoreError> {
    let channel_id = match &d.subject {
        Subject::Message(m) => m.channel_id,
        Subject::Channel(c) => c.id,
    };
    let event = Event {
        sequence: tree.size() + 1,
        event_id: Id::new(),
        kind: d.kind,
        actor: d.actor,
        channel_id,
        hop_index: d.hop_index,
        note: d.note,
        occur_time: d.occur_time,
        record_time: now,
        subject: d.subject,
    };
    // Encoded once: the log stores these bytes and subscribers get them.
    let data = bytes::Bytes::from(prost::Message::encode_to_vec(&crate::pb::Event::from(
        &event,
    )));
    let hash = super::record::leaf_hash(&data);
    let completed = tree.push(hash);
    tx.append(&event, &data, &hash, &completed)?;
    Ok(super::Committed { event, data })
}
