//! The write path's logic, shared by every backend: load what a command
//! needs, ask the domain, persist the result and append its events. Runs
//! inside the writer's transaction; a backend provides [`WriteTx`].

use sha2::{Digest, Sha256};

use crate::domain::rules;
use crate::domain::{
    Caller, Channel, ChannelChange, ChannelState, Command, Event, EventType, Id, Message,
    MessageAction, MessageMove, MessageState, NewChannel, NewMessage, Party, PartyId, Reason,
    Rejection, Subject, Time,
};

/// What the writer needs from a backend inside one transaction.
pub trait WriteTx {
    /// Loads a party.
    fn party(&mut self, id: &PartyId) -> Result<Option<Party>, Rejection>;
    /// Inserts a party; `false` if the id is taken.
    fn insert_party(&mut self, p: &Party) -> Result<bool, Rejection>;
    /// Inserts a token.
    fn insert_token(&mut self, t: &super::TokenRecord) -> Result<(), Rejection>;
    /// Moves a token's stored last use forward to `at` (never back).
    fn touch_token(&mut self, id: Id, at: Time) -> Result<(), Rejection>;
    /// Marks a token revoked. `None` if absent, `Some(false)` if already revoked.
    fn revoke_token(&mut self, id: Id, now: Time) -> Result<Option<bool>, Rejection>;
    /// Loads a channel.
    fn channel(&mut self, id: Id) -> Result<Option<Channel>, Rejection>;
    /// Inserts (`seq` = its CHANNEL_OPENED sequence) or updates a channel.
    fn save_channel(&mut self, c: &Channel, insert_seq: Option<u64>) -> Result<(), Rejection>;
    /// Loads a message.
    fn message(&mut self, id: Id) -> Result<Option<Message>, Rejection>;
    /// Inserts (`seq` = its MESSAGE_SENT sequence) or updates a message.
    fn save_message(&mut self, m: &Message, insert_seq: Option<u64>) -> Result<(), Rejection>;
    /// Messages whose deadline has passed at `now` in a state that expires.
    fn overdue(&mut self, now: Time, limit: usize) -> Result<Vec<Id>, Rejection>;
    /// Looks up an idempotency record: (fingerprint, resource id).
    fn request(
        &mut self,
        caller: &str,
        method: &str,
        request_id: Id,
    ) -> Result<Option<([u8; 32], Id)>, Rejection>;
    /// Stores an idempotency record.
    fn insert_request(
        &mut self,
        caller: &str,
        method: &str,
        request_id: Id,
        fingerprint: &[u8; 32],
        resource: Id,
    ) -> Result<(), Rejection>;
    /// Appends an event, encoded as `data`, to the log, with its leaf hash
    /// (see [`super::record::leaf_hash`]).
    fn append(&mut self, e: &Event, data: &[u8], leaf_hash: &[u8; 32]) -> Result<(), Rejection>;
    /// Writes one small row outside the record (the health probe's write).
    fn probe(&mut self, now: Time) -> Result<(), Rejection>;
}

/// What a command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A party was registered.
    Party(Party),
    /// A token was issued.
    TokenIssued(super::TokenRecord),
    /// A token was revoked.
    TokenRevoked {
        /// Its id.
        token_id: Id,
        /// When.
        revoke_time: Time,
    },
    /// Token uses were stored.
    Touched,
    /// A channel, as it now is.
    Channel(Channel),
    /// A message, as it now is.
    Message(Message),
    /// How many messages expired.
    Expired(usize),
    /// The probe committed.
    Probed,
}

/// Runs a batch of jobs in one transaction: appends each job's result to
/// `results` and the events of the successful ones to `events`, advancing
/// `head`. A store failure (or a refusal after a write) fails the batch.
pub fn run_batch<T: WriteTx>(
    tx: &mut T,
    jobs: &[super::Job],
    head: &mut u64,
    now: Time,
    results: &mut Vec<Result<Outcome, Rejection>>,
    events: &mut Vec<super::Committed>,
) -> Result<(), Rejection> {
    for job in jobs {
        let mut ex = Executor {
            tx: &mut *tx,
            head: *head,
            events: Vec::new(),
            now,
            wrote: false,
        };
        match ex.execute(&job.caller, &job.command) {
            Ok(out) => {
                *head = ex.head;
                events.append(&mut ex.events);
                results.push(Ok(out));
            }
            // The store failed, not the request: the batch fails.
            Err(r) if r.is_store_fault() => {
                return Err(r);
            }
            // Refused before writing anything.
            Err(r) => results.push(Err(r)),
        }
    }
    Ok(())
}

/// Most messages one `ExpireDue` expires (the next tick takes the rest).
const EXPIRE_BATCH: usize = 1000;

/// The writer's state across commands: the next sequence to hand out.
pub struct Executor<'a, T: WriteTx> {
    /// The transaction.
    pub tx: &'a mut T,
    /// The last sequence handed out (the log's head).
    pub head: u64,
    /// Events appended by the current command.
    pub events: Vec<super::Committed>,
    /// The time of recording.
    pub now: Time,
    /// Whether the current command has written anything.
    pub wrote: bool,
}

impl<T: WriteTx> Executor<'_, T> {
    /// Runs one command in the writer's transaction.
    ///
    /// Every check of a command comes before its first write, so a refused
    /// command has written nothing and needs no rollback: the batch goes on
    /// without it. A store failure, or a refusal after a write (a bug), fails
    /// the whole batch, which then commits nothing.
    pub fn execute(&mut self, caller: &Caller, cmd: &Command) -> Result<Outcome, Rejection> {
        self.wrote = false;
        match self.run(caller, cmd) {
            Err(r) if self.wrote && !r.is_store_fault() => {
                tracing::error!(refusal = %r, "a command was refused after it wrote; failing the batch");
                Err(Rejection::new(Reason::INTERNAL, "internal error"))
            }
            other => other,
        }
    }

    /// The transaction, for a write.
    fn w(&mut self) -> &mut T {
        self.wrote = true;
        self.tx
    }

    /// Runs one command.
    fn run(&mut self, caller: &Caller, cmd: &Command) -> Result<Outcome, Rejection> {
        match cmd {
            Command::CreateParty(p) => {
                admin_only(caller)?;
                let party = Party {
                    id: p.id.clone(),
                    display_name: p.display_name.clone(),
                    kind: p.kind,
                    create_time: self.now,
                };
                // Inserts nothing when the id is taken, so refusing then is
                // refusing before any write.
                if !self.tx.insert_party(&party)? {
                    return Err(Rejection::new(
                        Reason::PARTY_EXISTS,
                        format!("party '{}' already exists", p.id),
                    ));
                }
                Ok(Outcome::Party(party))
            }
            Command::IssueToken {
                party_id,
                token_id,
                secret_hash,
                read_only,
                expire_time,
            } => {
                admin_only(caller)?;
                if self.tx.party(party_id)?.is_none() {
                    return Err(Rejection::new(
                        Reason::PARTY_NOT_FOUND,
                        format!("no party '{party_id}'"),
                    ));
                }
                if expire_time.is_some_and(|t| t <= self.now) {
                    return Err(Rejection::field("expire_time", "must lie in the future"));
                }
                let token = super::TokenRecord {
                    token_id: *token_id,
                    party_id: party_id.clone(),
                    secret_hash: *secret_hash,
                    read_only: *read_only,
                    create_time: self.now,
                    expire_time: *expire_time,
                    revoke_time: None,
                    last_use_time: None,
                };
                self.w().insert_token(&token)?;
                Ok(Outcome::TokenIssued(token))
            }
            Command::TouchTokens(uses) => {
                admin_only(caller)?;
                for (id, at) in uses {
                    self.w().touch_token(*id, *at)?;
                }
                Ok(Outcome::Touched)
            }
            Command::RevokeToken { token_id } => {
                admin_only(caller)?;
                // Marks nothing when the token is absent or already revoked.
                match self.tx.revoke_token(*token_id, self.now)? {
                    None => Err(Rejection::new(Reason::TOKEN_NOT_FOUND, "no such token")),
                    Some(false) => Err(Rejection::new(
                        Reason::TOKEN_REVOKED,
                        "the token is already revoked",
                    )),
                    Some(true) => {
                        self.wrote = true;
                        Ok(Outcome::TokenRevoked {
                            token_id: *token_id,
                            revoke_time: self.now,
                        })
                    }
                }
            }
            Command::CreateChannel(c) => self.create_channel(caller, c, cmd),
            Command::ChangeChannel(c) => self.change_channel(caller, c),
            Command::SendMessage(m) => self.send(caller, m, cmd),
            Command::MoveMessage(m) => self.move_message(caller, m, cmd),
            Command::ExpireDue => self.expire_due(),
            Command::Probe => {
                let now = self.now;
                self.w().probe(now)?;
                Ok(Outcome::Probed)
            }
        }
    }

    fn create_channel(
        &mut self,
        caller: &Caller,
        c: &NewChannel,
        cmd: &Command,
    ) -> Result<Outcome, Rejection> {
        for (i, p) in c.parties.iter().chain(c.mediators.iter()).enumerate() {
            if self.tx.party(p)?.is_none() {
                let field = if i < 2 {
                    format!("parties[{i}]")
                } else {
                    format!("mediators[{}]", i - 2)
                };
                let mut r = Rejection::field(field, format!("no party '{p}' is registered"));
                r.reason = Reason::UNKNOWN_PARTY;
                return Err(r);
            }
        }
        if let Caller::Party(p) = caller
            && !c.parties.contains(p)
        {
            return Err(Rejection::new(
                Reason::NOT_A_PRINCIPAL,
                "a channel is opened by the admin or by one of its two principals",
            ));
        }
        const METHOD: &str = crate::domain::command::CREATE_CHANNEL;
        if let Some(id) = self.replayed(caller, METHOD, c.request_id, cmd)? {
            return self.existing_channel(id);
        }
        let channel = Channel {
            id: Id::new(),
            display_name: c.display_name.clone(),
            parties: c.parties.clone(),
            mediators: c.mediators.clone(),
            state: ChannelState::Open,
            version: 1,
            create_time: self.now,
            update_time: self.now,
        };
        let seq = self.record(
            caller.actor(),
            EventType::ChannelOpened,
            None,
            String::new(),
            self.now,
            Subject::Channel(Box::new(channel.clone())),
        )?;
        self.w().save_channel(&channel, Some(seq))?;
        self.remember(caller, METHOD, c.request_id, cmd, channel.id)?;
        Ok(Outcome::Channel(channel))
    }

    fn change_channel(&mut self, caller: &Caller, c: &ChannelChange) -> Result<Outcome, Rejection> {
        let channel = self
            .tx
            .channel(c.channel_id)?
            .filter(|ch| ch.visible_to(caller))
            .ok_or_else(rules::channel_not_found)?;
        rules::authorize_channel_change(&channel, caller)?;
        rules::check_version(c.expected_version, channel.version)?;
        let (channel, kind) = rules::change_channel(&channel, c.action, self.now)?;
        self.record(
            caller.actor(),
            kind,
            None,
            c.note.clone(),
            self.now,
            Subject::Channel(Box::new(channel.clone())),
        )?;
        self.w().save_channel(&channel, None)?;
        Ok(Outcome::Channel(channel))
    }

    fn send(
        &mut self,
        caller: &Caller,
        m: &NewMessage,
        cmd: &Command,
    ) -> Result<Outcome, Rejection> {
        // NOT_FOUND first (the original of a reply, then the channel), then
        // PERMISSION_DENIED.
        let original = match m.in_reply_to {
            None => None,
            Some(id) => Some(
                self.tx
                    .message(id)?
                    .filter(|o| o.visible_to(caller))
                    .ok_or_else(rules::message_not_found)?,
            ),
        };
        let channel_id = match (m.channel_id, &original) {
            (Some(id), _) => id,
            (None, Some(o)) => o.channel_id,
            (None, None) => return Err(Rejection::field("channel_id", "is required")),
        };
        let channel = self
            .tx
            .channel(channel_id)?
            .filter(|ch| ch.visible_to(caller))
            .ok_or_else(rules::channel_not_found)?;
        if let Some(o) = &original {
            rules::authorize(MessageAction::Answer, rules::role(o, caller))?;
        }
        let recipient = rules::authorize_send(&channel, caller)?.clone();
        if let Some(o) = &original
            && o.sender != recipient
        {
            return Err(Rejection::new(
                Reason::REPLY_CHANNEL_MISMATCH,
                "a reply must travel on a channel joining the same two parties as the original",
            ));
        }
        const METHOD: &str = crate::domain::command::SEND_MESSAGE;
        if let Some(id) = self.replayed(caller, METHOD, m.request_id, cmd)? {
            return self.existing_message(id);
        }
        rules::channel_accepts_messages(&channel)?;
        let answered = match &original {
            Some(o) => {
                let role = rules::role(o, caller);
                Some(rules::apply(
                    o,
                    MessageAction::Answer,
                    role,
                    "",
                    self.now,
                    self.now,
                )?)
            }
            None => None,
        };
        let sender = caller.party().cloned().ok_or_else(|| {
            Rejection::new(Reason::ADMIN_NOT_A_PARTY, "the admin cannot send messages")
        })?;
        let id = Id::new();
        let occur = m.occur_time.unwrap_or(self.now);
        let message = Message {
            id,
            channel_id,
            hops: rules::route(&channel, &sender),
            sender,
            recipient,
            subject: m.subject.clone(),
            body: m.body.clone(),
            labels: m.labels.clone(),
            respond_by: m.respond_by,
            in_reply_to: m.in_reply_to,
            thread_id: original.as_ref().map_or(id, |o| o.thread_id),
            state: MessageState::Submitted,
            version: 1,
            create_time: self.now,
            update_time: self.now,
            send_time: occur,
        };
        let seq = self.record(
            caller.actor(),
            EventType::MessageSent,
            None,
            String::new(),
            occur,
            Subject::Message(Box::new(message.clone())),
        )?;
        self.w().save_message(&message, Some(seq))?;
        if let Some(step) = answered {
            self.record(
                caller.actor(),
                step.kind,
                None,
                String::new(),
                occur,
                Subject::Message(Box::new(step.message.clone())),
            )?;
            self.w().save_message(&step.message, None)?;
        }
        self.remember(caller, METHOD, m.request_id, cmd, id)?;
        Ok(Outcome::Message(message))
    }

    fn move_message(
        &mut self,
        caller: &Caller,
        mv: &MessageMove,
        cmd: &Command,
    ) -> Result<Outcome, Rejection> {
        let msg = self
            .tx
            .message(mv.message_id)?
            .filter(|m| m.visible_to(caller))
            .ok_or_else(rules::message_not_found)?;
        let role = rules::role(&msg, caller);
        rules::authorize(mv.action, role)?;
        let method = mv.action.method();
        if let Some(id) = self.replayed(caller, method, mv.request_id, cmd)? {
            return self.existing_message(id);
        }
        rules::check_version(mv.expected_version, msg.version)?;
        let occur = mv.occur_time.unwrap_or(self.now);
        let step = rules::apply(&msg, mv.action, role, &mv.note, occur, self.now)?;
        self.record(
            caller.actor(),
            step.kind,
            step.hop_index,
            mv.note.clone(),
            occur,
            Subject::Message(Box::new(step.message.clone())),
        )?;
        self.w().save_message(&step.message, None)?;
        self.remember(caller, method, mv.request_id, cmd, msg.id)?;
        Ok(Outcome::Message(step.message))
    }

    fn expire_due(&mut self) -> Result<Outcome, Rejection> {
        let due = self.tx.overdue(self.now, EXPIRE_BATCH)?;
        let mut n = 0;
        for id in due {
            let Some(msg) = self.tx.message(id)? else {
                continue;
            };
            if let Some((step, deadline)) = rules::expire(&msg, self.now) {
                self.record(
                    crate::domain::SYSTEM,
                    step.kind,
                    None,
                    String::new(),
                    deadline,
                    Subject::Message(Box::new(step.message.clone())),
                )?;
                self.w().save_message(&step.message, None)?;
                n += 1;
            }
        }
        Ok(Outcome::Expired(n))
    }

    /// Appends one event and returns its sequence.
    fn record(
        &mut self,
        actor: &str,
        kind: EventType,
        hop_index: Option<i32>,
        note: String,
        occur_time: Time,
        subject: Subject,
    ) -> Result<u64, Rejection> {
        let channel_id = match &subject {
            Subject::Message(m) => m.channel_id,
            Subject::Channel(c) => c.id,
        };
        self.head += 1;
        let event = Event {
            sequence: self.head,
            event_id: Id::new(),
            kind,
            actor: actor.to_owned(),
            channel_id,
            hop_index,
            note,
            occur_time,
            record_time: self.now,
            subject,
        };
        // Encoded once: the log stores these bytes and subscribers get them.
        let data = bytes::Bytes::from(prost::Message::encode_to_vec(&crate::pb::Event::from(
            &event,
        )));
        let hash = super::record::leaf_hash(&data);
        self.w().append(&event, &data, &hash)?;
        self.events.push(super::Committed { event, data });
        Ok(self.head)
    }

    /// If this request was made before: the resource it touched, or
    /// `REQUEST_ID_REUSED` when the same id came with a different request.
    fn replayed(
        &mut self,
        caller: &Caller,
        method: &str,
        request_id: Option<Id>,
        cmd: &Command,
    ) -> Result<Option<Id>, Rejection> {
        let Some(rid) = request_id else {
            return Ok(None);
        };
        match self.tx.request(caller.actor(), method, rid)? {
            None => Ok(None),
            Some((fp, id)) if fp == fingerprint(cmd) => Ok(Some(id)),
            Some(_) => Err(Rejection::new(
                Reason::REQUEST_ID_REUSED,
                format!("request_id {rid} was already used for a different request"),
            )),
        }
    }

    fn remember(
        &mut self,
        caller: &Caller,
        method: &str,
        request_id: Option<Id>,
        cmd: &Command,
        resource: Id,
    ) -> Result<(), Rejection> {
        match request_id {
            Some(rid) => {
                self.w()
                    .insert_request(caller.actor(), method, rid, &fingerprint(cmd), resource)
            }
            None => Ok(()),
        }
    }

    fn existing_channel(&mut self, id: Id) -> Result<Outcome, Rejection> {
        let c = self.tx.channel(id)?.ok_or_else(rules::channel_not_found)?;
        Ok(Outcome::Channel(c))
    }

    fn existing_message(&mut self, id: Id) -> Result<Outcome, Rejection> {
        let m = self.tx.message(id)?.ok_or_else(rules::message_not_found)?;
        Ok(Outcome::Message(m))
    }
}

fn admin_only(caller: &Caller) -> Result<(), Rejection> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::Party(_) => Err(Rejection::new(
            Reason::ADMIN_ONLY,
            "only the admin may manage parties and tokens",
        )),
    }
}

/// A digest of the request as the client sent it (the caller and method are
/// part of the key already), over an explicit, length-prefixed encoding of
/// its fields, so it stays the same across versions of this code.
fn fingerprint(cmd: &Command) -> [u8; 32] {
    struct Canon(Sha256);
    impl Canon {
        fn put(&mut self, b: &[u8]) {
            self.0.update((b.len() as u64).to_be_bytes());
            self.0.update(b);
        }
        fn id(&mut self, id: Option<Id>) {
            self.put(
                id.map(|i| i.0.into_bytes())
                    .as_ref()
                    .map_or(&[][..], |b| &b[..]),
            );
        }
        fn time(&mut self, t: Option<Time>) {
            self.put(&t.map_or(Vec::new(), |t| t.0.to_be_bytes().to_vec()));
        }
    }
    let mut d = Canon(Sha256::new());
    match cmd {
        Command::CreateChannel(c) => {
            d.put(b"CreateChannel");
            d.put(c.display_name.as_bytes());
            for p in &c.parties {
                d.put(p.as_str().as_bytes());
            }
            d.put(&(c.mediators.len() as u64).to_be_bytes());
            for p in &c.mediators {
                d.put(p.as_str().as_bytes());
            }
        }
        Command::SendMessage(m) => {
            d.put(b"SendMessage");
            d.id(m.channel_id);
            d.put(m.subject.as_bytes());
            d.put(m.body.as_bytes());
            d.put(&(m.labels.len() as u64).to_be_bytes());
            for (k, v) in &m.labels {
                d.put(k.as_bytes());
                d.put(v.as_bytes());
            }
            d.time(m.respond_by);
            d.id(m.in_reply_to);
            d.time(m.occur_time);
        }
        Command::MoveMessage(mv) => {
            d.put(mv.action.method().as_bytes());
            d.id(Some(mv.message_id));
            d.put(mv.note.as_bytes());
            d.time(mv.occur_time);
            d.put(&mv.expected_version.to_be_bytes());
        }
        // No request_id on the other commands.
        other => d.put(format!("{other:?}").as_bytes()),
    }
    d.0.finalize().into()
}
