//! Conversions between the domain's types and the protobuf types. The
//! protobuf encoding is also the store's encoding of records, since it is
//! built to evolve; decoding a stored record fails only if it is corrupt.

use prost_types::Timestamp;

use crate::domain::{
    Channel, ChannelState, Event, EventType, Hop, HopState, Id, Message, MessageState, Party,
    PartyId, PartyKind, Subject, Time,
};
use crate::pb;

/// A domain time as a protobuf timestamp.
pub fn timestamp(t: Time) -> Timestamp {
    Timestamp {
        seconds: t.0.div_euclid(1_000_000),
        nanos: i32::try_from(t.0.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

/// A protobuf timestamp as a domain time (microsecond precision).
pub fn time(t: &Timestamp) -> Result<Time, String> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err("nanos must be in 0..1e9".into());
    }
    // Years 0001..=9999, as google.protobuf.Timestamp requires.
    if !(-62_135_596_800..=253_402_300_799).contains(&t.seconds) {
        return Err("must lie between years 1 and 9999".into());
    }
    Ok(Time(t.seconds * 1_000_000 + i64::from(t.nanos / 1000)))
}

/// An optional protobuf timestamp as an optional domain time.
pub fn opt_time(t: Option<&Timestamp>) -> Result<Option<Time>, String> {
    t.map(time).transpose()
}

/// Party kind from its wire number; `None` for unspecified or unknown.
pub fn party_kind(n: i32) -> Option<PartyKind> {
    match pb::party::Kind::try_from(n).ok()? {
        pb::party::Kind::State => Some(PartyKind::State),
        pb::party::Kind::Organization => Some(PartyKind::Organization),
        pb::party::Kind::Person => Some(PartyKind::Person),
        pb::party::Kind::Unspecified => None,
    }
}

fn party_kind_pb(k: PartyKind) -> pb::party::Kind {
    match k {
        PartyKind::State => pb::party::Kind::State,
        PartyKind::Organization => pb::party::Kind::Organization,
        PartyKind::Person => pb::party::Kind::Person,
    }
}

/// Channel state from its wire number: `Ok(None)` for unspecified, `Err` for unknown.
pub fn channel_state(n: i32) -> Result<Option<ChannelState>, String> {
    match pb::channel::State::try_from(n) {
        Ok(pb::channel::State::Unspecified) => Ok(None),
        Ok(pb::channel::State::Open) => Ok(Some(ChannelState::Open)),
        Ok(pb::channel::State::Suspended) => Ok(Some(ChannelState::Suspended)),
        Ok(pb::channel::State::Closed) => Ok(Some(ChannelState::Closed)),
        Err(_) => Err(format!("{n} is not a Channel.State")),
    }
}

/// The wire number of a channel state.
pub fn channel_state_pb(s: ChannelState) -> pb::channel::State {
    match s {
        ChannelState::Open => pb::channel::State::Open,
        ChannelState::Suspended => pb::channel::State::Suspended,
        ChannelState::Closed => pb::channel::State::Closed,
    }
}

/// Message state from its wire number: `Ok(None)` for unspecified, `Err` for unknown.
pub fn message_state(n: i32) -> Result<Option<MessageState>, String> {
    use pb::message::State as S;
    Ok(Some(
        match S::try_from(n).map_err(|_| format!("{n} is not a Message.State"))? {
            S::Unspecified => return Ok(None),
            S::Submitted => MessageState::Submitted,
            S::InTransit => MessageState::InTransit,
            S::Delivered => MessageState::Delivered,
            S::Acknowledged => MessageState::Acknowledged,
            S::Answered => MessageState::Answered,
            S::Declined => MessageState::Declined,
            S::Rejected => MessageState::Rejected,
            S::Withdrawn => MessageState::Withdrawn,
            S::Expired => MessageState::Expired,
        },
    ))
}

/// The wire number of a message state.
pub fn message_state_pb(s: MessageState) -> pb::message::State {
    use pb::message::State as S;
    match s {
        MessageState::Submitted => S::Submitted,
        MessageState::InTransit => S::InTransit,
        MessageState::Delivered => S::Delivered,
        MessageState::Acknowledged => S::Acknowledged,
        MessageState::Answered => S::Answered,
        MessageState::Declined => S::Declined,
        MessageState::Rejected => S::Rejected,
        MessageState::Withdrawn => S::Withdrawn,
        MessageState::Expired => S::Expired,
    }
}

fn hop_state(n: i32) -> Result<HopState, String> {
    use pb::hop::State as S;
    Ok(
        match S::try_from(n).map_err(|_| format!("{n} is not a Hop.State"))? {
            S::Pending => HopState::Pending,
            S::Accepted => HopState::Accepted,
            S::Forwarded => HopState::Forwarded,
            S::Declined => HopState::Declined,
            S::Cancelled => HopState::Cancelled,
            S::Unspecified => return Err("hop state unspecified".into()),
        },
    )
}

fn hop_state_pb(s: HopState) -> pb::hop::State {
    use pb::hop::State as S;
    match s {
        HopState::Pending => S::Pending,
        HopState::Accepted => S::Accepted,
        HopState::Forwarded => S::Forwarded,
        HopState::Declined => S::Declined,
        HopState::Cancelled => S::Cancelled,
    }
}

/// Event type from its wire number: `Err` for unspecified or unknown.
pub fn event_type(n: i32) -> Result<EventType, String> {
    use pb::event::Type as T;
    Ok(
        match T::try_from(n).map_err(|_| format!("{n} is not an Event.Type"))? {
            T::Unspecified => return Err("TYPE_UNSPECIFIED is not an event type".into()),
            T::MessageSent => EventType::MessageSent,
            T::MessageAccepted => EventType::MessageAccepted,
            T::MessageForwarded => EventType::MessageForwarded,
            T::MessageDelivered => EventType::MessageDelivered,
            T::MessageDeclined => EventType::MessageDeclined,
            T::MessageAcknowledged => EventType::MessageAcknowledged,
            T::MessageRejected => EventType::MessageRejected,
            T::MessageWithdrawn => EventType::MessageWithdrawn,
            T::MessageAnswered => EventType::MessageAnswered,
            T::MessageExpired => EventType::MessageExpired,
            T::ChannelOpened => EventType::ChannelOpened,
            T::ChannelSuspended => EventType::ChannelSuspended,
            T::ChannelResumed => EventType::ChannelResumed,
            T::ChannelClosed => EventType::ChannelClosed,
        },
    )
}

/// The wire number of an event type.
pub fn event_type_pb(t: EventType) -> pb::event::Type {
    use pb::event::Type as T;
    match t {
        EventType::MessageSent => T::MessageSent,
        EventType::MessageAccepted => T::MessageAccepted,
        EventType::MessageForwarded => T::MessageForwarded,
        EventType::MessageDelivered => T::MessageDelivered,
        EventType::MessageDeclined => T::MessageDeclined,
        EventType::MessageAcknowledged => T::MessageAcknowledged,
        EventType::MessageRejected => T::MessageRejected,
        EventType::MessageWithdrawn => T::MessageWithdrawn,
        EventType::MessageAnswered => T::MessageAnswered,
        EventType::MessageExpired => T::MessageExpired,
        EventType::ChannelOpened => T::ChannelOpened,
        EventType::ChannelSuspended => T::ChannelSuspended,
        EventType::ChannelResumed => T::ChannelResumed,
        EventType::ChannelClosed => T::ChannelClosed,
    }
}

impl From<&Party> for pb::Party {
    fn from(p: &Party) -> Self {
        pb::Party {
            id: p.id.to_string(),
            display_name: p.display_name.clone(),
            kind: party_kind_pb(p.kind) as i32,
            create_time: Some(timestamp(p.create_time)),
        }
    }
}

impl From<&crate::store::TokenRecord> for pb::TokenInfo {
    fn from(t: &crate::store::TokenRecord) -> Self {
        pb::TokenInfo {
            token_id: t.token_id.to_string(),
            party_id: t.party_id.to_string(),
            read_only: t.read_only,
            create_time: Some(timestamp(t.create_time)),
            expire_time: t.expire_time.map(timestamp),
            revoke_time: t.revoke_time.map(timestamp),
            last_use_time: t.last_use_time.map(timestamp),
        }
    }
}

impl From<&Channel> for pb::Channel {
    fn from(c: &Channel) -> Self {
        pb::Channel {
            id: c.id.to_string(),
            display_name: c.display_name.clone(),
            parties: c.parties.iter().map(ToString::to_string).collect(),
            mediators: c.mediators.iter().map(ToString::to_string).collect(),
            state: channel_state_pb(c.state) as i32,
            version: c.version,
            create_time: Some(timestamp(c.create_time)),
            update_time: Some(timestamp(c.update_time)),
        }
    }
}

impl From<&Hop> for pb::Hop {
    fn from(h: &Hop) -> Self {
        pb::Hop {
            mediator: h.mediator.to_string(),
            state: hop_state_pb(h.state) as i32,
            accept_time: h.accept_time.map(timestamp),
            forward_time: h.forward_time.map(timestamp),
            note: h.note.clone(),
        }
    }
}

impl From<&Message> for pb::Message {
    fn from(m: &Message) -> Self {
        pb::Message {
            id: m.id.to_string(),
            channel_id: m.channel_id.to_string(),
            sender: m.sender.to_string(),
            recipient: m.recipient.to_string(),
            subject: m.subject.clone(),
            body: m.body.clone(),
            labels: m.labels.clone(),
            respond_by: m.respond_by.map(timestamp),
            in_reply_to: m.in_reply_to.map(|i| i.to_string()).unwrap_or_default(),
            thread_id: m.thread_id.to_string(),
            state: message_state_pb(m.state) as i32,
            hops: m.hops.iter().map(pb::Hop::from).collect(),
            version: m.version,
            create_time: Some(timestamp(m.create_time)),
            update_time: Some(timestamp(m.update_time)),
            send_time: Some(timestamp(m.send_time)),
        }
    }
}

impl From<&Event> for pb::Event {
    fn from(e: &Event) -> Self {
        pb::Event {
            sequence: e.sequence,
            event_id: e.event_id.to_string(),
            r#type: event_type_pb(e.kind) as i32,
            actor: e.actor.clone(),
            channel_id: e.channel_id.to_string(),
            message_id: e.message_id().map(|i| i.to_string()).unwrap_or_default(),
            hop_index: e.hop_index,
            note: e.note.clone(),
            occur_time: Some(timestamp(e.occur_time)),
            record_time: Some(timestamp(e.record_time)),
            subject: Some(match &e.subject {
                Subject::Message(m) => pb::event::Subject::Message(m.as_ref().into()),
                Subject::Channel(c) => pb::event::Subject::Channel(c.as_ref().into()),
            }),
        }
    }
}

// Decoding of stored records. They were validated when written, so a
// failure here means corruption, reported by the store as an internal error.

fn req_time(t: Option<Timestamp>, what: &str) -> Result<Time, String> {
    time(&t.ok_or_else(|| format!("{what} missing"))?)
}

fn stored_id(s: &str) -> Result<Id, String> {
    Id::parse(s)
}

fn stored_party(s: String) -> PartyId {
    PartyId::trusted(s)
}

/// A stored party.
pub fn party_from_pb(p: pb::Party) -> Result<Party, String> {
    Ok(Party {
        id: stored_party(p.id),
        display_name: p.display_name,
        kind: party_kind(p.kind).ok_or("bad party kind")?,
        create_time: req_time(p.create_time, "create_time")?,
    })
}

/// A stored channel.
pub fn channel_from_pb(c: pb::Channel) -> Result<Channel, String> {
    let mut parties = c.parties.into_iter().map(stored_party);
    let (Some(a), Some(b)) = (parties.next(), parties.next()) else {
        return Err("channel without two parties".into());
    };
    Ok(Channel {
        id: stored_id(&c.id)?,
        display_name: c.display_name,
        parties: [a, b],
        mediators: c.mediators.into_iter().map(stored_party).collect(),
        state: channel_state(c.state)?.ok_or("channel state unspecified")?,
        version: c.version,
        create_time: req_time(c.create_time, "create_time")?,
        update_time: req_time(c.update_time, "update_time")?,
    })
}

/// A stored message.
pub fn message_from_pb(m: pb::Message) -> Result<Message, String> {
    Ok(Message {
        id: stored_id(&m.id)?,
        channel_id: stored_id(&m.channel_id)?,
        sender: stored_party(m.sender),
        recipient: stored_party(m.recipient),
        subject: m.subject,
        body: m.body,
        labels: m.labels,
        respond_by: opt_time(m.respond_by.as_ref())?,
        in_reply_to: if m.in_reply_to.is_empty() {
            None
        } else {
            Some(stored_id(&m.in_reply_to)?)
        },
        thread_id: stored_id(&m.thread_id)?,
        state: message_state(m.state)?.ok_or("message state unspecified")?,
        hops: m
            .hops
            .into_iter()
            .map(|h| {
                Ok(Hop {
                    mediator: stored_party(h.mediator),
                    state: hop_state(h.state)?,
                    accept_time: opt_time(h.accept_time.as_ref())?,
                    forward_time: opt_time(h.forward_time.as_ref())?,
                    note: h.note,
                })
            })
            .collect::<Result<_, String>>()?,
        version: m.version,
        create_time: req_time(m.create_time, "create_time")?,
        update_time: req_time(m.update_time, "update_time")?,
        send_time: req_time(m.send_time, "send_time")?,
    })
}

/// A stored event.
pub fn event_from_pb(e: pb::Event) -> Result<Event, String> {
    Ok(Event {
        sequence: e.sequence,
        event_id: stored_id(&e.event_id)?,
        kind: event_type(e.r#type)?,
        actor: e.actor,
        channel_id: stored_id(&e.channel_id)?,
        hop_index: e.hop_index,
        note: e.note,
        occur_time: req_time(e.occur_time, "occur_time")?,
        record_time: req_time(e.record_time, "record_time")?,
        subject: match e.subject.ok_or("event without subject")? {
            pb::event::Subject::Message(m) => Subject::Message(Box::new(message_from_pb(m)?)),
            pb::event::Subject::Channel(c) => Subject::Channel(Box::new(channel_from_pb(c)?)),
        },
    })
}
