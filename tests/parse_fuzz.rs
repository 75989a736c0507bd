//! A seeded fuzz of the parsing a request goes through before it reaches
//! the record, in process (an equivalent of cargo-fuzz targets that runs on
//! stable Rust in CI): the request codec (every request type), ids, party
//! ids, field limits, timestamps, enum numbers, page tokens, and the
//! decoding of stored records. Nothing may panic; every refusal is a value.
//! `PARSE_FUZZ_CASES` and `PARSE_FUZZ_SEED` go further.

mod common;

use std::collections::BTreeMap;

use backchannel::api::Pager;
use backchannel::domain::validate::Limits;
use backchannel::domain::{Id, PartyId};
use backchannel::{convert, pb};
use common::raw::Rng;
use prost::Message;

/// Ids, limits and texts for the parsers.
trait Texts {
    fn small_bytes(&mut self) -> Vec<u8>;
    fn text(&mut self) -> String;
}

impl Texts for Rng {
    fn small_bytes(&mut self) -> Vec<u8> {
        let n = self.below(96) as usize;
        self.bytes(n)
    }
    /// Strings near the edges: ASCII, UUID-like, multi-byte, control and
    /// combining characters, very long.
    fn text(&mut self) -> String {
        const PIECES: [&str; 12] = [
            "a",
            "-",
            "0",
            "f",
            "é",
            "👍",
            "\u{0}",
            "\u{301}",
            " ",
            "_",
            "Z",
            "0195e6d1-",
        ];
        let n = match self.below(10) {
            0 => 300 + self.below(3000),
            _ => self.below(40),
        };
        (0..n)
            .map(|_| PIECES[self.below(PIECES.len() as u64) as usize])
            .collect()
    }
}

fn decode_all(b: &[u8]) {
    macro_rules! each {
        ($($t:ty),* $(,)?) => { $( let _ = <$t>::decode(b); )* };
    }
    each!(
        pb::CreatePartyRequest,
        pb::GetPartyRequest,
        pb::ListPartiesRequest,
        pb::IssueTokenRequest,
        pb::RevokeTokenRequest,
        pb::ListTokensRequest,
        pb::WhoAmIRequest,
        pb::CreateChannelRequest,
        pb::GetChannelRequest,
        pb::ListChannelsRequest,
        pb::SuspendChannelRequest,
        pb::ResumeChannelRequest,
        pb::CloseChannelRequest,
        pb::SendMessageRequest,
        pb::GetMessageRequest,
        pb::ListMessagesRequest,
        pb::AcceptMessageRequest,
        pb::ForwardMessageRequest,
        pb::DeclineMessageRequest,
        pb::AcknowledgeMessageRequest,
        pb::RejectMessageRequest,
        pb::WithdrawMessageRequest,
        pb::ListEventsRequest,
        pb::SubscribeRequest,
    );
    // Stored records decode to domain values or refuse.
    if let Ok(p) = pb::Party::decode(b) {
        let _ = convert::party_from_pb(p);
    }
    if let Ok(c) = pb::Channel::decode(b) {
        let _ = convert::channel_from_pb(c);
    }
    if let Ok(m) = pb::Message::decode(b) {
        let _ = convert::message_from_pb(m);
    }
    if let Ok(e) = pb::Event::decode(b) {
        let _ = convert::event_from_pb(e);
    }
}

#[test]
fn parsing_never_panics_on_anything_a_client_can_send() {
    let seed = std::env::var("PARSE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00dd_ba11_u64);
    let cases: u64 = std::env::var("PARSE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4_000);
    let mut rng = Rng(seed);
    let limits = Limits::default();
    let pager = Pager::new(b"fuzz key, 32 bytes long, at least".to_vec());
    let valid = prost::Message::encode_to_vec(&pb::SendMessageRequest {
        channel_id: Id::new().to_string(),
        subject: "s".into(),
        body: "b".into(),
        labels: [("k".to_string(), "v".to_string())].into(),
        respond_by: Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 2,
        }),
        ..Default::default()
    });
    for _ in 0..cases {
        // The codec: random bytes, and a valid body mutated.
        decode_all(&rng.small_bytes());
        let mut b = valid.clone();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(b.len() as u64) as usize;
            b[i] ^= rng.next() as u8;
        }
        decode_all(&b);
        // The domain's parsers.
        let s = rng.text();
        let _ = Id::parse(&s);
        let _ = PartyId::parse(&s);
        let _ = limits.display_name(&s);
        let _ = limits.subject(&s);
        let _ = limits.body(&s);
        let _ = limits.note(&s, rng.below(2) == 0);
        let labels: BTreeMap<String, String> = (0..rng.below(40))
            .map(|_| (rng.text(), rng.text()))
            .collect();
        let _ = limits.labels(&labels);
        let _ = limits.page_size(rng.next() as i32);
        let _ = convert::time(&prost_types::Timestamp {
            seconds: rng.next() as i64,
            nanos: rng.next() as i32,
        });
        let n = rng.next() as i32;
        let _ = convert::party_kind(n);
        let _ = convert::channel_state(n);
        let _ = convert::message_state(n);
        let _ = convert::event_type(n);
        // Page tokens: made up, and real ones tampered with.
        let _ = pager.read("ListEvents", &s);
        let real = pager.issue(
            "ListEvents",
            &backchannel::api::paging::Cursor {
                position: rng.next(),
                head: rng.next(),
                key: rng.text(),
            },
        );
        let mut t = real.into_bytes();
        if !t.is_empty() {
            let i = rng.below(t.len() as u64) as usize;
            t[i] = b"AZaz09-_+/="[rng.below(11) as usize];
        }
        let _ = pager.read("ListEvents", &String::from_utf8_lossy(&t));
    }
}
