//! The decision of a write. Given a command, who asks, and what the store
//! loaded for it ([`Loaded`]), [`decide`] says what happens: a refusal, or
//! the records to write and the events to append ([`Decision`]), checked in
//! the contract's order (DESIGN §4: `INVALID_ARGUMENT` was settled by
//! validation; then `NOT_FOUND`, `PERMISSION_DENIED`, the idempotency
//! record, `ABORTED`, `FAILED_PRECONDITION`).
//!
//! It is pure: no I/O, no clock, no randomness. The store passes the time
//! and the id a new record gets, loads what the command names, calls this,
//! and writes the decision, so a refused command has written nothing.

use std::collections::BTreeSet;

use super::rules::{self, Step};
use super::{
    Caller, Channel, ChannelChange, ChannelState, Command, EventType, Id, Message, MessageAction,
    MessageMove, MessageState, NewChannel, NewMessage, Party, PartyId, Reason, Rejection, Subject,
    Time, TokenRecord,
};

/// Most messages one `ExpireDue` expires (the next tick takes the rest).
pub const EXPIRE_BATCH: usize = 1000;

/// What the store loaded for one command, as the record was before it.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Of the parties the command names, those that are registered.
    pub registered: BTreeSet<PartyId>,
    /// The token the command names: `Some(revoked)` if it exists.
    pub token_revoked: Option<bool>,
    /// The channel the command names (for a reply without a channel, the
    /// original's channel).
    pub channel: Option<Channel>,
    /// The message the command names: the one moved, or the original of a
    /// reply.
    pub message: Option<Message>,
    /// The idempotency record of the command's `request_id`, if one exists.
    pub prior: Option<Prior>,
    /// For `ExpireDue`: messages whose deadline has passed, in a state that
    /// expires (at most [`EXPIRE_BATCH`]).
    pub overdue: Vec<Message>,
}

/// An idempotency record, and the resource it names as it now is.
#[derive(Debug, Clone)]
pub struct Prior {
    /// The fingerprint of the request first made with this id.
    pub fingerprint: [u8; 32],
    /// The resource it created or changed, as it now is.
    pub resource: Option<Resource>,
}

/// A channel or a message.
#[derive(Debug, Clone)]
pub enum Resource {
    /// A channel.
    Channel(Channel),
    /// A message.
    Message(Message),
}

/// The circumstances of a decision, given by the store.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Who asks.
    pub caller: &'a Caller,
    /// The time of recording.
    pub now: Time,
    /// The id a record created by this command gets.
    pub fresh: Id,
}

/// What a command does: its writes, in order, and what it answers.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The writes, in the order they are made.
    pub writes: Vec<Write>,
    /// The answer once they are committed.
    pub outcome: Outcome,
}

/// One write of a decision.
#[derive(Debug, Clone)]
pub enum Write {
    /// Register a party.
    Party(Party),
    /// Store a token.
    Token(TokenRecord),
    /// Move a token's stored last use forward to `at` (never back).
    TouchToken {
        /// The token.
        token_id: Id,
        /// Its latest use.
        at: Time,
    },
    /// Mark a token revoked.
    RevokeToken {
        /// The token.
        token_id: Id,
        /// When.
        at: Time,
    },
    /// Append an event and store its subject as it now is: inserted when the
    /// event creates it ([`EventType::creates`]), else updated.
    Event(Draft),
    /// Store an idempotency record.
    Request {
        /// The RPC that scopes it.
        method: &'static str,
        /// The client's id.
        request_id: Id,
        /// The request's fingerprint ([`Command::fingerprint`]).
        fingerprint: [u8; 32],
        /// The resource it created or changed.
        resource: Id,
    },
    /// Write the health probe's row.
    Probe(Time),
}

/// An event before the log gives it a sequence and an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// Party id, `admin` or `system`.
    pub actor: String,
    /// What changed.
    pub kind: EventType,
    /// The hop concerned, on hop events.
    pub hop_index: Option<i32>,
    /// The note given with the change.
    pub note: String,
    /// When it happened, as reported.
    pub occur_time: Time,
    /// The subject after the change.
    pub subject: Subject,
}

/// What a command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A party was registered.
    Party(Party),
    /// A token was issued.
    TokenIssued(TokenRecord),
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

/// Decides `cmd` for `cx.caller` over what was loaded for it.
pub fn decide(cx: Context<'_>, cmd: &Command, loaded: &Loaded) -> Result<Decision, Rejection> {
    let caller = cx.caller;
    match cmd {
        Command::CreateParty(p) => {
            admin_only(caller)?;
            if loaded.registered.contains(&p.id) {
                return Err(Rejection::new(
                    Reason::PARTY_EXISTS,
                    format!("party '{}' already exists", p.id),
                ));
            }
            let party = Party {
                id: p.id.clone(),
                display_name: p.display_name.clone(),
                kind: p.kind,
                create_time: cx.now,
            };
            Ok(Decision {
                writes: vec![Write::Party(party.clone())],
                outcome: Outcome::Party(party),
            })
        }
        Command::IssueToken {
            party_id,
            token_id,
            secret_hash,
            read_only,
            expire_time,
        } => {
            admin_only(caller)?;
            if !loaded.registered.contains(party_id) {
                return Err(Rejection::new(
                    Reason::PARTY_NOT_FOUND,
                    format!("no party '{party_id}'"),
                ));
            }
            if expire_time.is_some_and(|t| t <= cx.now) {
                return Err(Rejection::field("expire_time", "must lie in the future"));
            }
            let token = TokenRecord {
                token_id: *token_id,
                party_id: party_id.clone(),
                secret_hash: *secret_hash,
                read_only: *read_only,
                create_time: cx.now,
                expire_time: *expire_time,
                revoke_time: None,
                last_use_time: None,
            };
            Ok(Decision {
                writes: vec![Write::Token(token.clone())],
                outcome: Outcome::TokenIssued(token),
            })
        }
        Command::TouchTokens(uses) => {
            admin_only(caller)?;
            Ok(Decision {
                writes: uses
                    .iter()
                    .map(|&(token_id, at)| Write::TouchToken { token_id, at })
                    .collect(),
                outcome: Outcome::Touched,
            })
        }
        Command::RevokeToken { token_id } => {
            admin_only(caller)?;
            match loaded.token_revoked {
                None => Err(Rejection::new(Reason::TOKEN_NOT_FOUND, "no such token")),
                Some(true) => Err(Rejection::new(
                    Reason::TOKEN_REVOKED,
                    "the token is already revoked",
                )),
                Some(false) => Ok(Decision {
                    writes: vec![Write::RevokeToken {
                        token_id: *token_id,
                        at: cx.now,
                    }],
                    outcome: Outcome::TokenRevoked {
                        token_id: *token_id,
                        revoke_time: cx.now,
                    },
                }),
            }
        }
        Command::CreateChannel(c) => create_channel(cx, c, cmd, loaded),
        Command::ChangeChannel(c) => change_channel(cx, c, loaded),
        Command::SendMessage(m) => send(cx, m, cmd, loaded),
        Command::MoveMessage(mv) => move_message(cx, mv, cmd, loaded),
        Command::ExpireDue => Ok(expire_due(cx.now, &loaded.overdue)),
        Command::Probe => Ok(Decision {
            writes: vec![Write::Probe(cx.now)],
            outcome: Outcome::Probed,
        }),
    }
}

fn create_channel(
    cx: Context<'_>,
    c: &NewChannel,
    cmd: &Command,
    loaded: &Loaded,
) -> Result<Decision, Rejection> {
    for (i, p) in c.parties.iter().chain(c.mediators.iter()).enumerate() {
        if !loaded.registered.contains(p) {
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
    if let Caller::Party(p) = cx.caller
        && !c.parties.contains(p)
    {
        return Err(Rejection::new(
            Reason::NOT_A_PRINCIPAL,
            "a channel is opened by the admin or by one of its two principals",
        ));
    }
    if let Some(done) = replayed(cmd, c.request_id, loaded)? {
        return Ok(done);
    }
    let channel = Channel {
        id: cx.fresh,
        display_name: c.display_name.clone(),
        parties: c.parties.clone(),
        mediators: c.mediators.clone(),
        state: ChannelState::Open,
        version: 1,
        create_time: cx.now,
        update_time: cx.now,
    };
    let mut writes = vec![Write::Event(Draft {
        actor: cx.caller.actor().to_owned(),
        kind: EventType::ChannelOpened,
        hop_index: None,
        note: String::new(),
        occur_time: cx.now,
        subject: Subject::Channel(Box::new(channel.clone())),
    })];
    writes.extend(remember(cmd, channel.id));
    Ok(Decision {
        writes,
        outcome: Outcome::Channel(channel),
    })
}

fn change_channel(
    cx: Context<'_>,
    c: &ChannelChange,
    loaded: &Loaded,
) -> Result<Decision, Rejection> {
    let channel = visible_channel(loaded, cx.caller)?;
    rules::authorize_channel_change(channel, cx.caller)?;
    rules::check_version(c.expected_version, channel.version)?;
    let (channel, kind) = rules::change_channel(channel, c.action, cx.now)?;
    Ok(Decision {
        writes: vec![Write::Event(Draft {
            actor: cx.caller.actor().to_owned(),
            kind,
            hop_index: None,
            note: c.note.clone(),
            occur_time: cx.now,
            subject: Subject::Channel(Box::new(channel.clone())),
        })],
        outcome: Outcome::Channel(channel),
    })
}

fn send(
    cx: Context<'_>,
    m: &NewMessage,
    cmd: &Command,
    loaded: &Loaded,
) -> Result<Decision, Rejection> {
    let caller = cx.caller;
    // NOT_FOUND first (the original of a reply, then the channel), then
    // PERMISSION_DENIED.
    let original = match m.in_reply_to {
        None => None,
        Some(_) => Some(visible_message(loaded, caller)?),
    };
    // The channel given, or for a reply without one, the original's.
    let Some(channel_id) = m.channel_id.or(original.map(|o| o.channel_id)) else {
        return Err(Rejection::field("channel_id", "is required"));
    };
    let channel = visible_channel(loaded, caller)?;
    if channel.id != channel_id {
        return Err(rules::channel_not_found());
    }
    if let Some(o) = original {
        rules::authorize(MessageAction::Answer, rules::role(o, caller))?;
    }
    let recipient = rules::authorize_send(channel, caller)?.clone();
    if let Some(o) = original
        && o.sender != recipient
    {
        return Err(Rejection::new(
            Reason::REPLY_CHANNEL_MISMATCH,
            "a reply must travel on a channel joining the same two parties as the original",
        ));
    }
    if let Some(done) = replayed(cmd, m.request_id, loaded)? {
        return Ok(done);
    }
    rules::channel_accepts_messages(channel)?;
    let answered = match original {
        Some(o) => Some(rules::apply(
            o,
            MessageAction::Answer,
            rules::role(o, caller),
            "",
            cx.now,
            cx.now,
        )?),
        None => None,
    };
    let sender = caller.party().cloned().ok_or_else(|| {
        Rejection::new(Reason::ADMIN_NOT_A_PARTY, "the admin cannot send messages")
    })?;
    let id = cx.fresh;
    let occur = m.occur_time.unwrap_or(cx.now);
    let message = Message {
        id,
        channel_id: channel.id,
        hops: rules::route(channel, &sender),
        sender,
        recipient,
        subject: m.subject.clone(),
        body: m.body.clone(),
        labels: m.labels.clone(),
        respond_by: m.respond_by,
        in_reply_to: m.in_reply_to,
        thread_id: original.map_or(id, |o| o.thread_id),
        state: MessageState::Submitted,
        version: 1,
        create_time: cx.now,
        update_time: cx.now,
        send_time: occur,
    };
    let mut writes = vec![Write::Event(Draft {
        actor: caller.actor().to_owned(),
        kind: EventType::MessageSent,
        hop_index: None,
        note: String::new(),
        occur_time: occur,
        subject: Subject::Message(Box::new(message.clone())),
    })];
    if let Some(step) = answered {
        writes.push(Write::Event(Draft {
            actor: caller.actor().to_owned(),
            kind: step.kind,
            hop_index: None,
            note: String::new(),
            occur_time: occur,
            subject: Subject::Message(Box::new(step.message)),
        }));
    }
    writes.extend(remember(cmd, id));
    Ok(Decision {
        writes,
        outcome: Outcome::Message(message),
    })
}

fn move_message(
    cx: Context<'_>,
    mv: &MessageMove,
    cmd: &Command,
    loaded: &Loaded,
) -> Result<Decision, Rejection> {
    let msg = visible_message(loaded, cx.caller)?;
    let role = rules::role(msg, cx.caller);
    rules::authorize(mv.action, role)?;
    if let Some(done) = replayed(cmd, mv.request_id, loaded)? {
        return Ok(done);
    }
    rules::check_version(mv.expected_version, msg.version)?;
    let occur = mv.occur_time.unwrap_or(cx.now);
    let Step {
        message,
        kind,
        hop_index,
    } = rules::apply(msg, mv.action, role, &mv.note, occur, cx.now)?;
    let mut writes = vec![Write::Event(Draft {
        actor: cx.caller.actor().to_owned(),
        kind,
        hop_index,
        note: mv.note.clone(),
        occur_time: occur,
        subject: Subject::Message(Box::new(message.clone())),
    })];
    writes.extend(remember(cmd, msg.id));
    Ok(Decision {
        writes,
        outcome: Outcome::Message(message),
    })
}

/// The expiry of every overdue message: the server's step, never refused.
fn expire_due(now: Time, overdue: &[Message]) -> Decision {
    let writes: Vec<Write> = overdue
        .iter()
        .filter_map(|m| rules::expire(m, now))
        .map(|(step, deadline)| {
            Write::Event(Draft {
                actor: super::SYSTEM.to_owned(),
                kind: step.kind,
                hop_index: None,
                note: String::new(),
                occur_time: deadline,
                subject: Subject::Message(Box::new(step.message)),
            })
        })
        .collect();
    Decision {
        outcome: Outcome::Expired(writes.len()),
        writes,
    }
}

/// The loaded channel, if `caller` may see it.
fn visible_channel<'l>(loaded: &'l Loaded, caller: &Caller) -> Result<&'l Channel, Rejection> {
    loaded
        .channel
        .as_ref()
        .filter(|c| c.visible_to(caller))
        .ok_or_else(rules::channel_not_found)
}

/// The loaded message, if `caller` may see it.
fn visible_message<'l>(loaded: &'l Loaded, caller: &Caller) -> Result<&'l Message, Rejection> {
    loaded
        .message
        .as_ref()
        .filter(|m| m.visible_to(caller))
        .ok_or_else(rules::message_not_found)
}

/// If this request was made before: the answer it had (the resource as it
/// now is), or `REQUEST_ID_REUSED` when the id came with another request.
fn replayed(
    cmd: &Command,
    request_id: Option<Id>,
    loaded: &Loaded,
) -> Result<Option<Decision>, Rejection> {
    let (Some(rid), Some(prior)) = (request_id, &loaded.prior) else {
        return Ok(None);
    };
    if prior.fingerprint != cmd.fingerprint() {
        return Err(Rejection::new(
            Reason::REQUEST_ID_REUSED,
            format!("request_id {rid} was already used for a different request"),
        ));
    }
    let outcome = match (&prior.resource, cmd) {
        (Some(Resource::Channel(c)), Command::CreateChannel(_)) => Outcome::Channel(c.clone()),
        (Some(Resource::Message(m)), Command::SendMessage(_) | Command::MoveMessage(_)) => {
            Outcome::Message(m.clone())
        }
        (_, Command::CreateChannel(_)) => return Err(rules::channel_not_found()),
        _ => return Err(rules::message_not_found()),
    };
    Ok(Some(Decision {
        writes: Vec::new(),
        outcome,
    }))
}

/// The idempotency record of a command that carries a `request_id`.
fn remember(cmd: &Command, resource: Id) -> Option<Write> {
    let (method, request_id) = cmd.request_key()?;
    Some(Write::Request {
        method,
        request_id,
        fingerprint: cmd.fingerprint(),
        resource,
    })
}

/// `ADMIN_ONLY` unless the admin asks (parties and tokens).
pub fn admin_only(caller: &Caller) -> Result<(), Rejection> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::Party(_) => Err(Rejection::new(
            Reason::ADMIN_ONLY,
            "only the admin may manage parties and tokens",
        )),
    }
}
