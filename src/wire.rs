//! `backchannel.v1.SubscribeResponse`, written by hand so that an event can
//! be sent as the bytes it was encoded to once, when it was committed: the
//! log stores those bytes, and replay and live fan-out send them as they
//! are, to every subscriber, without decoding or encoding again. Clients
//! decode it like any generated message (`kind` holds the item).

use std::fmt;

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

/// One item of a subscription stream: an event or a heartbeat.
#[derive(Clone, PartialEq, Default)]
pub struct SubscribeResponse {
    /// The item (set when built from values or decoded).
    pub kind: Option<subscribe_response::Kind>,
    /// An `Event` already encoded; sent as field `event` when set.
    encoded_event: Option<Bytes>,
}

/// The item types of [`SubscribeResponse`].
pub mod subscribe_response {
    /// An event or a heartbeat (shaped as prost generates oneofs).
    #[allow(clippy::large_enum_variant)]
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// A matching event.
        #[prost(message, tag = "1")]
        Event(crate::pb::Event),
        /// Caught-up mark (first one) or quiet-period heartbeat.
        #[prost(message, tag = "2")]
        Heartbeat(crate::pb::Heartbeat),
    }
}

impl SubscribeResponse {
    /// An event given as its encoded `backchannel.v1.Event` bytes.
    pub fn encoded_event(bytes: Bytes) -> SubscribeResponse {
        SubscribeResponse {
            kind: None,
            encoded_event: Some(bytes),
        }
    }

    /// An item given as a value.
    pub fn of(kind: subscribe_response::Kind) -> SubscribeResponse {
        SubscribeResponse {
            kind: Some(kind),
            encoded_event: None,
        }
    }
}

impl fmt::Debug for SubscribeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.encoded_event {
            Some(b) => write!(
                f,
                "SubscribeResponse {{ encoded event of {} bytes }}",
                b.len()
            ),
            None => f
                .debug_struct("SubscribeResponse")
                .field("kind", &self.kind)
                .finish(),
        }
    }
}

const EVENT_TAG: u32 = 1;

impl Message for SubscribeResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(b) = &self.encoded_event {
            encoding::encode_key(EVENT_TAG, WireType::LengthDelimited, buf);
            encoding::encode_varint(b.len() as u64, buf);
            buf.put_slice(b);
        } else if let Some(k) = &self.kind {
            k.encode(buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 | 2 => subscribe_response::Kind::merge(&mut self.kind, tag, wire_type, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        match &self.encoded_event {
            Some(b) => {
                encoding::key_len(EVENT_TAG)
                    + encoding::encoded_len_varint(b.len() as u64)
                    + b.len()
            }
            None => self.kind.as_ref().map_or(0, |k| k.encoded_len()),
        }
    }

    fn clear(&mut self) {
        self.kind = None;
        self.encoded_event = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn an_encoded_event_decodes_as_the_event() {
        let e = pb::Event {
            sequence: 7,
            actor: "iran".into(),
            ..Default::default()
        };
        let sent = SubscribeResponse::encoded_event(e.encode_to_vec().into());
        let bytes = sent.encode_to_vec();
        assert_eq!(bytes.len(), sent.encoded_len());
        let got = SubscribeResponse::decode(&bytes[..]).unwrap();
        assert_eq!(got.kind, Some(subscribe_response::Kind::Event(e.clone())));
        let plain = SubscribeResponse::of(subscribe_response::Kind::Event(e));
        assert_eq!(plain.encode_to_vec(), bytes);
    }
}
