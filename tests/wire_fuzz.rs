//! A seeded fuzz of the wire: random and mutated request bodies to every
//! RPC, with and without a valid token. Whatever a client sends, the answer
//! is never INTERNAL or UNKNOWN, and the server never crashes.

mod common;

use backchannel::pb;
use common::raw::RawCodec;
use common::raw::Rng;
use common::*;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;

const UNARY: [&str; 24] = [
    "/backchannel.v1.PartyService/CreateParty",
    "/backchannel.v1.PartyService/GetParty",
    "/backchannel.v1.PartyService/ListParties",
    "/backchannel.v1.PartyService/IssueToken",
    "/backchannel.v1.PartyService/RevokeToken",
    "/backchannel.v1.PartyService/ListTokens",
    "/backchannel.v1.PartyService/WhoAmI",
    "/backchannel.v1.ChannelService/CreateChannel",
    "/backchannel.v1.ChannelService/GetChannel",
    "/backchannel.v1.ChannelService/ListChannels",
    "/backchannel.v1.ChannelService/SuspendChannel",
    "/backchannel.v1.ChannelService/ResumeChannel",
    "/backchannel.v1.ChannelService/CloseChannel",
    "/backchannel.v1.MessageService/SendMessage",
    "/backchannel.v1.MessageService/GetMessage",
    "/backchannel.v1.MessageService/ListMessages",
    "/backchannel.v1.MessageService/AcceptMessage",
    "/backchannel.v1.MessageService/ForwardMessage",
    "/backchannel.v1.MessageService/DeclineMessage",
    "/backchannel.v1.MessageService/AcknowledgeMessage",
    "/backchannel.v1.MessageService/RejectMessage",
    "/backchannel.v1.MessageService/WithdrawMessage",
    "/backchannel.v1.MessageService/ListEvents",
    "/grpc.health.v1.Health/Check",
];
const STREAMING: [&str; 2] = [
    "/backchannel.v1.MessageService/Subscribe",
    "/grpc.health.v1.Health/Watch",
];

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Protobuf-shaped garbage: fields with random numbers and wire types,
/// lengths that may lie, strings that may not be UTF-8, ids that may or may
/// not parse, nested garbage, huge varints.
fn shaped(rng: &mut Rng, ids: &[String], depth: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(8) {
        let wide = rng.below(4) == 0;
        let field = 1 + rng.below(if wide { 1 << 29 } else { 12 });
        let wire = rng.below(6);
        varint((field << 3) | wire, &mut out);
        match wire {
            0 => {
                let shift = rng.below(64);
                varint(rng.next() >> shift, &mut out);
            }
            1 => out.extend(rng.bytes(8)),
            2 => {
                let payload = match rng.below(6) {
                    0 => {
                        let i = rng.below(ids.len() as u64) as usize;
                        ids[i].clone().into_bytes()
                    }
                    1 if depth < 3 => shaped(rng, ids, depth + 1),
                    2 => vec![0xff, 0xfe, 0xc3, 0x28],
                    3 => "x".repeat(rng.below(70_000) as usize).into_bytes(),
                    _ => {
                        let k = rng.below(40) as usize;
                        rng.bytes(k)
                    }
                };
                // Sometimes the length lies.
                let len = match rng.below(8) {
                    0 => payload.len() as u64 + 1 + rng.below(100),
                    1 => rng.next(),
                    _ => payload.len() as u64,
                };
                varint(len, &mut out);
                out.extend(payload);
            }
            5 => out.extend(rng.bytes(4)),
            _ => out.extend({
                let k = rng.below(6) as usize;
                rng.bytes(k)
            }),
        }
    }
    out
}

/// One body: shaped garbage, raw random bytes, or a valid body mutated.
fn body(rng: &mut Rng, ids: &[String], valid: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(4) {
        0 => {
            let k = rng.below(64) as usize;
            rng.bytes(k)
        }
        1 => {
            let i = rng.below(valid.len() as u64) as usize;
            let mut b = valid[i].clone();
            for _ in 0..1 + rng.below(4) {
                if b.is_empty() {
                    break;
                }
                let i = rng.below(b.len() as u64) as usize;
                match rng.below(3) {
                    0 => {
                        let bit = rng.below(8);
                        b[i] ^= 1 << bit;
                    }
                    1 => b.truncate(i),
                    _ => b.insert(i, rng.next() as u8),
                }
            }
            b
        }
        _ => shaped(rng, ids, 0),
    }
}

fn request(body: Vec<u8>, token: Option<&str>) -> tonic::Request<Vec<u8>> {
    let mut req = tonic::Request::new(body);
    req.set_timeout(std::time::Duration::from_secs(10));
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    req
}

#[tokio::test]
async fn random_bodies_to_every_rpc_never_get_internal_or_unknown() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let m = w
        .iran
        .messages
        .send_message(send_req(&w.channel.id, "a target"))
        .await
        .expect("send")
        .into_inner();
    let ids = vec![
        w.channel.id.clone(),
        m.id.clone(),
        "iran".to_owned(),
        "united-states".to_owned(),
        "not-a-uuid".to_owned(),
        uuid::Uuid::now_v7().to_string(),
        String::new(),
    ];
    let valid = vec![
        prost::Message::encode_to_vec(&send_req(&w.channel.id, "valid")),
        prost::Message::encode_to_vec(&pb::GetMessageRequest {
            message_id: m.id.clone(),
        }),
        prost::Message::encode_to_vec(&pb::ListEventsRequest {
            channel_id: w.channel.id.clone(),
            page_size: 3,
            ..Default::default()
        }),
        prost::Message::encode_to_vec(&pb::SubscribeRequest {
            start_after: Some(0),
            channel_ids: vec![w.channel.id.clone()],
            ..Default::default()
        }),
    ];
    let tokens = [
        Some(ADMIN_TOKEN.to_owned()),
        Some(w.tokens["iran"].clone()),
        Some(w.tokens["france"].clone()),
        None,
    ];
    let seed: u64 = std::env::var("WIRE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_ba5e_c4a7_7e11);
    let cases: u64 = std::env::var("WIRE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let mut rng = Rng(seed);
    let mut grpc = tonic::client::Grpc::new(server.connect().await);
    let mut failures = Vec::new();
    let mut n = 0u64;
    let mut reconnects = 0u64;
    for path in UNARY.iter().chain(STREAMING.iter()) {
        for case in 0..cases {
            n += 1;
            let b = body(&mut rng, &ids, &valid);
            let t = rng.below(tokens.len() as u64) as usize;
            let token = tokens[t].as_deref();
            let hex: String = b.iter().take(48).map(|x| format!("{x:02x}")).collect();
            grpc.ready().await.expect("the server is still there");
            let got = if STREAMING.contains(path) {
                match grpc
                    .server_streaming(request(b, token), PathAndQuery::from_static(path), RawCodec)
                    .await
                {
                    // A valid subscription: its first item, then drop it.
                    Ok(r) => r.into_inner().message().await.map(drop),
                    Err(s) => Err(s),
                }
            } else {
                grpc.unary(request(b, token), PathAndQuery::from_static(path), RawCodec)
                    .await
                    .map(drop)
            };
            if let Err(s) = &got
                && s.code() == Code::Unknown
                && s.message() == "transport error"
            {
                // The connection ended, not the call: HTTP/2 ends a
                // connection with GOAWAY after 1,024 streams it had to reset
                // (requests refused before their body was read), a guard
                // against reset floods. A client reconnects.
                eprintln!(
                    "{path} case {case}: connection ended ({:?}); reconnecting",
                    std::error::Error::source(s)
                );
                reconnects += 1;
                grpc = tonic::client::Grpc::new(server.connect().await);
                continue;
            }
            if let Err(s) = got
                && matches!(s.code(), Code::Internal | Code::Unknown)
            {
                failures.push(format!(
                    "{path} case {case} (seed {seed:#x}) body {hex}…: {:?} {}",
                    s.code(),
                    s.message()
                ));
            }
        }
    }
    assert!(
        reconnects <= n / 500,
        "{reconnects} reconnects in {n} calls"
    );
    assert!(
        failures.is_empty(),
        "{} of {n} calls:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Still alive, still consistent.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.connect().await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("the server survived");
    let mut admin = w.admin.clone();
    all_events(&mut admin, Default::default()).await;
    let _ = &mut w;
}
