//! Every request limit and malformed input: sizes counted in characters or
//! bytes as the contract says, party ids, routes, enum numbers, page sizes,
//! oversized and undecodable requests.
mod common;
use backchannel::pb;
use common::*;
use tonic::Code;

async fn send(c: &mut Clients, req: pb::SendMessageRequest) -> Result<pb::Message, tonic::Status> {
    c.messages.send_message(req).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn message_fields_are_checked_against_their_limits() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let ch = w.channel.id.clone();

    // Subject: 1–256 characters (Unicode scalar values, not bytes).
    send(&mut w.iran, send_req(&ch, &"é".repeat(256)))
        .await
        .unwrap();
    send(&mut w.iran, send_req(&ch, &"a".repeat(256)))
        .await
        .unwrap();
    for subject in ["é".repeat(257), String::new(), "   ".into()] {
        assert_err(
            send(&mut w.iran, send_req(&ch, &subject)).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
        );
    }

    // Body: at most 64 KiB.
    let mut r = send_req(&ch, "body");
    r.body = "b".repeat(64 * 1024);
    send(&mut w.iran, r.clone()).await.unwrap();
    r.body.push('b');
    assert_err(
        send(&mut w.iran, r).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );

    // Labels: at most 32.
    let labels = |n: usize| (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect();
    let mut r = send_req(&ch, "labels");
    r.labels = labels(32);
    let m = send(&mut w.iran, r.clone()).await.unwrap();
    assert_eq!(m.labels.len(), 32);
    r.labels = labels(33);
    assert_err(
        send(&mut w.iran, r).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );

    // Label keys: 1–64 of a-z 0-9 _ - . /; values at most 256 characters.
    let with_label = |k: &str, v: &str| {
        let mut r = send_req(&ch, "label");
        r.labels.insert(k.into(), v.into());
        r
    };
    for (k, v) in [
        ("k".repeat(64), "v".to_string()),
        ("a-z_0.9/x".to_string(), "é".repeat(256)),
        ("topic".to_string(), String::new()),
    ] {
        send(&mut w.iran, with_label(&k, &v))
            .await
            .unwrap_or_else(|e| panic!("label {k}={v}: {e:?}"));
    }
    for (k, v) in [
        ("k".repeat(65), "v".to_string()),
        (String::new(), "v".to_string()),
        ("Topic".to_string(), "v".to_string()),
        ("top ic".to_string(), "v".to_string()),
        ("topic:x".to_string(), "v".to_string()),
        ("thème".to_string(), "v".to_string()),
        ("topic".to_string(), "é".repeat(257)),
    ] {
        assert_err(
            send(&mut w.iran, with_label(&k, &v)).await,
            Code::InvalidArgument,
            "INVALID_FIELD",
        );
    }

    // Notes: at most 2 KiB.
    let m = send(&mut w.iran, send_req(&ch, "notes")).await.unwrap();
    let mut a = move_req!(AcceptMessageRequest, m.id);
    a.note = "n".repeat(2 * 1024 + 1);
    assert_err(
        w.france.messages.accept_message(a.clone()).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    a.note.pop();
    let m1 = w
        .france
        .messages
        .accept_message(a)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m1.hops[0].note.len(), 2048);
    let mut s = pb::SuspendChannelRequest {
        channel_id: ch.clone(),
        note: "n".repeat(2049),
        expected_version: 0,
    };
    assert_err(
        w.iran.channels.suspend_channel(s.clone()).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    s.note.pop();
    w.iran.channels.suspend_channel(s).await.unwrap();

    // Malformed ids.
    assert_err(
        send(&mut w.iran, send_req("not-a-uuid", "x")).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    assert_err(
        send(&mut w.iran, send_req("", "no channel, no reply")).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    assert_err(
        w.iran
            .messages
            .get_message(pb::GetMessageRequest {
                message_id: "nope".into(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
}

#[tokio::test]
async fn a_field_violation_names_the_field() {
    use tonic_types::StatusExt;
    let server = Server::start().await;
    let mut w = world(&server).await;
    let mut r = send_req(&w.channel.id, &"x".repeat(257));
    r.body = "b".repeat(64 * 1024 + 1);
    let s = send(&mut w.iran, r).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    let details = s.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.domain, "backchannel.v1");
    assert_eq!(info.reason, "INVALID_FIELD");
    let fields: Vec<&str> = details
        .bad_request()
        .expect("BadRequest")
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert!(fields.contains(&"subject"), "{fields:?}");
    assert!(fields.contains(&"body"), "{fields:?}");
}

/// Asserts that `s` is an `INVALID_FIELD` refusal of exactly `fields`, whose
/// message names each field once and whose violations name their field in
/// `field` only, not again in the description.
#[track_caller]
fn assert_names_each_field_once(s: &tonic::Status, fields: &[&str]) {
    use tonic_types::StatusExt;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert_eq!(reason(s), "INVALID_FIELD", "{s:?}");
    for f in fields {
        assert_eq!(
            s.message().matches(f).count(),
            1,
            "{f} in the message {:?}",
            s.message()
        );
    }
    let details = s.get_error_details();
    let violations = &details.bad_request().expect("BadRequest").field_violations;
    let named: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(named, fields, "{violations:?}");
    for v in violations {
        assert!(
            !v.description.contains(&v.field),
            "the description repeats its field: {v:?}"
        );
    }
}

#[tokio::test]
async fn a_refusal_names_each_field_once() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let ch = w.channel.id.clone();
    let m = send(&mut w.iran, send_req(&ch, "a message")).await.unwrap();

    // Optional ids, in writes.
    let mut r = send_req("nope", "x");
    r.request_id = "nope".into();
    let s = send(&mut w.iran, r).await.unwrap_err();
    assert_names_each_field_once(&s, &["channel_id", "request_id"]);
    let mut r = send_req(&ch, "x");
    r.in_reply_to = "nope".into();
    let s = send(&mut w.iran, r).await.unwrap_err();
    assert_names_each_field_once(&s, &["in_reply_to"]);
    let mut a = move_req!(AcceptMessageRequest, m.id);
    a.request_id = "nope".into();
    let s = w.france.messages.accept_message(a).await.unwrap_err();
    assert_names_each_field_once(&s, &["request_id"]);
    let s = w
        .admin
        .channels
        .create_channel(pb::CreateChannelRequest {
            display_name: "Oman".into(),
            parties: vec!["iran".into(), "united-states".into()],
            mediators: vec!["japan".into()],
            request_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_names_each_field_once(&s, &["request_id"]);

    // Optional filters, in listings.
    let s = w
        .iran
        .channels
        .list_channels(pb::ListChannelsRequest {
            party_id: "Not A Party".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_names_each_field_once(&s, &["party_id"]);
    let s = w
        .iran
        .messages
        .list_messages(pb::ListMessagesRequest {
            channel_id: "nope".into(),
            party_id: "Not A Party".into(),
            thread_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_names_each_field_once(&s, &["channel_id", "party_id", "thread_id"]);
    for (channel_id, message_id, field) in [("nope", "", "channel_id"), ("", "nope", "message_id")]
    {
        let s = w
            .iran
            .messages
            .list_events(pb::ListEventsRequest {
                channel_id: channel_id.into(),
                message_id: message_id.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_names_each_field_once(&s, &[field]);
    }

    // A required id, refused on its own.
    let s = w
        .iran
        .messages
        .get_message(pb::GetMessageRequest {
            message_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_names_each_field_once(&s, &["message_id"]);
    assert_eq!(s.message(), "message_id: 'nope' is not a UUID");
}

fn create_party(id: &str, name: &str, kind: i32) -> pb::CreatePartyRequest {
    pb::CreatePartyRequest {
        party_id: id.into(),
        display_name: name.into(),
        kind,
    }
}

#[tokio::test]
async fn party_ids_display_names_and_kinds_are_checked() {
    let server = Server::start().await;
    let mut admin = server.admin().await;
    let state = pb::party::Kind::State as i32;

    let ok = [
        ("a".repeat(63), "é".repeat(128)),
        ("oman".to_string(), "Sultanate of Oman".to_string()),
        ("un-1".to_string(), "United Nations".to_string()),
        ("q".to_string(), "Q".to_string()),
    ];
    for (id, name) in &ok {
        let p = admin
            .parties
            .create_party(create_party(id, name, state))
            .await
            .unwrap_or_else(|e| panic!("{id}: {e:?}"))
            .into_inner();
        assert_eq!(&p.id, id);
        assert_eq!(&p.display_name, name);
        assert_eq!(p.kind, state);
    }
    let bad_ids = [
        "a".repeat(64),
        "Iran".into(),
        "1iran".into(),
        "-iran".into(),
        "iran_".into(),
        "ir an".into(),
        "irân".into(),
        String::new(),
        "admin".into(),
        "system".into(),
    ];
    for id in bad_ids {
        assert_err(
            admin
                .parties
                .create_party(create_party(&id, "Name", state))
                .await,
            Code::InvalidArgument,
            "INVALID_FIELD",
        );
    }
    for name in [String::new(), "  ".into(), "é".repeat(129)] {
        assert_err(
            admin
                .parties
                .create_party(create_party("valid-id", &name, state))
                .await,
            Code::InvalidArgument,
            "INVALID_FIELD",
        );
    }
    for kind in [0, 42, -1] {
        assert_err(
            admin
                .parties
                .create_party(create_party("valid-id", "Name", kind))
                .await,
            Code::InvalidArgument,
            "INVALID_FIELD",
        );
    }
    assert_err(
        admin
            .parties
            .create_party(create_party("oman", "Again", state))
            .await,
        Code::AlreadyExists,
        "PARTY_EXISTS",
    );
    // A malformed id is INVALID_ARGUMENT on reads too, and a party cannot
    // create parties.
    assert_err(
        admin
            .parties
            .get_party(pb::GetPartyRequest {
                party_id: "Not Valid".into(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    assert_err(
        admin
            .parties
            .get_party(pb::GetPartyRequest {
                party_id: "nobody".into(),
            })
            .await,
        Code::NotFound,
        "PARTY_NOT_FOUND",
    );
    let token = party(&mut admin, "iran").await;
    let mut iran = server.clients(&token).await;
    assert_err(
        iran.parties
            .create_party(create_party("valid-id", "Name", state))
            .await,
        Code::PermissionDenied,
        "ADMIN_ONLY",
    );
    assert_err(
        iran.parties
            .create_party(create_party("Bad", "Name", state))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
}

fn channel_req(parties: &[&str], mediators: &[String]) -> pb::CreateChannelRequest {
    pb::CreateChannelRequest {
        display_name: "route".into(),
        parties: parties.iter().map(|p| p.to_string()).collect(),
        mediators: mediators.to_vec(),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn channel_routes_are_checked() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let mut admin = w.admin.clone();
    let mediators: Vec<String> = (1..=9).map(|i| format!("m{i}")).collect();
    for m in &mediators {
        party(&mut admin, m).await;
    }
    let pair = ["iran", "united-states"];

    // 1 to 8 mediators.
    let c = admin
        .channels
        .create_channel(channel_req(&pair, &mediators[..8]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.mediators, mediators[..8].to_vec());
    assert_eq!(c.parties, vec!["iran", "united-states"]);
    assert_eq!(c.state, pb::channel::State::Open as i32);
    assert_eq!(c.version, 1);
    admin
        .channels
        .create_channel(channel_req(&pair, &mediators[..1]))
        .await
        .unwrap();
    for n in [0, 9] {
        assert_err(
            admin
                .channels
                .create_channel(channel_req(&pair, &mediators[..n]))
                .await,
            Code::InvalidArgument,
            "INVALID_FIELD",
        );
    }
    // Exactly two principals.
    for parties in [
        &["iran"][..],
        &["iran", "united-states", "oman"][..],
        &[][..],
    ] {
        assert_err(
            admin
                .channels
                .create_channel(channel_req(parties, &mediators[..1]))
                .await,
            Code::InvalidArgument,
            "INVALID_FIELD",
        );
    }
    // Repeated parties and principals on the route.
    let route = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for m in [
        route(&["france", "japan", "france"]),
        route(&["france", "iran"]),
        route(&["united-states"]),
    ] {
        assert_err(
            admin.channels.create_channel(channel_req(&pair, &m)).await,
            Code::InvalidArgument,
            "INVALID_ROUTE",
        );
    }
    assert_err(
        admin
            .channels
            .create_channel(channel_req(&["iran", "iran"], &route(&["france"])))
            .await,
        Code::InvalidArgument,
        "INVALID_ROUTE",
    );
    // Unregistered parties.
    assert_err(
        admin
            .channels
            .create_channel(channel_req(&pair, &route(&["france", "oman"])))
            .await,
        Code::InvalidArgument,
        "UNKNOWN_PARTY",
    );
    assert_err(
        admin
            .channels
            .create_channel(channel_req(&["iran", "oman"], &route(&["france"])))
            .await,
        Code::InvalidArgument,
        "UNKNOWN_PARTY",
    );
    // Malformed party ids in the route.
    assert_err(
        admin
            .channels
            .create_channel(channel_req(&pair, &route(&["France"])))
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    // Display name 1–128 characters.
    for (name, ok) in [
        ("é".repeat(128), true),
        ("é".repeat(129), false),
        (String::new(), false),
    ] {
        let mut r = channel_req(&pair, &route(&["france"]));
        r.display_name = name;
        let res = admin.channels.create_channel(r).await;
        if ok {
            res.unwrap();
        } else {
            assert_err(res, Code::InvalidArgument, "INVALID_FIELD");
        }
    }
    // Principals may open channels; mediators and outsiders may not.
    w.us.channels
        .create_channel(channel_req(&pair, &route(&["japan"])))
        .await
        .unwrap();
    assert_err(
        w.france
            .channels
            .create_channel(channel_req(&pair, &route(&["japan"])))
            .await,
        Code::PermissionDenied,
        "NOT_A_PRINCIPAL",
    );
}

#[tokio::test]
async fn page_sizes_and_enum_numbers_are_checked() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    // 1,001 messages, so a clamped page is visibly 1,000 long.
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..20 {
        let mut iran = w.iran.clone();
        let ch = w.channel.id.clone();
        tasks.spawn(async move {
            let mut i = t;
            while i < 1001 {
                iran.messages
                    .send_message(send_req(&ch, &format!("m{i}")))
                    .await
                    .unwrap();
                i += 20;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }

    let list = |page_size: i32| pb::ListMessagesRequest {
        page_size,
        ..Default::default()
    };
    let big = w
        .iran
        .messages
        .list_messages(list(5000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big.messages.len(), 1000, "page_size above 1,000 is clamped");
    assert!(!big.next_page_token.is_empty());
    let default = w
        .iran
        .messages
        .list_messages(list(0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default.messages.len(), 50, "page_size 0 means 50");
    let events = w
        .admin
        .messages
        .list_events(pb::ListEventsRequest {
            page_size: i32::MAX,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(events.events.len(), 1000);
    assert!(!events.next_page_token.is_empty());
    let channels = w
        .admin
        .channels
        .list_channels(pb::ListChannelsRequest {
            page_size: 1001,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(channels.channels.len(), 1);
    let parties = w
        .admin
        .parties
        .list_parties(pb::ListPartiesRequest {
            page_size: 100_000,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(parties.parties.len(), 5);

    // Negative page sizes.
    assert_err(
        w.iran.messages.list_messages(list(-1)).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    assert_err(
        w.iran
            .messages
            .list_events(pb::ListEventsRequest {
                page_size: -5,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    assert_err(
        w.iran
            .channels
            .list_channels(pb::ListChannelsRequest {
                page_size: i32::MIN,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    assert_err(
        w.iran
            .parties
            .list_parties(pb::ListPartiesRequest {
                page_size: -1,
                page_token: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );

    // Unknown enum numbers.
    assert_err(
        w.iran
            .messages
            .list_messages(pb::ListMessagesRequest {
                state: 99,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    assert_err(
        w.iran
            .channels
            .list_channels(pb::ListChannelsRequest {
                state: 42,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    // A known state filters.
    let submitted = w
        .iran
        .messages
        .list_messages(pb::ListMessagesRequest {
            state: pb::message::State::Delivered as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(submitted.messages.is_empty());
}

/// Raw requests whose fields the generated types would never produce.
mod raw {
    /// `GetPartyRequest` with `party_id` (tag 1) as raw bytes.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetPartyBytes {
        #[prost(bytes = "vec", tag = "1")]
        pub party_id: Vec<u8>,
    }

    /// `GetPartyRequest` with tag 1 on the wrong wire type.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetPartyVarint {
        #[prost(uint64, tag = "1")]
        pub party_id: u64,
    }

    /// `SendMessageRequest` with `channel_id` and `subject` as raw bytes.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SendBytes {
        #[prost(bytes = "vec", tag = "1")]
        pub channel_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub subject: Vec<u8>,
    }

    /// Any response, ignored.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Ignored {}
}

async fn raw_call<M: prost::Message + Send + Sync + 'static>(
    server: &Server,
    token: &str,
    path: &'static str,
    msg: M,
) -> Result<raw::Ignored, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(server.connect().await);
    grpc.ready().await.expect("ready");
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    let codec = tonic_prost::ProstCodec::<M, raw::Ignored>::default();
    grpc.unary(
        req,
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_request_that_does_not_decode_is_invalid_argument_not_internal() {
    let server = Server::start().await;
    let w = world(&server).await;
    const GET_PARTY: &str = "/backchannel.v1.PartyService/GetParty";
    // Invalid UTF-8 in a string field.
    let r = raw_call(
        &server,
        ADMIN_TOKEN,
        GET_PARTY,
        raw::GetPartyBytes {
            party_id: vec![b'i', 0xff, 0xfe, b'n'],
        },
    )
    .await;
    assert_err(r, Code::InvalidArgument, "INVALID_REQUEST");
    // The wrong wire type for a field.
    let r = raw_call(
        &server,
        ADMIN_TOKEN,
        GET_PARTY,
        raw::GetPartyVarint { party_id: 7 },
    )
    .await;
    assert_err(r, Code::InvalidArgument, "INVALID_REQUEST");
    // Valid bytes through the same path work, so the call itself is sound.
    raw_call(
        &server,
        ADMIN_TOKEN,
        GET_PARTY,
        raw::GetPartyBytes {
            party_id: b"iran".to_vec(),
        },
    )
    .await
    .expect("a well-formed raw GetParty succeeds");
    // Invalid UTF-8 in a write, by a party.
    let r = raw_call(
        &server,
        &w.tokens["iran"],
        "/backchannel.v1.MessageService/SendMessage",
        raw::SendBytes {
            channel_id: w.channel.id.clone().into_bytes(),
            subject: vec![0xc3, 0x28],
        },
    )
    .await;
    assert_err(r, Code::InvalidArgument, "INVALID_REQUEST");
    // No message at all in the request body.
    let mut grpc = tonic::client::Grpc::new(server.connect().await);
    grpc.ready().await.expect("ready");
    let mut req = tonic::Request::new(tokio_stream::iter(Vec::<raw::Ignored>::new()));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().expect("ascii"),
    );
    let r = grpc
        .client_streaming(
            req,
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/backchannel.v1.PartyService/WhoAmI",
            ),
            tonic_prost::ProstCodec::<raw::Ignored, raw::Ignored>::default(),
        )
        .await;
    assert_err(r, Code::InvalidArgument, "INVALID_REQUEST");
    let mut admin = w.admin.clone();
    assert_eq!(all_events(&mut admin, Default::default()).await.len(), 1);
}

#[tokio::test]
async fn a_request_over_one_mib_is_resource_exhausted() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let mut r = send_req(&w.channel.id, "huge");
    r.body = "b".repeat(1024 * 1024 + 1);
    assert_err(
        send(&mut w.iran, r.clone()).await,
        Code::ResourceExhausted,
        "REQUEST_TOO_LARGE",
    );
    // Far over the limit, too.
    r.body = "b".repeat(6 * 1024 * 1024);
    assert_err(
        send(&mut w.iran, r).await,
        Code::ResourceExhausted,
        "REQUEST_TOO_LARGE",
    );
    // Just under the limit is decoded and then judged by the field limits.
    let mut r = send_req(&w.channel.id, "large");
    r.body = "b".repeat(1000 * 1024);
    assert_err(
        send(&mut w.iran, r).await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    // The connection is still usable afterwards.
    send(&mut w.iran, send_req(&w.channel.id, "small"))
        .await
        .unwrap();
}

#[tokio::test]
async fn hostile_sizes_get_a_small_clear_refusal_never_internal() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    // A sequence past what the log can hold lists nothing.
    let r = w
        .admin
        .messages
        .list_events(pb::ListEventsRequest {
            after_sequence: u64::MAX,
            ..Default::default()
        })
        .await
        .expect("no INTERNAL for a huge after_sequence");
    assert!(r.into_inner().events.is_empty());
    // A huge label key is refused, and the refusal stays small enough to send.
    let mut req = send_req(&w.channel.id, "labels");
    req.labels.insert("k".repeat(200_000), "v".into());
    let s = w.iran.messages.send_message(req).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().len() < 2_000, "{} bytes", s.message().len());
    // Thousands of bad ids: one refusal listing a bounded number of them.
    let bad = pb::SubscribeRequest {
        channel_ids: (0..5_000).map(|i| format!("bad-{i}")).collect(),
        ..Default::default()
    };
    let s = w.admin.messages.subscribe(bad).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().ends_with("and 4980 more"), "{}", s.message());
}
