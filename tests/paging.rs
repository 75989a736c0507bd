//! Listings and their pages: order, stable heads, no duplicates or gaps,
//! and page tokens bound to their listing.
mod common;
use backchannel::pb;
use common::*;
use tonic::Code;

async fn send_n(c: &mut Clients, channel: &str, n: usize) -> Vec<pb::Message> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            c.messages
                .send_message(send_req(channel, &format!("message {i}")))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    out
}

fn ids(ms: &[pb::Message]) -> Vec<String> {
    ms.iter().map(|m| m.id.clone()).collect()
}

#[tokio::test]
async fn list_messages_pages_newest_first_at_the_first_pages_head() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let ch = w.channel.id.clone();
    let sent = send_n(&mut w.iran, &ch, 5).await;
    let head = all_events(&mut w.admin, Default::default()).await.len() as u64;

    let req = pb::ListMessagesRequest {
        channel_id: ch.clone(),
        page_size: 2,
        ..Default::default()
    };
    let p1 = w
        .france
        .messages
        .list_messages(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p1.head_sequence, head);
    assert_eq!(
        ids(&p1.messages),
        vec![sent[4].id.clone(), sent[3].id.clone()]
    );
    assert!(!p1.next_page_token.is_empty());

    // Changes after the first page: a new message, and a move of a listed one.
    let late =
        w.us.messages
            .send_message(send_req(&ch, "sent after page 1"))
            .await
            .unwrap()
            .into_inner();
    w.france
        .messages
        .accept_message(move_req!(AcceptMessageRequest, sent[2].id))
        .await
        .unwrap();

    let mut seen = ids(&p1.messages);
    let mut token = p1.next_page_token;
    let mut pages = 1;
    while !token.is_empty() {
        let mut r = req.clone();
        r.page_token = token;
        let p = w
            .france
            .messages
            .list_messages(r)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            p.head_sequence, head,
            "every page returns the first page's head"
        );
        assert!(p.messages.len() <= 2);
        seen.extend(ids(&p.messages));
        token = p.next_page_token;
        pages += 1;
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = sent.iter().rev().map(|m| m.id.clone()).collect();
    assert_eq!(seen, want, "newest first, no duplicates, none missing");
    assert!(!seen.contains(&late.id));

    // A fresh listing sees the new message and a new head.
    let fresh = w
        .france
        .messages
        .list_messages(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fresh.messages[0].id, late.id);
    assert_eq!(fresh.head_sequence, head + 2);
}

#[tokio::test]
async fn page_tokens_are_bound_to_their_listing() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let ch = w.channel.id.clone();
    send_n(&mut w.iran, &ch, 3).await;
    let req = pb::ListMessagesRequest {
        channel_id: ch.clone(),
        page_size: 1,
        ..Default::default()
    };
    let token = w
        .iran
        .messages
        .list_messages(req.clone())
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    assert!(!token.is_empty());

    // The same listing accepts it.
    let mut same = req.clone();
    same.page_token = token.clone();
    w.iran.messages.list_messages(same).await.unwrap();

    // Other filters, page size aside, do not.
    let mut other_state = req.clone();
    other_state.state = pb::message::State::Submitted as i32;
    other_state.page_token = token.clone();
    let mut other_filter = req.clone();
    other_filter.channel_id = String::new();
    other_filter.party_id = "iran".into();
    other_filter.page_token = token.clone();
    let mut garbage = req.clone();
    garbage.page_token = "garbage".into();
    let mut tampered = req.clone();
    tampered.page_token = {
        let mut t = token.clone().into_bytes();
        let last = t.len() - 1;
        t[last] = if t[last] == b'A' { b'B' } else { b'A' };
        String::from_utf8(t).unwrap()
    };
    for r in [other_state, other_filter, garbage, tampered] {
        assert_err(
            w.iran.messages.list_messages(r).await,
            Code::InvalidArgument,
            "INVALID_PAGE_TOKEN",
        );
    }
    // Another caller's token is not theirs to use.
    let mut r = req.clone();
    r.page_token = token.clone();
    assert_err(
        w.france.messages.list_messages(r).await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );
    // Nor is it a token for another method.
    assert_err(
        w.iran
            .messages
            .list_events(pb::ListEventsRequest {
                channel_id: ch.clone(),
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );
    assert_err(
        w.iran
            .channels
            .list_channels(pb::ListChannelsRequest {
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );
    assert_err(
        w.iran
            .parties
            .list_parties(pb::ListPartiesRequest {
                page_size: 1,
                page_token: token,
            })
            .await,
        Code::InvalidArgument,
        "INVALID_PAGE_TOKEN",
    );
}

#[tokio::test]
async fn list_events_is_oldest_first_after_a_sequence_across_pages() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let ch = w.channel.id.clone();
    let sent = send_n(&mut w.iran, &ch, 4).await;
    for m in &sent[..2] {
        w.france
            .messages
            .forward_message(move_req!(ForwardMessageRequest, m.id))
            .await
            .unwrap();
    }
    // 1 opened + 4 sent + 2 forwarded.
    let total = 7u64;

    let mut got = Vec::new();
    let mut req = pb::ListEventsRequest {
        after_sequence: 2,
        page_size: 2,
        ..Default::default()
    };
    loop {
        let p = w
            .iran
            .messages
            .list_events(req.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(p.events.len() <= 2);
        got.extend(p.events.iter().map(|e| e.sequence));
        if p.next_page_token.is_empty() {
            break;
        }
        req.page_token = p.next_page_token;
    }
    assert_eq!(got, (3..=total).collect::<Vec<_>>());

    // By message and by channel.
    let by_msg = all_events(
        &mut w.admin,
        pb::ListEventsRequest {
            message_id: sent[0].id.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        by_msg.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![2, 6]
    );
    let by_channel = all_events(
        &mut w.admin,
        pb::ListEventsRequest {
            channel_id: ch.clone(),
            after_sequence: 5,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        by_channel.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![6, 7]
    );
    let beyond = w
        .iran
        .messages
        .list_events(pb::ListEventsRequest {
            after_sequence: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(beyond.events.is_empty());
    assert!(beyond.next_page_token.is_empty());

    // Both ids at once is malformed.
    assert_err(
        w.iran
            .messages
            .list_events(pb::ListEventsRequest {
                channel_id: ch.clone(),
                message_id: sent[0].id.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "INVALID_FIELD",
    );
    // The outsider sees none of it; and an id it may not see does not exist.
    let none = w
        .outsider
        .messages
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(none.events.is_empty());
    assert_err(
        w.outsider
            .messages
            .list_events(pb::ListEventsRequest {
                channel_id: ch.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "CHANNEL_NOT_FOUND",
    );
    assert_err(
        w.outsider
            .messages
            .list_events(pb::ListEventsRequest {
                message_id: sent[0].id.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "MESSAGE_NOT_FOUND",
    );
}

#[tokio::test]
async fn list_parties_pages_by_id() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    for p in ["oman", "qatar", "switzerland"] {
        party(&mut w.admin, p).await;
    }
    let mut all = Vec::new();
    let mut req = pb::ListPartiesRequest {
        page_size: 3,
        page_token: String::new(),
    };
    let mut pages = 0;
    loop {
        // Any authenticated caller may list the directory.
        let p = w
            .outsider
            .parties
            .list_parties(req.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(p.parties.len() <= 3);
        all.extend(p.parties.into_iter().map(|p| p.id));
        pages += 1;
        if p.next_page_token.is_empty() {
            break;
        }
        req.page_token = p.next_page_token;
    }
    assert!(pages >= 3);
    assert_eq!(
        all,
        vec![
            "france",
            "iran",
            "japan",
            "oman",
            "outsider",
            "qatar",
            "switzerland",
            "united-states"
        ]
    );
}

#[tokio::test]
async fn list_channels_pages_newest_first_with_filters() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    party(&mut w.admin, "oman").await;
    let mut created = vec![w.channel.clone()];
    for (i, (parties, mediators)) in [
        (["iran", "united-states"], vec!["japan"]),
        (["iran", "united-states"], vec!["oman"]),
        (["united-states", "iran"], vec!["france", "oman"]),
        (["france", "japan"], vec!["oman"]),
    ]
    .into_iter()
    .enumerate()
    {
        created.push(
            w.admin
                .channels
                .create_channel(pb::CreateChannelRequest {
                    display_name: format!("channel {i}"),
                    parties: parties.iter().map(|p| p.to_string()).collect(),
                    mediators: mediators.iter().map(|p| p.to_string()).collect(),
                    request_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner(),
        );
    }
    w.admin
        .channels
        .suspend_channel(pb::SuspendChannelRequest {
            channel_id: created[2].id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    async fn list_all(c: &mut Clients, mut req: pb::ListChannelsRequest) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let p = c
                .channels
                .list_channels(req.clone())
                .await
                .unwrap()
                .into_inner();
            assert!(p.channels.len() <= req.page_size.max(1) as usize);
            out.extend(p.channels.into_iter().map(|c| c.id));
            if p.next_page_token.is_empty() {
                return out;
            }
            req.page_token = p.next_page_token;
        }
    }
    let id = |i: usize| created[i].id.clone();
    let page2 = |party: &str, state: i32| pb::ListChannelsRequest {
        party_id: party.into(),
        state,
        page_size: 2,
        page_token: String::new(),
    };
    assert_eq!(
        list_all(&mut w.admin, page2("", 0)).await,
        vec![id(4), id(3), id(2), id(1), id(0)]
    );
    // Need-to-know: Iran sees only its own channels.
    assert_eq!(
        list_all(&mut w.iran, page2("", 0)).await,
        vec![id(3), id(2), id(1), id(0)]
    );
    // party_id matches any role.
    assert_eq!(
        list_all(&mut w.admin, page2("oman", 0)).await,
        vec![id(4), id(3), id(2)]
    );
    assert_eq!(
        list_all(&mut w.japan, page2("france", 0)).await,
        vec![id(4), id(0)]
    );
    assert_eq!(
        list_all(
            &mut w.admin,
            page2("", pb::channel::State::Suspended as i32)
        )
        .await,
        vec![id(2)]
    );
    assert!(list_all(&mut w.outsider, page2("", 0)).await.is_empty());
}

/// DESIGN §4: every response stays under 4 MiB, the default receive limit
/// of gRPC clients.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

#[tokio::test]
async fn a_page_of_large_messages_ends_early_under_four_mib_and_the_listing_goes_on() {
    use prost::Message as _;
    use std::collections::HashSet;
    let server = Server::start().await;
    let mut w = world(&server).await;
    let ch = w.channel.id.clone();
    // 80 bodies of 60 KiB (the limit is 64 KiB): about 4.9 MB in all, more
    // than one response may carry.
    let mut sent = HashSet::new();
    for i in 0..80u8 {
        let mut r = send_req(&ch, &format!("large {i}"));
        r.body = char::from(b'a' + i % 26).to_string().repeat(60 * 1024);
        let m = w.iran.messages.send_message(r).await.unwrap().into_inner();
        sent.insert(m.id);
    }

    // A default page (50 of them, about 3 MB) is over the 1 MiB request
    // limit, but a client reads responses up to 4 MiB.
    let page = w
        .iran
        .messages
        .list_messages(pb::ListMessagesRequest {
            channel_id: ch.clone(),
            ..Default::default()
        })
        .await
        .expect("a default page the client can read")
        .into_inner();
    assert_eq!(page.messages.len(), 50);
    assert!(page.encoded_len() > 1024 * 1024);

    let mut req = pb::ListMessagesRequest {
        channel_id: ch.clone(),
        page_size: 1000,
        ..Default::default()
    };
    let (mut listed, mut pages) = (Vec::new(), 0);
    loop {
        let page = w
            .iran
            .messages
            .list_messages(req.clone())
            .await
            .expect("a page the client can read")
            .into_inner();
        let bytes = page.encoded_len();
        assert!(bytes < MAX_RESPONSE_BYTES, "a page of {bytes} bytes");
        assert!(!page.messages.is_empty(), "an empty page before the end");
        pages += 1;
        listed.extend(page.messages.into_iter().map(|m| m.id));
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    assert!(pages >= 2, "{pages} page(s)");
    assert_eq!(listed.len(), sent.len(), "each message once");
    assert_eq!(listed.into_iter().collect::<HashSet<_>>(), sent);

    // Their MESSAGE_SENT events carry the messages: the same bound.
    let mut req = pb::ListEventsRequest {
        channel_id: ch.clone(),
        page_size: 1000,
        ..Default::default()
    };
    let (mut events, mut pages) = (Vec::new(), 0);
    loop {
        let page = w
            .iran
            .messages
            .list_events(req.clone())
            .await
            .expect("a page the client can read")
            .into_inner();
        let bytes = page.encoded_len();
        assert!(bytes < MAX_RESPONSE_BYTES, "a page of {bytes} bytes");
        assert!(!page.events.is_empty(), "an empty page before the end");
        pages += 1;
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        req.page_token = page.next_page_token;
    }
    assert!(pages >= 2, "{pages} page(s)");
    assert!(
        events.windows(2).all(|e| e[0].sequence < e[1].sequence),
        "oldest first, each once"
    );
    let sent_events: HashSet<String> = events
        .iter()
        .filter(|e| e.r#type == pb::event::Type::MessageSent as i32)
        .map(|e| e.message_id.clone())
        .collect();
    assert_eq!(sent_events, sent);
    assert_eq!(events.len(), sent.len() + 1, "CHANNEL_OPENED and each send");
}
