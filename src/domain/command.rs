//! Validated write requests: what the gRPC layer hands the writer.

use std::collections::BTreeMap;

use super::{Id, PartyId, PartyKind, Time};

/// Register a party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewParty {
    /// The id.
    pub id: PartyId,
    /// Human name.
    pub display_name: String,
    /// What sort of party.
    pub kind: PartyKind,
}

/// Open a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChannel {
    /// Human name.
    pub display_name: String,
    /// Two distinct principals.
    pub parties: [PartyId; 2],
    /// 1–8 distinct mediators, none a principal.
    pub mediators: Vec<PartyId>,
    /// Idempotency key.
    pub request_id: Option<Id>,
}

/// A change of channel state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelAction {
    /// OPEN → SUSPENDED.
    Suspend,
    /// SUSPENDED → OPEN.
    Resume,
    /// OPEN or SUSPENDED → CLOSED.
    Close,
}

/// Suspend, resume or close a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelChange {
    /// Which channel.
    pub channel_id: Id,
    /// What to do.
    pub action: ChannelAction,
    /// Optional note.
    pub note: String,
    /// 0 = unchecked.
    pub expected_version: u64,
}

/// Send a message (or a reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The channel; `None` only for a reply (the original's channel).
    pub channel_id: Option<Id>,
    /// Subject line.
    pub subject: String,
    /// Body.
    pub body: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Deadline, in the future.
    pub respond_by: Option<Time>,
    /// The message this answers.
    pub in_reply_to: Option<Id>,
    /// Reported send time; `None` = time of recording.
    pub occur_time: Option<Time>,
    /// Idempotency key.
    pub request_id: Option<Id>,
}

/// A step a party takes on a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageAction {
    /// Current mediator takes it.
    Accept,
    /// Current mediator hands it on.
    Forward,
    /// Current mediator refuses it.
    Decline,
    /// Recipient confirms receipt.
    Acknowledge,
    /// Recipient refuses it.
    Reject,
    /// Sender takes it back.
    Withdraw,
    /// Recipient replies (recorded on the original by `SendMessage`).
    Answer,
}

impl MessageAction {
    /// Every action, for tests and tables.
    pub const ALL: [MessageAction; 7] = [
        MessageAction::Accept,
        MessageAction::Forward,
        MessageAction::Decline,
        MessageAction::Acknowledge,
        MessageAction::Reject,
        MessageAction::Withdraw,
        MessageAction::Answer,
    ];

    /// Whether the step needs a `note` (the reason).
    pub fn needs_note(self) -> bool {
        matches!(
            self,
            MessageAction::Decline | MessageAction::Reject | MessageAction::Withdraw
        )
    }

    /// The RPC name, which also scopes `request_id`s.
    pub fn method(self) -> &'static str {
        match self {
            MessageAction::Accept => "AcceptMessage",
            MessageAction::Forward => "ForwardMessage",
            MessageAction::Decline => "DeclineMessage",
            MessageAction::Acknowledge => "AcknowledgeMessage",
            MessageAction::Reject => "RejectMessage",
            MessageAction::Withdraw => "WithdrawMessage",
            MessageAction::Answer => SEND_MESSAGE,
        }
    }
}

/// A step on an existing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMove {
    /// Which message.
    pub message_id: Id,
    /// What to do (never `Answer`: replies are `NewMessage`s).
    pub action: MessageAction,
    /// Note (required for decline, reject, withdraw).
    pub note: String,
    /// Reported time; `None` = time of recording.
    pub occur_time: Option<Time>,
    /// 0 = unchecked.
    pub expected_version: u64,
    /// Idempotency key.
    pub request_id: Option<Id>,
}

/// Every write the writer performs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Register a party (admin).
    CreateParty(NewParty),
    /// Record a token's hash (admin).
    IssueToken {
        /// The party it names.
        party_id: PartyId,
        /// Its id.
        token_id: Id,
        /// SHA-256 of its secret.
        secret_hash: [u8; 32],
        /// Whether it may only read.
        read_only: bool,
        /// When it stops working, if it does.
        expire_time: Option<Time>,
    },
    /// Store when tokens last authenticated a call (the server, from its
    /// in-memory record of uses; never moves a time back).
    TouchTokens(Vec<(Id, Time)>),
    /// Revoke a token (admin).
    RevokeToken {
        /// Its id.
        token_id: Id,
    },
    /// Open a channel.
    CreateChannel(NewChannel),
    /// Suspend, resume or close a channel.
    ChangeChannel(ChannelChange),
    /// Send a message.
    SendMessage(NewMessage),
    /// Move a message.
    MoveMessage(MessageMove),
    /// Expire every message whose deadline has passed (the server).
    ExpireDue,
    /// Commit one small write, to learn whether the store can commit (the
    /// server's health probe). Records no event.
    Probe,
}

/// The RPC that scopes the `request_id` of [`Command::CreateChannel`].
pub const CREATE_CHANNEL: &str = "CreateChannel";
/// The RPC that scopes the `request_id` of [`Command::SendMessage`].
pub const SEND_MESSAGE: &str = "SendMessage";

impl Command {
    /// The RPC that scopes this command's `request_id`, and the id, when
    /// it carries one.
    pub fn request_key(&self) -> Option<(&'static str, Id)> {
        match self {
            Command::CreateChannel(c) => c.request_id.map(|r| (CREATE_CHANNEL, r)),
            Command::SendMessage(m) => m.request_id.map(|r| (SEND_MESSAGE, r)),
            Command::MoveMessage(mv) => mv.request_id.map(|r| (mv.action.method(), r)),
            _ => None,
        }
    }
}
