//! Stored records: they are kept as their protobuf encoding, validated when
//! written, so a record that does not decode is corruption (`INTERNAL`).

use prost::Message as _;

use crate::convert;
use crate::domain::{Channel, Event, Message, Party, Reason, Rejection};
use crate::pb;

/// The refusal for a corrupt record (logged).
pub fn corrupt(e: impl std::fmt::Display) -> Rejection {
    tracing::error!(error = %e, "corrupt record");
    Rejection::new(Reason::INTERNAL, "internal store error: corrupt record")
}

/// A stored message.
pub fn decode_message(b: &[u8]) -> Result<Message, Rejection> {
    convert::message_from_pb(pb::Message::decode(b).map_err(corrupt)?).map_err(corrupt)
}

/// A stored channel.
pub fn decode_channel(b: &[u8]) -> Result<Channel, Rejection> {
    convert::channel_from_pb(pb::Channel::decode(b).map_err(corrupt)?).map_err(corrupt)
}

/// A stored party.
pub fn decode_party(b: &[u8]) -> Result<Party, Rejection> {
    convert::party_from_pb(pb::Party::decode(b).map_err(corrupt)?).map_err(corrupt)
}

/// A stored event.
pub fn decode_event(b: &[u8]) -> Result<Event, Rejection> {
    convert::event_from_pb(pb::Event::decode(b).map_err(corrupt)?).map_err(corrupt)
}
