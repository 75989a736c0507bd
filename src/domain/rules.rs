//! The state machine and who may do what: the only place that knows the
//! allowed moves (DESIGN §2–3).

use super::{
    Caller, Channel, ChannelAction, ChannelState, Class, EventType, Hop, HopState, Message,
    MessageAction, MessageState, PartyId, Reason, Rejection, Time,
};

/// The caller's role with respect to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The principal who sent it.
    Sender,
    /// The other principal.
    Recipient,
    /// The mediator of the current hop.
    CurrentMediator,
    /// A mediator on the route whose hop is not current.
    OtherMediator,
    /// Not part of the message: it does not exist for them.
    Outsider,
    /// The admin: sees everything, is no party.
    Admin,
}

/// The role of `caller` for `msg`.
pub fn role(msg: &Message, caller: &Caller) -> Role {
    let party = match caller {
        Caller::Admin => return Role::Admin,
        Caller::Party(p) => p,
    };
    if &msg.sender == party {
        Role::Sender
    } else if &msg.recipient == party {
        Role::Recipient
    } else if let Some(i) = msg.hops.iter().position(|h| &h.mediator == party) {
        if msg.current_hop() == Some(i) {
            Role::CurrentMediator
        } else {
            Role::OtherMediator
        }
    } else {
        Role::Outsider
    }
}

/// `NOT_FOUND` / `PERMISSION_DENIED` checks: may this role ever take this step?
pub fn authorize(action: MessageAction, role: Role) -> Result<(), Rejection> {
    use MessageAction::*;
    use Role::*;
    match (role, action) {
        (Outsider, _) => Err(Rejection::new(Reason::MESSAGE_NOT_FOUND, "no such message")),
        (Admin, _) => Err(Rejection::new(
            Reason::ADMIN_NOT_A_PARTY,
            "the admin is not a party and cannot send or move messages",
        )),
        (CurrentMediator | OtherMediator, Accept | Forward | Decline) => Ok(()),
        (_, Accept | Forward | Decline) => Err(Rejection::new(
            Reason::NOT_A_MEDIATOR,
            "only a mediator on the route may accept, forward or decline",
        )),
        (Recipient, Acknowledge | Reject | Answer) => Ok(()),
        (_, Acknowledge | Reject | Answer) => Err(Rejection::new(
            Reason::NOT_THE_RECIPIENT,
            "only the recipient may acknowledge, reject or reply to a message",
        )),
        (Sender, Withdraw) => Ok(()),
        (_, Withdraw) => Err(Rejection::new(
            Reason::NOT_THE_SENDER,
            "only the sender may withdraw a message",
        )),
    }
}

/// `ABORTED` check: `expected` of 0 is unchecked.
pub fn check_version(expected: u64, actual: u64) -> Result<(), Rejection> {
    if expected != 0 && expected != actual {
        return Err(Rejection::new(
            Reason::VERSION_MISMATCH,
            format!("expected version {expected}, but the current version is {actual}"),
        )
        .with("current_version", actual));
    }
    Ok(())
}

/// The result of a step: the new message and the event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The message after the step.
    pub message: Message,
    /// The event type.
    pub kind: EventType,
    /// The hop concerned, for hop events.
    pub hop_index: Option<i32>,
}

/// Applies an authorized step (`FAILED_PRECONDITION` checks and the move).
/// `occur` is the reported time of the step, `now` the recording time. A
/// refusal carries the message's `current_state` and `current_version` in
/// its metadata (and `current_mediator` for `NOT_CURRENT_MEDIATOR`), so a
/// client need not parse the message to learn them.
pub fn apply(
    msg: &Message,
    action: MessageAction,
    role: Role,
    note: &str,
    occur: Time,
    now: Time,
) -> Result<Step, Rejection> {
    apply_step(msg, action, role, note, occur, now).map_err(|r| {
        if r.class() != Class::FailedPrecondition {
            return r;
        }
        let mut r = r.with("current_version", msg.version);
        if r.reason != Reason::MESSAGE_EXPIRED {
            r = r.with("current_state", msg.state.name());
        }
        if r.reason == Reason::NOT_CURRENT_MEDIATOR
            && let Some(h) = msg.current_hop().and_then(|i| msg.hops.get(i))
        {
            r = r.with("current_mediator", &h.mediator);
        }
        r
    })
}

fn apply_step(
    msg: &Message,
    action: MessageAction,
    role: Role,
    note: &str,
    occur: Time,
    now: Time,
) -> Result<Step, Rejection> {
    use MessageAction::*;
    use MessageState::*;
    if msg.is_overdue(now) {
        return Err(Rejection::new(
            Reason::MESSAGE_EXPIRED,
            "the message's respond_by deadline has passed",
        ));
    }
    let mut m = msg.clone();
    m.version += 1;
    m.update_time = now;
    let (kind, hop_index) = match action {
        Accept | Forward | Decline => {
            if !matches!(msg.state, Submitted | InTransit) {
                return Err(Rejection::new(
                    Reason::MESSAGE_NOT_IN_TRANSIT,
                    format!("the message is {}, no longer in transit", msg.state.name()),
                ));
            }
            let i = match (role, msg.current_hop()) {
                (Role::CurrentMediator, Some(i)) => i,
                _ => {
                    return Err(Rejection::new(
                        Reason::NOT_CURRENT_MEDIATOR,
                        "your hop is not the current one: the message is with another mediator",
                    ));
                }
            };
            let last = i + 1 == m.hops.len();
            let hop = &mut m.hops[i];
            hop.note = note.to_owned();
            match action {
                Accept => {
                    if hop.state != HopState::Pending {
                        return Err(Rejection::new(
                            Reason::HOP_ALREADY_ACCEPTED,
                            "you have already accepted this message; forward or decline it",
                        ));
                    }
                    hop.state = HopState::Accepted;
                    hop.accept_time = Some(occur);
                    m.state = InTransit;
                    (EventType::MessageAccepted, i)
                }
                Forward => {
                    if hop.state == HopState::Pending {
                        hop.accept_time = Some(occur);
                    }
                    hop.state = HopState::Forwarded;
                    hop.forward_time = Some(occur);
                    if last {
                        m.state = Delivered;
                        (EventType::MessageDelivered, i)
                    } else {
                        m.state = InTransit;
                        (EventType::MessageForwarded, i)
                    }
                }
                _ => {
                    hop.state = HopState::Declined;
                    cancel_open_hops(&mut m.hops);
                    m.state = Declined;
                    (EventType::MessageDeclined, i)
                }
            }
        }
        .map_hop(),
        Acknowledge => {
            if msg.state != Delivered {
                return Err(not_delivered(msg.state));
            }
            m.state = Acknowledged;
            (EventType::MessageAcknowledged, None)
        }
        Reject | Answer => {
            if !matches!(msg.state, Delivered | Acknowledged) {
                return Err(not_delivered(msg.state));
            }
            if action == Reject {
                m.state = Rejected;
                (EventType::MessageRejected, None)
            } else {
                m.state = Answered;
                (EventType::MessageAnswered, None)
            }
        }
        Withdraw => {
            if !matches!(msg.state, Submitted | InTransit) {
                return Err(Rejection::new(
                    Reason::MESSAGE_NOT_IN_TRANSIT,
                    format!(
                        "the message is {}: only a message not yet delivered can be withdrawn",
                        msg.state.name()
                    ),
                ));
            }
            cancel_open_hops(&mut m.hops);
            m.state = Withdrawn;
            (EventType::MessageWithdrawn, None)
        }
    };
    if !msg.state.can_move_to(m.state) {
        return Err(Rejection::new(
            Reason::INTERNAL,
            format!(
                "{} → {} is not a move a message makes",
                msg.state.name(),
                m.state.name()
            ),
        ));
    }
    Ok(Step {
        message: m,
        kind,
        hop_index,
    })
}

/// The expiry of an overdue message by the server, if it is overdue at `now`.
/// The event's `occur_time` is the deadline itself.
pub fn expire(msg: &Message, now: Time) -> Option<(Step, Time)> {
    let deadline = msg.respond_by?;
    if !msg.is_overdue(now) || !msg.state.can_move_to(MessageState::Expired) {
        return None;
    }
    let mut m = msg.clone();
    m.version += 1;
    m.update_time = now;
    m.state = MessageState::Expired;
    cancel_open_hops(&mut m.hops);
    Some((
        Step {
            message: m,
            kind: EventType::MessageExpired,
            hop_index: None,
        },
        deadline,
    ))
}

fn cancel_open_hops(hops: &mut [Hop]) {
    for h in hops {
        if matches!(h.state, HopState::Pending | HopState::Accepted) {
            h.state = HopState::Cancelled;
        }
    }
}

fn not_delivered(state: MessageState) -> Rejection {
    Rejection::new(
        Reason::MESSAGE_NOT_DELIVERED,
        format!(
            "the message is {}, not delivered to its recipient",
            state.name()
        ),
    )
}

/// Turns a hop position into the event's `hop_index` (routes hold at most 8).
trait HopIndex {
    fn map_hop(self) -> (EventType, Option<i32>);
}

impl HopIndex for (EventType, usize) {
    fn map_hop(self) -> (EventType, Option<i32>) {
        (self.0, i32::try_from(self.1).ok())
    }
}

/// May `caller` send on `channel`? Returns the recipient.
/// Checks `NOT_FOUND`, `PERMISSION_DENIED`; not the channel's state.
pub fn authorize_send<'c>(channel: &'c Channel, caller: &Caller) -> Result<&'c PartyId, Rejection> {
    if !channel.visible_to(caller) {
        return Err(channel_not_found());
    }
    let Caller::Party(p) = caller else {
        return Err(Rejection::new(
            Reason::ADMIN_NOT_A_PARTY,
            "the admin is not a party and cannot send messages",
        ));
    };
    if &channel.parties[0] == p {
        Ok(&channel.parties[1])
    } else if &channel.parties[1] == p {
        Ok(&channel.parties[0])
    } else {
        Err(Rejection::new(
            Reason::NOT_A_PRINCIPAL,
            "only the channel's two principals send messages on it; mediators carry them",
        ))
    }
}

/// `FAILED_PRECONDITION` if the channel takes no new messages.
pub fn channel_accepts_messages(channel: &Channel) -> Result<(), Rejection> {
    channel_open(channel).map_err(|r| {
        r.with("current_state", channel.state.name())
            .with("current_version", channel.version)
    })
}

fn channel_open(channel: &Channel) -> Result<(), Rejection> {
    match channel.state {
        ChannelState::Open => Ok(()),
        ChannelState::Suspended => Err(Rejection::new(
            Reason::CHANNEL_SUSPENDED,
            "the channel is suspended and takes no new messages",
        )),
        ChannelState::Closed => Err(Rejection::new(
            Reason::CHANNEL_CLOSED,
            "the channel is closed and takes no new messages",
        )),
    }
}

/// The route of a message from `sender`: the channel's mediators, reversed
/// when the sender is the second principal.
pub fn route(channel: &Channel, sender: &PartyId) -> Vec<Hop> {
    let hop = |m: &PartyId| Hop {
        mediator: m.clone(),
        state: HopState::Pending,
        accept_time: None,
        forward_time: None,
        note: String::new(),
    };
    if sender == &channel.parties[0] {
        channel.mediators.iter().map(hop).collect()
    } else {
        channel.mediators.iter().rev().map(hop).collect()
    }
}

/// May `caller` suspend, resume or close `channel`? (admin or a principal)
pub fn authorize_channel_change(channel: &Channel, caller: &Caller) -> Result<(), Rejection> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::Party(p) if channel.parties.contains(p) => Ok(()),
        Caller::Party(p) if channel.mediators.contains(p) => Err(Rejection::new(
            Reason::NOT_A_PRINCIPAL,
            "only the admin or the channel's principals may change it",
        )),
        Caller::Party(_) => Err(channel_not_found()),
    }
}

/// Applies a channel change, or `FAILED_PRECONDITION` with the channel's
/// `current_state` and `current_version`.
pub fn change_channel(
    channel: &Channel,
    action: ChannelAction,
    now: Time,
) -> Result<(Channel, EventType), Rejection> {
    channel_change(channel, action, now).map_err(|r| {
        r.with("current_state", channel.state.name())
            .with("current_version", channel.version)
    })
}

fn channel_change(
    channel: &Channel,
    action: ChannelAction,
    now: Time,
) -> Result<(Channel, EventType), Rejection> {
    use ChannelState::*;
    let (state, kind) = match (action, channel.state) {
        (ChannelAction::Suspend, Open) => (Suspended, EventType::ChannelSuspended),
        (ChannelAction::Suspend, _) => {
            return Err(Rejection::new(
                Reason::CHANNEL_NOT_OPEN,
                format!(
                    "only an open channel can be suspended; it is {}",
                    channel.state.name()
                ),
            ));
        }
        (ChannelAction::Resume, Suspended) => (Open, EventType::ChannelResumed),
        (ChannelAction::Resume, _) => {
            return Err(Rejection::new(
                Reason::CHANNEL_NOT_SUSPENDED,
                format!(
                    "only a suspended channel can be resumed; it is {}",
                    channel.state.name()
                ),
            ));
        }
        (ChannelAction::Close, Closed) => {
            return Err(Rejection::new(
                Reason::CHANNEL_ALREADY_CLOSED,
                "the channel is already closed",
            ));
        }
        (ChannelAction::Close, _) => (Closed, EventType::ChannelClosed),
    };
    let mut c = channel.clone();
    c.state = state;
    c.version += 1;
    c.update_time = now;
    Ok((c, kind))
}

/// The refusal for a channel that is absent or not visible.
pub fn channel_not_found() -> Rejection {
    Rejection::new(Reason::CHANNEL_NOT_FOUND, "no such channel")
}

/// The refusal for a message that is absent or not visible.
pub fn message_not_found() -> Rejection {
    Rejection::new(Reason::MESSAGE_NOT_FOUND, "no such message")
}
