//! Tokens of least privilege (DESIGN §3): read-only and expiring tokens, and
//! the admin's list of tokens, over the real binary.

mod common;

use std::time::Instant;

use backchannel::pb;
use common::*;
use tonic::Code;

fn in_secs(secs: i64) -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    prost_types::Timestamp {
        seconds: now.as_secs() as i64 + secs,
        nanos: 0,
    }
}

async fn issue(admin: &mut Clients, req: pb::IssueTokenRequest) -> pb::IssueTokenResponse {
    admin
        .parties
        .issue_token(req)
        .await
        .expect("issue a token")
        .into_inner()
}

async fn all_tokens(admin: &mut Clients, party_id: &str, page_size: i32) -> Vec<pb::TokenInfo> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = admin
            .parties
            .list_tokens(pb::ListTokensRequest {
                party_id: party_id.into(),
                page_size,
                page_token,
            })
            .await
            .expect("list tokens")
            .into_inner();
        out.extend(r.tokens);
        if r.next_page_token.is_empty() {
            return out;
        }
        page_token = r.next_page_token;
    }
}

#[tokio::test]
async fn list_tokens_shows_every_token_with_its_metadata_and_never_its_secret() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let viewer = issue(
        &mut w.admin,
        pb::IssueTokenRequest {
            party_id: "iran".into(),
            read_only: true,
            ..Default::default()
        },
    )
    .await;
    let expire = in_secs(3600);
    let temporary = issue(
        &mut w.admin,
        pb::IssueTokenRequest {
            party_id: "iran".into(),
            expire_time: Some(expire),
            ..Default::default()
        },
    )
    .await;
    let unused = issue(
        &mut w.admin,
        pb::IssueTokenRequest {
            party_id: "france".into(),
            ..Default::default()
        },
    )
    .await;
    w.admin
        .parties
        .revoke_token(pb::RevokeTokenRequest {
            token_id: unused.token_id.clone(),
        })
        .await
        .expect("revoke");
    // The read-only token is used once.
    server
        .clients(&viewer.token)
        .await
        .parties
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("the read-only token works");

    // A past expiry is refused.
    let r = w
        .admin
        .parties
        .issue_token(pb::IssueTokenRequest {
            party_id: "iran".into(),
            expire_time: Some(in_secs(-1)),
            ..Default::default()
        })
        .await;
    assert_err(r, Code::InvalidArgument, "INVALID_FIELD");

    let every = all_tokens(&mut w.admin, "", 0).await;
    // The world's five tokens and these three, in issue order.
    assert_eq!(every.len(), 5 + 3, "{every:#?}");
    let ids: Vec<_> = every.iter().map(|t| t.token_id.clone()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "ordered by id");
    let by_id = |id: &str| {
        every
            .iter()
            .find(|t| t.token_id == id)
            .unwrap_or_else(|| panic!("token {id} listed"))
            .clone()
    };
    let v = by_id(&viewer.token_id);
    assert_eq!((v.party_id.as_str(), v.read_only), ("iran", true));
    assert!(v.create_time.is_some() && v.expire_time.is_none() && v.revoke_time.is_none());
    assert!(v.last_use_time.is_some(), "it was used: {v:?}");
    let t = by_id(&temporary.token_id);
    assert!(!t.read_only);
    assert_eq!(t.expire_time, Some(expire));
    assert!(t.last_use_time.is_none(), "never used: {t:?}");
    let u = by_id(&unused.token_id);
    assert_eq!(u.party_id, "france");
    assert!(u.revoke_time.is_some(), "{u:?}");

    // No secret in any listing, in any form.
    let encoded = prost::Message::encode_to_vec(&pb::ListTokensResponse {
        tokens: every.clone(),
        next_page_token: String::new(),
    });
    for token in [&viewer.token, &temporary.token, &unused.token] {
        // bc_<32 hex>_<secret>; the secret itself may contain '_'.
        let secret = token.get(36..).expect("secret");
        assert!(
            !encoded
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "a secret is listed"
        );
    }

    // One party's tokens, one per page, are the same as filtering the whole.
    let iran = all_tokens(&mut w.admin, "iran", 1).await;
    let want: Vec<_> = every
        .iter()
        .filter(|t| t.party_id == "iran")
        .cloned()
        .collect();
    assert_eq!(iran, want);
    // A page token belongs to its filter.
    let first = w
        .admin
        .parties
        .list_tokens(pb::ListTokensRequest {
            party_id: "iran".into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("first page")
        .into_inner();
    let r = w
        .admin
        .parties
        .list_tokens(pb::ListTokensRequest {
            party_id: "france".into(),
            page_size: 1,
            page_token: first.next_page_token,
        })
        .await;
    assert_err(r, Code::InvalidArgument, "INVALID_PAGE_TOKEN");

    // The last use survives a restart (stored at the latest at shutdown).
    let server = server.restart().await;
    let mut admin = server.admin().await;
    let after = all_tokens(&mut admin, "iran", 0).await;
    let v2 = after
        .iter()
        .find(|t| t.token_id == viewer.token_id)
        .expect("listed after restart");
    assert_eq!(v2.last_use_time, v.last_use_time);
    assert!(v2.read_only);
    let r = server
        .clients(&viewer.token)
        .await
        .messages
        .send_message(send_req(&w.channel.id, "from a viewer"))
        .await;
    assert_err(r, Code::PermissionDenied, "READ_ONLY_TOKEN");
}

#[tokio::test]
async fn an_expiring_token_ends_its_open_subscriptions() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let t = issue(
        &mut w.admin,
        pb::IssueTokenRequest {
            party_id: "iran".into(),
            expire_time: Some(in_secs(2)),
            ..Default::default()
        },
    )
    .await;
    let mut c = server.clients(&t.token).await;
    let mut sub = stream::subscribe(&mut c, stream::from(Some(0))).await;
    stream::caught_up(&mut sub).await;
    let started = Instant::now();
    let end = loop {
        match stream::next(&mut sub).await {
            Ok(_) => assert!(started.elapsed() < DEADLINE, "the stream never ended"),
            Err(s) => break s,
        }
    };
    assert_eq!(end.code(), Code::Unauthenticated, "{end:?}");
    // Expired at 2 s after issue, ended within 5 s of that.
    assert!(
        started.elapsed().as_secs() < 2 + 5,
        "{:?}",
        started.elapsed()
    );
}
