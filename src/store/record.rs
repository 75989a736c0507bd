//! Stored records: they are kept as their protobuf encoding, validated when
//! written, so a record that does not decode is corruption (`INTERNAL`).

use crate::store::error::{Fault, StoreError};
use prost::Message as _;

use crate::convert;
use crate::domain::{Channel, Event, Message, Party};
use crate::pb;

/// The RFC 9162 leaf hash of an event's stored bytes:
/// `SHA-256(0x00 ‖ data)`. Kept beside every event and checked whenever the
/// event is read; the verifiable log builds its Merkle tree on it.
pub fn leaf_hash(data: &[u8]) -> [u8; 32] {
    crate::audit::merkle::leaf_hash(data)
}

/// `Ok` if `data` matches its stored leaf hash; otherwise the event at
/// `sequence` is damaged: `RECORD_CORRUPT`, logged with its sequence.
pub fn check_leaf(sequence: u64, data: &[u8], stored: &[u8]) -> Result<(), StoreError> {
    if leaf_hash(data).as_slice() == stored {
        return Ok(());
    }
    tracing::error!(
        sequence,
        "event failed its integrity check (leaf hash mismatch): it is not served; \
         restore the store from a backup"
    );
    Err(damaged(sequence))
}

/// The refusal for the damaged event at `sequence` (not logged).
pub fn damaged(sequence: u64) -> StoreError {
    StoreError::new(
        Fault::Corrupt,
        format!(
            "the stored event #{sequence} failed its integrity check and is not served; \
             the operator must restore the store from a backup"
        ),
    )
}

/// The refusal for a corrupt record (logged).
pub fn corrupt(e: impl std::fmt::Display) -> StoreError {
    tracing::error!(error = %e, "corrupt record");
    StoreError::new(Fault::Internal, "internal store error: corrupt record")
}

/// A stored message.
pub fn decode_message(b: &[u8]) -> Result<Message, StoreError> {
    convert::message_from_pb(pb::Message::decode(b).map_err(corrupt)?).map_err(corrupt)
}

/// A stored channel.
pub fn decode_channel(b: &[u8]) -> Result<Channel, StoreError> {
    convert::channel_from_pb(pb::Channel::decode(b).map_err(corrupt)?).map_err(corrupt)
}

/// A stored party.
pub fn decode_party(b: &[u8]) -> Result<Party, StoreError> {
    convert::party_from_pb(pb::Party::decode(b).map_err(corrupt)?).map_err(corrupt)
}

/// A stored event.
pub fn decode_event(b: &[u8]) -> Result<Event, StoreError> {
    convert::event_from_pb(pb::Event::decode(b).map_err(corrupt)?).map_err(corrupt)
}
