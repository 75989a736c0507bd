//! Validated write requests: what the gRPC layer hands the writer.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

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

    /// A digest of the request as the client sent it (the caller and method are
    /// part of the key already), over an explicit, length-prefixed encoding of
    /// its fields, so it stays the same across versions of this code.
    pub fn fingerprint(&self) -> [u8; 32] {
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
        match self {
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
}
