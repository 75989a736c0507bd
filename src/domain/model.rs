//! The record's types: parties, channels, messages, hops and events.

use std::collections::BTreeMap;
use std::fmt;

/// A point in time: microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub i64);

impl Time {
    /// This time plus `secs` seconds.
    pub fn plus_secs(self, secs: i64) -> Time {
        Time(self.0.saturating_add(secs.saturating_mul(1_000_000)))
    }
}

/// A validated party id: lowercase letters, digits and `-`, starting with a
/// letter, at most 63 characters, not `admin` or `system`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartyId(String);

impl PartyId {
    /// Parses a party id.
    pub fn parse(s: &str) -> Result<PartyId, String> {
        if s.is_empty() {
            return Err("is required".into());
        }
        if s.len() > 63 {
            return Err("must be at most 63 characters".into());
        }
        let mut chars = s.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_lowercase()) {
            return Err("must start with a lowercase letter".into());
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err("may hold only lowercase letters, digits and '-'".into());
        }
        if s == ADMIN || s == SYSTEM {
            return Err(format!("'{s}' is reserved"));
        }
        Ok(PartyId(s.to_owned()))
    }

    /// Wraps a party id read back from the store, which validated it on entry.
    pub fn trusted(s: String) -> PartyId {
        PartyId(s)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The actor name of the admin in events.
pub const ADMIN: &str = "admin";
/// The actor name of the server itself (expiry) in events.
pub const SYSTEM: &str = "system";

/// A server-assigned id (UUID v7) of a channel, message, token or event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(pub uuid::Uuid);

impl Id {
    /// A fresh time-ordered id.
    pub fn new() -> Id {
        Id(uuid::Uuid::now_v7())
    }

    /// Parses a UUID in its usual text forms.
    pub fn parse(s: &str) -> Result<Id, String> {
        if s.is_empty() {
            return Err("is required".into());
        }
        uuid::Uuid::try_parse(s)
            .map(Id)
            .map_err(|_| format!("'{}' is not a UUID", truncate(s, 64)))
    }
}

impl Default for Id {
    fn default() -> Self {
        Id::new()
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Who is calling: the admin, or one party.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// The admin: manages parties and tokens, sees everything, is no party.
    Admin,
    /// A party, named by its token.
    Party(PartyId),
}

impl Caller {
    /// Need-to-know (DESIGN §3), the one definition of who sees what: the
    /// admin sees every record; a party, a record whose audience names it.
    pub fn may_see<'a>(&self, mut audience: impl Iterator<Item = &'a PartyId>) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Party(p) => audience.any(|a| a == p),
        }
    }

    /// The name recorded as an event's actor.
    pub fn actor(&self) -> &str {
        match self {
            Caller::Admin => ADMIN,
            Caller::Party(p) => p.as_str(),
        }
    }

    /// The party, if the caller is one.
    pub fn party(&self) -> Option<&PartyId> {
        match self {
            Caller::Admin => None,
            Caller::Party(p) => Some(p),
        }
    }
}

/// What sort of party.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartyKind {
    /// A state or government.
    State,
    /// An organisation.
    Organization,
    /// A person.
    Person,
}

/// Anyone who sends, receives or relays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// Stable id.
    pub id: PartyId,
    /// Human name.
    pub display_name: String,
    /// What sort of party.
    pub kind: PartyKind,
    /// When it was registered.
    pub create_time: Time,
}

/// Channel lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    /// Takes new messages.
    Open,
    /// No new messages; in-flight ones go on.
    Suspended,
    /// Final.
    Closed,
}

impl ChannelState {
    /// The contract's name of the state (`SUSPENDED`).
    pub fn name(self) -> &'static str {
        match self {
            ChannelState::Open => "OPEN",
            ChannelState::Suspended => "SUSPENDED",
            ChannelState::Closed => "CLOSED",
        }
    }
}

/// A standing route between two principals through mediators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    /// Server-assigned id.
    pub id: Id,
    /// Human name.
    pub display_name: String,
    /// The two principals.
    pub parties: [PartyId; 2],
    /// Mediators in route order from `parties[0]` to `parties[1]`.
    pub mediators: Vec<PartyId>,
    /// Current state.
    pub state: ChannelState,
    /// Incremented by every change, from 1.
    pub version: u64,
    /// When it was opened (server time).
    pub create_time: Time,
    /// When it last changed (server time).
    pub update_time: Time,
}

impl Channel {
    /// Whether `caller` may see this channel ([`Caller::may_see`]).
    pub fn visible_to(&self, caller: &Caller) -> bool {
        caller.may_see(self.members())
    }

    /// Every party of the channel, principals then mediators: the audience
    /// of the channel and of everything on it (DESIGN §3). The stores index
    /// it (`channel_members`) to select what a party may see.
    pub fn members(&self) -> impl Iterator<Item = &PartyId> {
        self.parties.iter().chain(self.mediators.iter())
    }
}

/// Message lifecycle (DESIGN §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageState {
    /// Waiting for the first mediator.
    Submitted,
    /// At least one mediator has taken it.
    InTransit,
    /// Handed to the recipient.
    Delivered,
    /// The recipient confirmed receipt.
    Acknowledged,
    /// The recipient replied.
    Answered,
    /// A mediator refused it (final).
    Declined,
    /// The recipient refused it (final).
    Rejected,
    /// The sender took it back (final).
    Withdrawn,
    /// Its deadline passed (final).
    Expired,
}

impl MessageState {
    /// Every state, for tests and tables.
    pub const ALL: [MessageState; 9] = [
        MessageState::Submitted,
        MessageState::InTransit,
        MessageState::Delivered,
        MessageState::Acknowledged,
        MessageState::Answered,
        MessageState::Declined,
        MessageState::Rejected,
        MessageState::Withdrawn,
        MessageState::Expired,
    ];

    /// The contract's name of the state (`IN_TRANSIT`).
    pub fn name(self) -> &'static str {
        match self {
            MessageState::Submitted => "SUBMITTED",
            MessageState::InTransit => "IN_TRANSIT",
            MessageState::Delivered => "DELIVERED",
            MessageState::Acknowledged => "ACKNOWLEDGED",
            MessageState::Answered => "ANSWERED",
            MessageState::Declined => "DECLINED",
            MessageState::Rejected => "REJECTED",
            MessageState::Withdrawn => "WITHDRAWN",
            MessageState::Expired => "EXPIRED",
        }
    }

    /// States in which a passing `respond_by` expires the message.
    pub fn can_expire(self) -> bool {
        self.can_move_to(MessageState::Expired)
    }

    /// Every move of a message's state (DESIGN §2, "Allowed moves, and
    /// nothing else"); a step that would make another is refused.
    pub const MOVES: [(MessageState, MessageState); 17] = {
        use MessageState::*;
        [
            (Submitted, InTransit),
            (Submitted, Delivered),
            (Submitted, Declined),
            (Submitted, Withdrawn),
            (Submitted, Expired),
            (InTransit, InTransit),
            (InTransit, Delivered),
            (InTransit, Declined),
            (InTransit, Withdrawn),
            (InTransit, Expired),
            (Delivered, Acknowledged),
            (Delivered, Answered),
            (Delivered, Rejected),
            (Delivered, Expired),
            (Acknowledged, Answered),
            (Acknowledged, Rejected),
            (Acknowledged, Expired),
        ]
    };

    /// Whether a message may move from this state to `to`.
    pub fn can_move_to(self, to: MessageState) -> bool {
        MessageState::MOVES.contains(&(self, to))
    }
}

/// Hop lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HopState {
    /// Not taken yet.
    Pending,
    /// Held by the mediator.
    Accepted,
    /// Handed on.
    Forwarded,
    /// Refused by the mediator.
    Declined,
    /// Will not happen.
    Cancelled,
}

/// One mediator's step of a message's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The mediator.
    pub mediator: PartyId,
    /// Current state.
    pub state: HopState,
    /// Reported time the mediator took it.
    pub accept_time: Option<Time>,
    /// Reported time the mediator handed it on.
    pub forward_time: Option<Time>,
    /// Note of the hop's latest step.
    pub note: String,
}

/// One communication from one principal to the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Server-assigned id.
    pub id: Id,
    /// The channel it travels on.
    pub channel_id: Id,
    /// The principal who sent it.
    pub sender: PartyId,
    /// The other principal.
    pub recipient: PartyId,
    /// Subject line.
    pub subject: String,
    /// Body (may be empty).
    pub body: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Optional deadline.
    pub respond_by: Option<Time>,
    /// The message this answers.
    pub in_reply_to: Option<Id>,
    /// First message of the thread.
    pub thread_id: Id,
    /// Current state.
    pub state: MessageState,
    /// One hop per mediator in travel order.
    pub hops: Vec<Hop>,
    /// Incremented by every change, from 1.
    pub version: u64,
    /// When it was recorded (server time).
    pub create_time: Time,
    /// When it last changed (server time).
    pub update_time: Time,
    /// When the sender reports it was sent.
    pub send_time: Time,
}

impl Message {
    /// Index of the current hop: the first that is not `FORWARDED`.
    pub fn current_hop(&self) -> Option<usize> {
        self.hops
            .iter()
            .position(|h| h.state != HopState::Forwarded)
    }

    /// The message's audience: its sender, its recipient and the mediators
    /// of its route, who are exactly the members of its channel (a route is
    /// the channel's mediators, in the sender's direction).
    pub fn audience(&self) -> impl Iterator<Item = &PartyId> {
        [&self.sender, &self.recipient]
            .into_iter()
            .chain(self.hops.iter().map(|h| &h.mediator))
    }

    /// Whether `caller` may see this message ([`Caller::may_see`]).
    pub fn visible_to(&self, caller: &Caller) -> bool {
        caller.may_see(self.audience())
    }

    /// Whether the deadline has passed at `now` in a state it can expire from.
    pub fn is_overdue(&self, now: Time) -> bool {
        self.state.can_expire() && self.respond_by.is_some_and(|t| t <= now)
    }
}

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// A message was sent.
    MessageSent,
    /// A mediator took it.
    MessageAccepted,
    /// A mediator handed it on to the next.
    MessageForwarded,
    /// The last mediator handed it to the recipient.
    MessageDelivered,
    /// A mediator refused it.
    MessageDeclined,
    /// The recipient confirmed receipt.
    MessageAcknowledged,
    /// The recipient refused it.
    MessageRejected,
    /// The sender took it back.
    MessageWithdrawn,
    /// The recipient replied.
    MessageAnswered,
    /// Its deadline passed.
    MessageExpired,
    /// A channel was opened.
    ChannelOpened,
    /// A channel was suspended.
    ChannelSuspended,
    /// A channel was resumed.
    ChannelResumed,
    /// A channel was closed.
    ChannelClosed,
}

impl EventType {
    /// Whether the event creates its subject (a new channel or message)
    /// rather than changing it.
    pub fn creates(self) -> bool {
        matches!(self, EventType::ChannelOpened | EventType::MessageSent)
    }
}

impl Subject {
    /// Who may see an event about this subject.
    pub fn audience(&self) -> Vec<&PartyId> {
        match self {
            Subject::Message(m) => m.audience().collect(),
            Subject::Channel(c) => c.members().collect(),
        }
    }
}

/// The state of an event's subject after the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A message event.
    Message(Box<Message>),
    /// A channel event.
    Channel(Box<Channel>),
}

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the global log.
    pub sequence: u64,
    /// Unique id.
    pub event_id: Id,
    /// What changed.
    pub kind: EventType,
    /// Party id, `admin` or `system`.
    pub actor: String,
    /// The channel concerned.
    pub channel_id: Id,
    /// Hop index, on hop events.
    pub hop_index: Option<i32>,
    /// The note given with the change.
    pub note: String,
    /// When it happened, as reported.
    pub occur_time: Time,
    /// When the server recorded it.
    pub record_time: Time,
    /// The subject after the change.
    pub subject: Subject,
}

impl Event {
    /// The message concerned, if any.
    pub fn message(&self) -> Option<&Message> {
        match &self.subject {
            Subject::Message(m) => Some(m),
            Subject::Channel(_) => None,
        }
    }

    /// The message id, if a message event.
    pub fn message_id(&self) -> Option<Id> {
        self.message().map(|m| m.id)
    }
}

/// A token as stored: its secret only as a SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Its id.
    pub token_id: Id,
    /// The party it names.
    pub party_id: PartyId,
    /// SHA-256 of the secret.
    pub secret_hash: [u8; 32],
    /// Whether it may only read.
    pub read_only: bool,
    /// When it was issued.
    pub create_time: Time,
    /// When it stops working, if it does.
    pub expire_time: Option<Time>,
    /// When it was revoked, if it was.
    pub revoke_time: Option<Time>,
    /// When it last authenticated a call, as last stored.
    pub last_use_time: Option<Time>,
}

impl TokenRecord {
    /// Whether it authenticates calls at `now`.
    pub fn valid_at(&self, now: Time) -> bool {
        self.revoke_time.is_none() && self.expire_time.is_none_or(|t| now < t)
    }
}
