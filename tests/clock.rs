//! The server's clock is one the tests can control: with a manual clock a
//! deadline passes, and a token expires, when the test moves the clock, not
//! when the wall clock gets there. The store is the real embedded store on
//! disk, driven through the same `Store::write` the RPCs use.

use std::collections::BTreeMap;
use std::sync::Arc;

use backchannel::auth::Authenticator;
use backchannel::clock::Clock;
use backchannel::domain::{
    Caller, Command, MessageState, NewChannel, NewMessage, NewParty, Outcome, PartyId, PartyKind,
    Time,
};
use backchannel::store::{Store, sqlite};

/// 25 August 2019, 12:00 UTC.
const BIARRITZ: Time = Time(1_566_734_400_000_000);
const HOUR: i64 = 3_600;

fn party(id: &str) -> PartyId {
    PartyId::parse(id).expect("a valid party id")
}

async fn open(dir: &std::path::Path, clock: &Clock) -> Store {
    let (store, _head) = Store::open_embedded(
        dir,
        Box::new(|_| {}),
        sqlite::Options {
            clock: clock.clone(),
            check_events: 1_000,
            requests_move_at: 1_000,
        },
    )
    .expect("open the store");
    store
}

async fn register(store: &Store, id: &str) {
    store
        .write(
            Caller::Admin,
            Command::CreateParty(NewParty {
                id: party(id),
                display_name: id.to_owned(),
                kind: PartyKind::State,
            }),
        )
        .await
        .expect("register");
}

#[tokio::test]
async fn a_deadline_passes_when_the_clock_is_moved_and_the_events_carry_its_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Clock::manual(BIARRITZ);
    let store = open(dir.path(), &clock).await;
    for id in ["iran", "france", "united-states"] {
        register(&store, id).await;
    }
    let Outcome::Channel(channel) = store
        .write(
            Caller::Admin,
            Command::CreateChannel(NewChannel {
                display_name: "Tehran–Paris–Washington".to_owned(),
                parties: [party("iran"), party("united-states")],
                mediators: vec![party("france")],
                request_id: None,
            }),
        )
        .await
        .expect("open the channel")
    else {
        panic!("not a channel");
    };
    assert_eq!(
        channel.create_time, BIARRITZ,
        "recorded at the clock's time"
    );
    let Outcome::Message(sent) = store
        .write(
            Caller::Party(party("iran")),
            Command::SendMessage(NewMessage {
                channel_id: Some(channel.id),
                subject: "A proposal to talk".to_owned(),
                body: "Within the week, or not at all.".to_owned(),
                labels: BTreeMap::new(),
                respond_by: Some(BIARRITZ.plus_secs(HOUR)),
                in_reply_to: None,
                occur_time: None,
                request_id: None,
            }),
        )
        .await
        .expect("send")
    else {
        panic!("not a message");
    };

    // The deadline lies ahead on the clock: nothing expires, however
    // long the wall clock has run since 2019.
    let out = store
        .write(Caller::Admin, Command::ExpireDue)
        .await
        .expect("expire");
    assert_eq!(out, Outcome::Expired(0));

    clock.advance(HOUR + 1);
    let out = store
        .write(Caller::Admin, Command::ExpireDue)
        .await
        .expect("expire");
    assert_eq!(out, Outcome::Expired(1));
    let now = store
        .message(sent.id)
        .await
        .expect("read")
        .expect("the message");
    assert_eq!(now.state, MessageState::Expired);
    assert_eq!(now.update_time, BIARRITZ.plus_secs(HOUR + 1));
    store.close().await;
}

#[tokio::test]
async fn a_token_stops_working_when_the_clock_passes_its_expiry() {
    let clock = Clock::manual(BIARRITZ);
    let auth = Arc::new(Authenticator::new("root", Vec::new(), clock.clone()));
    let token = backchannel::auth::new_token().expect("a token");
    auth.issued(backchannel::store::TokenRecord {
        token_id: token.token_id,
        party_id: party("iran"),
        secret_hash: token.secret_hash,
        read_only: false,
        create_time: BIARRITZ,
        expire_time: Some(BIARRITZ.plus_secs(60)),
        revoke_time: None,
        last_use_time: None,
    });
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert(
        "authorization",
        format!("Bearer {}", token.token).parse().expect("metadata"),
    );
    assert!(auth.authenticate(&md).is_ok(), "valid before its expiry");
    clock.advance(60);
    let refused = auth.authenticate(&md).expect_err("expired at its expiry");
    assert_eq!(refused.reason.as_str(), "UNAUTHENTICATED");
}
