//! The authorization matrix: every RPC against every way of being refused.
//!
//! - (a) no token, (b) a garbage token, (c) a revoked token: `UNAUTHENTICATED`,
//!   also for malformed requests and bodies that do not decode (DESIGN §4:
//!   `UNAUTHENTICATED` is checked before `INVALID_ARGUMENT`);
//! - (d) a party that is not on a channel gets exactly the `NOT_FOUND` an
//!   absent id gets (no hint);
//! - (e) a party in the wrong role gets `PERMISSION_DENIED` with the specific
//!   reason; a mediator whose hop is not current gets `NOT_CURRENT_MEDIATOR`;
//! - need-to-know in lists and histories, and `WhoAmI`.
//!
//! The tables are driven by [`Rpc`]; each test asserts that every RPC it is
//! meant to cover appears in its table.

mod common;

use std::collections::BTreeSet;

use backchannel::pb;
use bytes::{Buf, BufMut};
use common::*;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

// ---------------------------------------------------------------------------
// The RPCs and their requests.

/// Every RPC of the three services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rpc {
    CreateParty,
    GetParty,
    ListParties,
    IssueToken,
    RevokeToken,
    ListTokens,
    WhoAmI,
    CreateChannel,
    GetChannel,
    ListChannels,
    SuspendChannel,
    ResumeChannel,
    CloseChannel,
    SendMessage,
    GetMessage,
    ListMessages,
    AcceptMessage,
    ForwardMessage,
    DeclineMessage,
    AcknowledgeMessage,
    RejectMessage,
    WithdrawMessage,
    ListEvents,
    Subscribe,
    GetRelayStats,
    GetCheckpoint,
    GetInclusionProof,
    GetConsistencyProof,
}

const ALL: [Rpc; 28] = [
    Rpc::CreateParty,
    Rpc::GetParty,
    Rpc::ListParties,
    Rpc::IssueToken,
    Rpc::RevokeToken,
    Rpc::ListTokens,
    Rpc::WhoAmI,
    Rpc::CreateChannel,
    Rpc::GetChannel,
    Rpc::ListChannels,
    Rpc::SuspendChannel,
    Rpc::ResumeChannel,
    Rpc::CloseChannel,
    Rpc::SendMessage,
    Rpc::GetMessage,
    Rpc::ListMessages,
    Rpc::AcceptMessage,
    Rpc::ForwardMessage,
    Rpc::DeclineMessage,
    Rpc::AcknowledgeMessage,
    Rpc::RejectMessage,
    Rpc::WithdrawMessage,
    Rpc::ListEvents,
    Rpc::Subscribe,
    Rpc::GetRelayStats,
    Rpc::GetCheckpoint,
    Rpc::GetInclusionProof,
    Rpc::GetConsistencyProof,
];

impl Rpc {
    /// The gRPC path.
    fn path(self) -> &'static str {
        use Rpc::*;
        match self {
            CreateParty => "/backchannel.v1.PartyService/CreateParty",
            GetParty => "/backchannel.v1.PartyService/GetParty",
            ListParties => "/backchannel.v1.PartyService/ListParties",
            IssueToken => "/backchannel.v1.PartyService/IssueToken",
            RevokeToken => "/backchannel.v1.PartyService/RevokeToken",
            ListTokens => "/backchannel.v1.PartyService/ListTokens",
            WhoAmI => "/backchannel.v1.PartyService/WhoAmI",
            CreateChannel => "/backchannel.v1.ChannelService/CreateChannel",
            GetChannel => "/backchannel.v1.ChannelService/GetChannel",
            ListChannels => "/backchannel.v1.ChannelService/ListChannels",
            SuspendChannel => "/backchannel.v1.ChannelService/SuspendChannel",
            ResumeChannel => "/backchannel.v1.ChannelService/ResumeChannel",
            CloseChannel => "/backchannel.v1.ChannelService/CloseChannel",
            SendMessage => "/backchannel.v1.MessageService/SendMessage",
            GetMessage => "/backchannel.v1.MessageService/GetMessage",
            ListMessages => "/backchannel.v1.MessageService/ListMessages",
            AcceptMessage => "/backchannel.v1.MessageService/AcceptMessage",
            ForwardMessage => "/backchannel.v1.MessageService/ForwardMessage",
            DeclineMessage => "/backchannel.v1.MessageService/DeclineMessage",
            AcknowledgeMessage => "/backchannel.v1.MessageService/AcknowledgeMessage",
            RejectMessage => "/backchannel.v1.MessageService/RejectMessage",
            WithdrawMessage => "/backchannel.v1.MessageService/WithdrawMessage",
            ListEvents => "/backchannel.v1.MessageService/ListEvents",
            Subscribe => "/backchannel.v1.MessageService/Subscribe",
            GetRelayStats => "/backchannel.v1.MessageService/GetRelayStats",
            GetCheckpoint => "/backchannel.v1.AuditService/GetCheckpoint",
            GetInclusionProof => "/backchannel.v1.AuditService/GetInclusionProof",
            GetConsistencyProof => "/backchannel.v1.AuditService/GetConsistencyProof",
        }
    }
}

/// One request of any RPC.
#[derive(Clone, Debug)]
enum Req {
    CreateParty(pb::CreatePartyRequest),
    GetParty(pb::GetPartyRequest),
    ListParties(pb::ListPartiesRequest),
    IssueToken(pb::IssueTokenRequest),
    RevokeToken(pb::RevokeTokenRequest),
    ListTokens(pb::ListTokensRequest),
    WhoAmI(pb::WhoAmIRequest),
    CreateChannel(pb::CreateChannelRequest),
    GetChannel(pb::GetChannelRequest),
    ListChannels(pb::ListChannelsRequest),
    SuspendChannel(pb::SuspendChannelRequest),
    ResumeChannel(pb::ResumeChannelRequest),
    CloseChannel(pb::CloseChannelRequest),
    SendMessage(pb::SendMessageRequest),
    GetMessage(pb::GetMessageRequest),
    ListMessages(pb::ListMessagesRequest),
    AcceptMessage(pb::AcceptMessageRequest),
    ForwardMessage(pb::ForwardMessageRequest),
    DeclineMessage(pb::DeclineMessageRequest),
    AcknowledgeMessage(pb::AcknowledgeMessageRequest),
    RejectMessage(pb::RejectMessageRequest),
    WithdrawMessage(pb::WithdrawMessageRequest),
    ListEvents(pb::ListEventsRequest),
    Subscribe(pb::SubscribeRequest),
    GetRelayStats(pb::GetRelayStatsRequest),
    GetCheckpoint(pb::GetCheckpointRequest),
    GetInclusionProof(pb::GetInclusionProofRequest),
    GetConsistencyProof(pb::GetConsistencyProofRequest),
}

impl Req {
    fn rpc(&self) -> Rpc {
        match self {
            Req::CreateParty(_) => Rpc::CreateParty,
            Req::GetParty(_) => Rpc::GetParty,
            Req::ListParties(_) => Rpc::ListParties,
            Req::IssueToken(_) => Rpc::IssueToken,
            Req::RevokeToken(_) => Rpc::RevokeToken,
            Req::ListTokens(_) => Rpc::ListTokens,
            Req::WhoAmI(_) => Rpc::WhoAmI,
            Req::CreateChannel(_) => Rpc::CreateChannel,
            Req::GetChannel(_) => Rpc::GetChannel,
            Req::ListChannels(_) => Rpc::ListChannels,
            Req::SuspendChannel(_) => Rpc::SuspendChannel,
            Req::ResumeChannel(_) => Rpc::ResumeChannel,
            Req::CloseChannel(_) => Rpc::CloseChannel,
            Req::SendMessage(_) => Rpc::SendMessage,
            Req::GetMessage(_) => Rpc::GetMessage,
            Req::ListMessages(_) => Rpc::ListMessages,
            Req::AcceptMessage(_) => Rpc::AcceptMessage,
            Req::ForwardMessage(_) => Rpc::ForwardMessage,
            Req::DeclineMessage(_) => Rpc::DeclineMessage,
            Req::AcknowledgeMessage(_) => Rpc::AcknowledgeMessage,
            Req::RejectMessage(_) => Rpc::RejectMessage,
            Req::WithdrawMessage(_) => Rpc::WithdrawMessage,
            Req::ListEvents(_) => Rpc::ListEvents,
            Req::Subscribe(_) => Rpc::Subscribe,
            Req::GetRelayStats(_) => Rpc::GetRelayStats,
            Req::GetCheckpoint(_) => Rpc::GetCheckpoint,
            Req::GetInclusionProof(_) => Rpc::GetInclusionProof,
            Req::GetConsistencyProof(_) => Rpc::GetConsistencyProof,
        }
    }
}

/// Sends `req` with the identity of `c`; the response is dropped.
async fn call(c: &Clients, req: Req) -> Result<(), Status> {
    let mut c = c.clone();
    match req {
        Req::CreateParty(r) => c.parties.create_party(r).await.map(drop),
        Req::GetParty(r) => c.parties.get_party(r).await.map(drop),
        Req::ListParties(r) => c.parties.list_parties(r).await.map(drop),
        Req::IssueToken(r) => c.parties.issue_token(r).await.map(drop),
        Req::RevokeToken(r) => c.parties.revoke_token(r).await.map(drop),
        Req::ListTokens(r) => c.parties.list_tokens(r).await.map(drop),
        Req::WhoAmI(r) => c.parties.who_am_i(r).await.map(drop),
        Req::CreateChannel(r) => c.channels.create_channel(r).await.map(drop),
        Req::GetChannel(r) => c.channels.get_channel(r).await.map(drop),
        Req::ListChannels(r) => c.channels.list_channels(r).await.map(drop),
        Req::SuspendChannel(r) => c.channels.suspend_channel(r).await.map(drop),
        Req::ResumeChannel(r) => c.channels.resume_channel(r).await.map(drop),
        Req::CloseChannel(r) => c.channels.close_channel(r).await.map(drop),
        Req::SendMessage(r) => c.messages.send_message(r).await.map(drop),
        Req::GetMessage(r) => c.messages.get_message(r).await.map(drop),
        Req::ListMessages(r) => c.messages.list_messages(r).await.map(drop),
        Req::AcceptMessage(r) => c.messages.accept_message(r).await.map(drop),
        Req::ForwardMessage(r) => c.messages.forward_message(r).await.map(drop),
        Req::DeclineMessage(r) => c.messages.decline_message(r).await.map(drop),
        Req::AcknowledgeMessage(r) => c.messages.acknowledge_message(r).await.map(drop),
        Req::RejectMessage(r) => c.messages.reject_message(r).await.map(drop),
        Req::WithdrawMessage(r) => c.messages.withdraw_message(r).await.map(drop),
        Req::ListEvents(r) => c.messages.list_events(r).await.map(drop),
        Req::Subscribe(r) => c.messages.subscribe(r).await.map(drop),
        Req::GetRelayStats(r) => c.messages.get_relay_stats(r).await.map(drop),
        Req::GetCheckpoint(r) => c.audit.get_checkpoint(r).await.map(drop),
        Req::GetInclusionProof(r) => c.audit.get_inclusion_proof(r).await.map(drop),
        Req::GetConsistencyProof(r) => c.audit.get_consistency_proof(r).await.map(drop),
    }
}

/// The ids a request is aimed at.
#[derive(Clone, Debug, Default)]
struct Target {
    party: String,
    token: String,
    channel: String,
    message: String,
}

/// A well-formed request of `rpc` aimed at `t`: only who calls can make it
/// fail (or the state of the target).
fn request(rpc: Rpc, t: &Target) -> Req {
    let note = || "for the record".to_string();
    match rpc {
        Rpc::CreateParty => Req::CreateParty(pb::CreatePartyRequest {
            party_id: "newcomer".into(),
            display_name: "Newcomer".into(),
            kind: pb::party::Kind::Organization as i32,
        }),
        Rpc::GetParty => Req::GetParty(pb::GetPartyRequest {
            party_id: t.party.clone(),
        }),
        Rpc::ListParties => Req::ListParties(pb::ListPartiesRequest::default()),
        Rpc::IssueToken => Req::IssueToken(pb::IssueTokenRequest {
            party_id: t.party.clone(),
            ..Default::default()
        }),
        Rpc::RevokeToken => Req::RevokeToken(pb::RevokeTokenRequest {
            token_id: t.token.clone(),
        }),
        Rpc::ListTokens => Req::ListTokens(pb::ListTokensRequest {
            party_id: t.party.clone(),
            ..Default::default()
        }),
        Rpc::WhoAmI => Req::WhoAmI(pb::WhoAmIRequest {}),
        Rpc::CreateChannel => Req::CreateChannel(pb::CreateChannelRequest {
            display_name: "The Tokyo channel".into(),
            parties: vec!["iran".into(), "united-states".into()],
            mediators: vec!["japan".into()],
            request_id: String::new(),
        }),
        Rpc::GetChannel => Req::GetChannel(pb::GetChannelRequest {
            channel_id: t.channel.clone(),
        }),
        Rpc::ListChannels => Req::ListChannels(pb::ListChannelsRequest::default()),
        Rpc::SuspendChannel => Req::SuspendChannel(pb::SuspendChannelRequest {
            channel_id: t.channel.clone(),
            note: note(),
            expected_version: 0,
        }),
        Rpc::ResumeChannel => Req::ResumeChannel(pb::ResumeChannelRequest {
            channel_id: t.channel.clone(),
            note: note(),
            expected_version: 0,
        }),
        Rpc::CloseChannel => Req::CloseChannel(pb::CloseChannelRequest {
            channel_id: t.channel.clone(),
            note: note(),
            expected_version: 0,
        }),
        Rpc::SendMessage => Req::SendMessage(send_req(&t.channel, "a proposal")),
        Rpc::GetMessage => Req::GetMessage(pb::GetMessageRequest {
            message_id: t.message.clone(),
        }),
        Rpc::ListMessages => Req::ListMessages(pb::ListMessagesRequest {
            channel_id: t.channel.clone(),
            ..Default::default()
        }),
        Rpc::AcceptMessage => Req::AcceptMessage(move_req!(AcceptMessageRequest, t.message)),
        Rpc::ForwardMessage => Req::ForwardMessage(move_req!(ForwardMessageRequest, t.message)),
        Rpc::DeclineMessage => Req::DeclineMessage(move_req!(DeclineMessageRequest, t.message)),
        Rpc::AcknowledgeMessage => {
            Req::AcknowledgeMessage(move_req!(AcknowledgeMessageRequest, t.message))
        }
        Rpc::RejectMessage => Req::RejectMessage(move_req!(RejectMessageRequest, t.message)),
        Rpc::WithdrawMessage => Req::WithdrawMessage(move_req!(WithdrawMessageRequest, t.message)),
        Rpc::ListEvents => Req::ListEvents(pb::ListEventsRequest {
            message_id: t.message.clone(),
            ..Default::default()
        }),
        Rpc::Subscribe => Req::Subscribe(pb::SubscribeRequest {
            start_after: Some(0),
            channel_ids: vec![t.channel.clone()],
            ..Default::default()
        }),
        Rpc::GetRelayStats => Req::GetRelayStats(pb::GetRelayStatsRequest {
            channel_id: t.channel.clone(),
            ..Default::default()
        }),
        Rpc::GetCheckpoint => Req::GetCheckpoint(pb::GetCheckpointRequest { tree_size: 0 }),
        // Event 1 opened channel A: every party on it may see it.
        Rpc::GetInclusionProof => Req::GetInclusionProof(pb::GetInclusionProofRequest {
            sequence: 1,
            tree_size: 0,
        }),
        Rpc::GetConsistencyProof => Req::GetConsistencyProof(pb::GetConsistencyProofRequest {
            first_size: 1,
            second_size: 0,
        }),
    }
}

/// A request of `rpc` that is malformed by itself (`INVALID_ARGUMENT` for
/// an authenticated caller). `WhoAmI` has no field to get wrong; its
/// malformed form is the undecodable body of
/// [`undecodable_bodies_without_a_valid_token_are_unauthenticated`].
fn malformed(rpc: Rpc) -> Req {
    let bad = || "not-a-uuid".to_string();
    match rpc {
        Rpc::CreateParty => Req::CreateParty(pb::CreatePartyRequest {
            party_id: "Not An Id!".into(),
            display_name: String::new(),
            kind: 99,
        }),
        Rpc::GetParty => Req::GetParty(pb::GetPartyRequest {
            party_id: "-bad-".into(),
        }),
        Rpc::ListParties => Req::ListParties(pb::ListPartiesRequest {
            page_size: -1,
            page_token: String::new(),
        }),
        Rpc::IssueToken => Req::IssueToken(pb::IssueTokenRequest {
            party_id: String::new(),
            ..Default::default()
        }),
        Rpc::RevokeToken => Req::RevokeToken(pb::RevokeTokenRequest { token_id: bad() }),
        Rpc::ListTokens => Req::ListTokens(pb::ListTokensRequest {
            page_size: -1,
            ..Default::default()
        }),
        Rpc::WhoAmI => Req::WhoAmI(pb::WhoAmIRequest {}),
        Rpc::CreateChannel => Req::CreateChannel(pb::CreateChannelRequest {
            display_name: String::new(),
            parties: vec!["iran".into()],
            mediators: vec![],
            request_id: bad(),
        }),
        Rpc::GetChannel => Req::GetChannel(pb::GetChannelRequest { channel_id: bad() }),
        Rpc::ListChannels => Req::ListChannels(pb::ListChannelsRequest {
            state: 99,
            page_size: -1,
            ..Default::default()
        }),
        Rpc::SuspendChannel => Req::SuspendChannel(pb::SuspendChannelRequest {
            channel_id: bad(),
            ..Default::default()
        }),
        Rpc::ResumeChannel => Req::ResumeChannel(pb::ResumeChannelRequest {
            channel_id: bad(),
            ..Default::default()
        }),
        Rpc::CloseChannel => Req::CloseChannel(pb::CloseChannelRequest {
            channel_id: bad(),
            ..Default::default()
        }),
        Rpc::SendMessage => Req::SendMessage(pb::SendMessageRequest {
            channel_id: bad(),
            ..Default::default()
        }),
        Rpc::GetMessage => Req::GetMessage(pb::GetMessageRequest { message_id: bad() }),
        Rpc::ListMessages => Req::ListMessages(pb::ListMessagesRequest {
            thread_id: bad(),
            page_size: -1,
            ..Default::default()
        }),
        Rpc::AcceptMessage => Req::AcceptMessage(move_req!(AcceptMessageRequest, bad())),
        Rpc::ForwardMessage => Req::ForwardMessage(move_req!(ForwardMessageRequest, bad())),
        Rpc::DeclineMessage => Req::DeclineMessage(pb::DeclineMessageRequest {
            message_id: bad(),
            ..Default::default()
        }),
        Rpc::AcknowledgeMessage => {
            Req::AcknowledgeMessage(move_req!(AcknowledgeMessageRequest, bad()))
        }
        Rpc::RejectMessage => Req::RejectMessage(pb::RejectMessageRequest {
            message_id: bad(),
            ..Default::default()
        }),
        Rpc::WithdrawMessage => Req::WithdrawMessage(pb::WithdrawMessageRequest {
            message_id: bad(),
            ..Default::default()
        }),
        Rpc::ListEvents => Req::ListEvents(pb::ListEventsRequest {
            channel_id: uuid::Uuid::now_v7().to_string(),
            message_id: uuid::Uuid::now_v7().to_string(),
            page_size: -1,
            ..Default::default()
        }),
        Rpc::Subscribe => Req::Subscribe(pb::SubscribeRequest {
            channel_ids: vec![bad()],
            types: vec![pb::event::Type::Unspecified as i32, 999],
            ..Default::default()
        }),
        Rpc::GetRelayStats => Req::GetRelayStats(pb::GetRelayStatsRequest {
            channel_id: bad(),
            ..Default::default()
        }),
        // Every size is well formed by itself (past the head is
        // OUT_OF_RANGE, checked against the log): like WhoAmI, its
        // malformed form is only the undecodable body.
        Rpc::GetCheckpoint => Req::GetCheckpoint(pb::GetCheckpointRequest { tree_size: 0 }),
        Rpc::GetInclusionProof => Req::GetInclusionProof(pb::GetInclusionProofRequest {
            sequence: 0,
            tree_size: u64::MAX,
        }),
        Rpc::GetConsistencyProof => Req::GetConsistencyProof(pb::GetConsistencyProofRequest {
            first_size: 0,
            second_size: u64::MAX,
        }),
    }
}

// ---------------------------------------------------------------------------
// Fixture: the Biarritz world with messages in known states.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Admin,
    Iran,
    Us,
    France,
    Japan,
    Outsider,
}

struct Fx {
    server: Server,
    w: World,
    /// Channel A (the world's): iran → france → japan → united-states.
    a: pb::Channel,
    /// Channel B: outsider → japan → iran. The outsider is a principal here,
    /// so it is a real participant — only not on channel A.
    b: pb::Channel,
    /// iran → us on A, SUBMITTED: the current hop is france's.
    m1: pb::Message,
    /// iran → us on A, forwarded by france: the current hop is japan's.
    m2: pb::Message,
    /// us → iran on A (route japan, france), SUBMITTED: current is japan.
    m3: pb::Message,
    /// outsider → iran on B, SUBMITTED.
    mb: pb::Message,
    /// The id of a live (second) token of iran.
    iran_token_id: String,
}

impl Fx {
    fn who(&self, who: Who) -> &Clients {
        match who {
            Who::Admin => &self.w.admin,
            Who::Iran => &self.w.iran,
            Who::Us => &self.w.us,
            Who::France => &self.w.france,
            Who::Japan => &self.w.japan,
            Who::Outsider => &self.w.outsider,
        }
    }

    /// The number of events in the log (as the admin sees it).
    async fn log_len(&mut self) -> usize {
        all_events(&mut self.w.admin, Default::default())
            .await
            .len()
    }
}

async fn send(c: &Clients, channel_id: &str, subject: &str) -> pb::Message {
    c.clone()
        .messages
        .send_message(send_req(channel_id, subject))
        .await
        .unwrap_or_else(|e| panic!("send {subject}: {e:?}"))
        .into_inner()
}

async fn fixture() -> Fx {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let a = w.channel.clone();
    let b = w
        .outsider
        .channels
        .create_channel(pb::CreateChannelRequest {
            display_name: "The outsider's channel".into(),
            parties: vec!["outsider".into(), "iran".into()],
            mediators: vec!["japan".into()],
            request_id: String::new(),
        })
        .await
        .expect("a principal opens a channel")
        .into_inner();
    let m1 = send(&w.iran, &a.id, "m1").await;
    let m2 = send(&w.iran, &a.id, "m2").await;
    let m2 = w
        .france
        .messages
        .forward_message(move_req!(ForwardMessageRequest, m2.id))
        .await
        .expect("france forwards m2")
        .into_inner();
    let m3 = send(&w.us, &a.id, "m3").await;
    assert_eq!(m3.hops[0].mediator, "japan", "reversed route");
    let mb = send(&w.outsider, &b.id, "mb").await;
    let iran_token_id = w
        .admin
        .parties
        .issue_token(pb::IssueTokenRequest {
            party_id: "iran".into(),
            ..Default::default()
        })
        .await
        .expect("issue")
        .into_inner()
        .token_id;
    Fx {
        server,
        w,
        a,
        b,
        m1,
        m2,
        m3,
        mb,
        iran_token_id,
    }
}

/// What a call should give.
#[derive(Clone, Copy, Debug)]
enum Want {
    Ok,
    Err(Code, &'static str),
}

fn denied(reason: &'static str) -> Want {
    Want::Err(Code::PermissionDenied, reason)
}

fn failed(reason: &'static str) -> Want {
    Want::Err(Code::FailedPrecondition, reason)
}

/// `None` if `got` is what `want` says, else a description of the mismatch.
fn mismatch(got: &Result<(), Status>, want: Want) -> Option<String> {
    match (got, want) {
        (Ok(()), Want::Ok) => None,
        (Err(s), Want::Err(code, r)) if s.code() == code && reason(s) == r => None,
        (Ok(()), Want::Err(code, r)) => Some(format!("want {code:?}/{r}, got Ok")),
        (Err(s), want) => Some(format!(
            "want {want:?}, got {:?}/{} ({})",
            s.code(),
            reason(s),
            s.message()
        )),
    }
}

fn assert_covers(what: &str, seen: &BTreeSet<Rpc>, want: &[Rpc]) {
    let missing: Vec<_> = want.iter().filter(|r| !seen.contains(r)).collect();
    assert!(missing.is_empty(), "{what}: no row for {missing:?}");
}

// ---------------------------------------------------------------------------
// (a), (b), (c): no token, garbage tokens, a revoked token.

#[tokio::test]
async fn every_rpc_refuses_a_missing_garbage_revoked_or_expired_token() {
    let mut fx = fixture().await;
    let t = Target {
        party: "iran".into(),
        token: fx.iran_token_id.clone(),
        channel: fx.a.id.clone(),
        message: fx.m1.id.clone(),
    };

    // A revoked token: issued to iran, revoked by the admin.
    let issued =
        fx.w.admin
            .parties
            .issue_token(pb::IssueTokenRequest {
                party_id: "iran".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    let revoked = fx.server.clients(&issued.token).await;
    let me = revoked
        .parties
        .clone()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("the token works before it is revoked")
        .into_inner();
    assert_eq!(me.party_id, "iran");
    fx.w.admin
        .parties
        .revoke_token(pb::RevokeTokenRequest {
            token_id: issued.token_id.clone(),
        })
        .await
        .expect("revoke");

    // An expired token: issued to iran for two seconds.
    let expiring =
        fx.w.admin
            .parties
            .issue_token(pb::IssueTokenRequest {
                party_id: "iran".into(),
                expire_time: Some(in_secs(2)),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
    let expired = fx.server.clients(&expiring.token).await;
    let me = expired
        .parties
        .clone()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("the token works before it expires")
        .into_inner();
    assert_eq!(me.party_id, "iran");
    eventually("the token expires", || {
        let mut c = expired.parties.clone();
        async move {
            match c.who_am_i(pb::WhoAmIRequest {}).await {
                Err(s) if s.code() == Code::Unauthenticated => Some(()),
                _ => None,
            }
        }
    })
    .await;

    // Garbage: not a token at all, empty, well-shaped but unknown, a real
    // token id with a forged secret, a near-miss of the admin token.
    let real = fx.w.tokens["iran"].clone();
    let mut forged = real.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let mut near_admin = ADMIN_TOKEN.to_string();
    near_admin.pop();
    near_admin.push('X');
    let unknown_id = format!("bc_{}_secret", uuid::Uuid::now_v7().simple());
    let mut callers: Vec<(String, Clients)> = vec![
        ("no token".into(), fx.server.anonymous().await),
        ("revoked token".into(), revoked),
        ("expired token".into(), expired),
    ];
    for tok in ["garbage", "", &unknown_id, &forged, &near_admin] {
        callers.push((
            format!("garbage token {tok:?}"),
            fx.server.clients(tok).await,
        ));
    }

    let before = fx.log_len().await;
    let mut failures = Vec::new();
    let mut cases = 0;
    for (label, c) in &callers {
        for rpc in ALL {
            cases += 1;
            let got = call(c, request(rpc, &t)).await;
            if let Some(m) = mismatch(&got, Want::Err(Code::Unauthenticated, "UNAUTHENTICATED")) {
                failures.push(format!("{label} {rpc:?}: {m}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{cases} cases:\n{}",
        failures.join("\n")
    );
    assert_eq!(cases, callers.len() * ALL.len());
    assert_eq!(
        fx.log_len().await,
        before,
        "a refused call recorded an event"
    );

    // Revoking one token leaves the party's other tokens working.
    let me =
        fx.w.iran
            .parties
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .expect("iran's first token still works")
            .into_inner();
    assert_eq!(me.party_id, "iran");
}

// ---------------------------------------------------------------------------
// Order: UNAUTHENTICATED before INVALID_ARGUMENT before NOT_FOUND/PERMISSION_DENIED.

#[tokio::test]
async fn malformed_requests_without_a_valid_token_are_unauthenticated() {
    let fx = fixture().await;
    let anon = fx.server.anonymous().await;
    let garbage = fx.server.clients("garbage").await;
    let mut failures = Vec::new();
    for rpc in ALL {
        for (label, c) in [("no token", &anon), ("garbage token", &garbage)] {
            let got = call(c, malformed(rpc)).await;
            if let Some(m) = mismatch(&got, Want::Err(Code::Unauthenticated, "UNAUTHENTICATED")) {
                failures.push(format!("{label} {rpc:?}: {m}"));
            }
        }
        if rpc == Rpc::WhoAmI || rpc == Rpc::GetCheckpoint {
            continue;
        }
        // The same requests, authenticated, are INVALID_ARGUMENT — for the
        // admin and for a party, before any NOT_FOUND or PERMISSION_DENIED
        // (a party creating a party, naming a channel it cannot see, …).
        for who in [Who::Admin, Who::Outsider, Who::Iran] {
            let got = call(fx.who(who), malformed(rpc)).await;
            let unimplemented =
                rpc == Rpc::Subscribe && matches!(&got, Err(s) if s.code() == Code::Unimplemented);
            if unimplemented {
                continue;
            }
            match &got {
                Err(s) if s.code() == Code::InvalidArgument => {}
                _ => failures.push(format!(
                    "{who:?} {rpc:?}: want INVALID_ARGUMENT, got {:?}",
                    got.map_err(|s| (s.code(), reason(&s)))
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Sends raw bytes as the request body (for bodies that do not decode).
#[derive(Default, Clone, Copy)]
struct RawCodec;

struct RawEncoder;

struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Calls `rpc` with a raw body and a raw `authorization` value.
async fn raw_call(
    server: &Server,
    rpc: Rpc,
    authorization: Option<&str>,
    body: &[u8],
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(server.connect().await);
    grpc.ready().await.expect("ready");
    let mut req = tonic::Request::new(body.to_vec());
    if let Some(a) = authorization {
        req.metadata_mut()
            .insert("authorization", a.parse().expect("ascii"));
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(rpc.path());
    if rpc == Rpc::Subscribe {
        grpc.server_streaming(req, path, RawCodec).await.map(drop)
    } else {
        grpc.unary(req, path, RawCodec).await.map(drop)
    }
}

#[tokio::test]
async fn undecodable_bodies_without_a_valid_token_are_unauthenticated() {
    let server = Server::start().await;
    // Field 1, length-delimited, claims 127 bytes and has 1: no message decodes.
    let body: &[u8] = &[0x0a, 0x7f, 0x00];
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let mut failures = Vec::new();
    for rpc in ALL {
        for auth in [
            None,
            Some("Bearer garbage"),
            Some("Bearer "),
            Some("Basic YWRtaW46YWRtaW4="),
            Some(ADMIN_TOKEN), // the right secret without the scheme
        ] {
            let got = raw_call(&server, rpc, auth, body).await;
            if let Some(m) = mismatch(&got, Want::Err(Code::Unauthenticated, "UNAUTHENTICATED")) {
                failures.push(format!("{auth:?} {rpc:?}: {m}"));
            }
        }
        // With a valid token the same body is INVALID_ARGUMENT, not INTERNAL.
        let got = raw_call(&server, rpc, Some(&admin), body).await;
        if let Some(m) = mismatch(&got, Want::Err(Code::InvalidArgument, "INVALID_REQUEST")) {
            failures.push(format!("admin {rpc:?}: {m}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// (d): not on the channel = does not exist.

#[tokio::test]
async fn a_party_off_the_route_gets_the_same_not_found_as_for_an_absent_id() {
    let fx = fixture().await;
    let absent = Target {
        party: "iran".into(),
        token: String::new(),
        channel: uuid::Uuid::now_v7().to_string(),
        message: uuid::Uuid::now_v7().to_string(),
    };
    // (caller, a channel and a message on it that the caller is not part of)
    let cases = [
        (Who::Outsider, &fx.a, &fx.m1),
        (Who::Outsider, &fx.a, &fx.m2),
        (Who::Us, &fx.b, &fx.mb),
        (Who::France, &fx.b, &fx.mb),
    ];
    let channel_rpcs = [
        Rpc::GetChannel,
        Rpc::SuspendChannel,
        Rpc::ResumeChannel,
        Rpc::CloseChannel,
        Rpc::SendMessage,
        Rpc::ListMessages,
    ];
    let message_rpcs = [
        Rpc::GetMessage,
        Rpc::AcceptMessage,
        Rpc::ForwardMessage,
        Rpc::DeclineMessage,
        Rpc::AcknowledgeMessage,
        Rpc::RejectMessage,
        Rpc::WithdrawMessage,
        Rpc::ListEvents,
    ];
    let mut failures = Vec::new();
    let mut seen = BTreeSet::new();
    let mut n = 0;
    for (who, channel, message) in cases {
        let hidden = Target {
            party: "iran".into(),
            token: String::new(),
            channel: channel.id.clone(),
            message: message.id.clone(),
        };
        // Each row: a request at the hidden record and the same request at
        // an absent one.
        let mut rows: Vec<(String, Req, Req, &str)> = Vec::new();
        for rpc in channel_rpcs {
            rows.push((
                format!("{rpc:?}"),
                request(rpc, &hidden),
                request(rpc, &absent),
                "CHANNEL_NOT_FOUND",
            ));
        }
        for rpc in message_rpcs {
            rows.push((
                format!("{rpc:?}"),
                request(rpc, &hidden),
                request(rpc, &absent),
                "MESSAGE_NOT_FOUND",
            ));
        }
        let events_of_channel = |id: &str| {
            Req::ListEvents(pb::ListEventsRequest {
                channel_id: id.into(),
                ..Default::default()
            })
        };
        rows.push((
            "ListEvents(channel_id)".into(),
            events_of_channel(&hidden.channel),
            events_of_channel(&absent.channel),
            "CHANNEL_NOT_FOUND",
        ));
        let reply = |id: &str| {
            Req::SendMessage(pb::SendMessageRequest {
                in_reply_to: id.into(),
                subject: "a reply".into(),
                ..Default::default()
            })
        };
        rows.push((
            "SendMessage(in_reply_to)".into(),
            reply(&hidden.message),
            reply(&absent.message),
            "MESSAGE_NOT_FOUND",
        ));
        for (label, at_hidden, at_absent, want) in rows {
            n += 1;
            seen.insert(at_hidden.rpc());
            let c = fx.who(who);
            let (h, a) = (call(c, at_hidden).await, call(c, at_absent).await);
            match (&h, &a) {
                (Err(h), Err(a)) => {
                    if h.code() != Code::NotFound || reason(h) != want {
                        failures.push(format!(
                            "{who:?} {label}: want NOT_FOUND/{want}, got {:?}/{} ({})",
                            h.code(),
                            reason(h),
                            h.message()
                        ));
                    }
                    if (h.code(), h.message(), h.details()) != (a.code(), a.message(), a.details())
                    {
                        failures.push(format!(
                            "{who:?} {label}: hidden {h:?} differs from absent {a:?}"
                        ));
                    }
                }
                _ => failures.push(format!("{who:?} {label}: hidden {h:?}, absent {a:?}")),
            }
        }
    }
    assert!(failures.is_empty(), "{n} cases:\n{}", failures.join("\n"));
    let mut want: Vec<Rpc> = channel_rpcs.to_vec();
    want.extend(message_rpcs);
    assert_covers("(d)", &seen, &want);
}

// ---------------------------------------------------------------------------
// (e): the wrong role.

#[tokio::test]
async fn a_caller_in_the_wrong_role_is_refused_with_the_specific_reason() {
    let mut fx = fixture().await;
    use Rpc::*;
    use Who::*;
    let at = |channel: &pb::Channel, message: &pb::Message| Target {
        party: "iran".into(),
        token: fx.iran_token_id.clone(),
        channel: channel.id.clone(),
        message: message.id.clone(),
    };
    let t1 = at(&fx.a, &fx.m1); // iran → us, current hop france
    let t2 = at(&fx.a, &fx.m2); // iran → us, current hop japan (france forwarded)
    let t3 = at(&fx.a, &fx.m3); // us → iran, current hop japan, france second
    let r = |rpc: Rpc, t: &Target| request(rpc, t);
    let reply_to = |id: &str| {
        Req::SendMessage(pb::SendMessageRequest {
            in_reply_to: id.into(),
            subject: "our answer".into(),
            ..Default::default()
        })
    };
    let nobody = Target {
        party: "nobody".into(),
        token: uuid::Uuid::now_v7().to_string(),
        ..t1.clone()
    };
    let principal_elsewhere = Req::CreateChannel(pb::CreateChannelRequest {
        display_name: "Not mine".into(),
        parties: vec!["france".into(), "japan".into()],
        mediators: vec!["outsider".into()],
        request_id: String::new(),
    });
    const NOT_A_PRINCIPAL: &str = "NOT_A_PRINCIPAL";
    const NOT_A_MEDIATOR: &str = "NOT_A_MEDIATOR";
    const NOT_THE_RECIPIENT: &str = "NOT_THE_RECIPIENT";
    const NOT_THE_SENDER: &str = "NOT_THE_SENDER";
    const ADMIN_NOT_A_PARTY: &str = "ADMIN_NOT_A_PARTY";
    const ADMIN_ONLY: &str = "ADMIN_ONLY";
    const NOT_CURRENT_MEDIATOR: &str = "NOT_CURRENT_MEDIATOR";

    let mut rows: Vec<(Who, Req, Want)> = vec![
        // PartyService: parties and tokens are the admin's, whatever the
        // target (even an absent one: no hint to a party).
        (Iran, r(CreateParty, &t1), denied(ADMIN_ONLY)),
        (Outsider, r(CreateParty, &t1), denied(ADMIN_ONLY)),
        (France, r(CreateParty, &t1), denied(ADMIN_ONLY)),
        (Iran, r(IssueToken, &t1), denied(ADMIN_ONLY)),
        (Outsider, r(IssueToken, &t1), denied(ADMIN_ONLY)),
        (Outsider, r(IssueToken, &nobody), denied(ADMIN_ONLY)),
        (Iran, r(RevokeToken, &t1), denied(ADMIN_ONLY)),
        (Outsider, r(RevokeToken, &t1), denied(ADMIN_ONLY)),
        (Outsider, r(RevokeToken, &nobody), denied(ADMIN_ONLY)),
        (Iran, r(ListTokens, &t1), denied(ADMIN_ONLY)),
        (France, r(ListTokens, &nobody), denied(ADMIN_ONLY)),
        // … but the directory is not secret.
        (Outsider, r(GetParty, &t1), Want::Ok),
        (Outsider, r(ListParties, &t1), Want::Ok),
        (Outsider, r(WhoAmI, &t1), Want::Ok),
        // ChannelService: only a principal opens a channel.
        (Outsider, r(CreateChannel, &t1), denied(NOT_A_PRINCIPAL)),
        (France, r(CreateChannel, &t1), denied(NOT_A_PRINCIPAL)),
        (Japan, r(CreateChannel, &t1), denied(NOT_A_PRINCIPAL)),
        (Iran, principal_elsewhere.clone(), denied(NOT_A_PRINCIPAL)),
        // Everyone on the channel sees it.
        (France, r(GetChannel, &t1), Want::Ok),
        (Japan, r(GetChannel, &t1), Want::Ok),
        (Us, r(GetChannel, &t1), Want::Ok),
        (Admin, r(GetChannel, &t1), Want::Ok),
        (France, r(ListChannels, &t1), Want::Ok),
        // Mediators do not change the channel; PERMISSION_DENIED comes
        // before FAILED_PRECONDITION (resuming an open channel).
        (France, r(SuspendChannel, &t1), denied(NOT_A_PRINCIPAL)),
        (Japan, r(SuspendChannel, &t1), denied(NOT_A_PRINCIPAL)),
        (France, r(ResumeChannel, &t1), denied(NOT_A_PRINCIPAL)),
        (Japan, r(ResumeChannel, &t1), denied(NOT_A_PRINCIPAL)),
        (France, r(CloseChannel, &t1), denied(NOT_A_PRINCIPAL)),
        (Japan, r(CloseChannel, &t1), denied(NOT_A_PRINCIPAL)),
        // A principal and the admin pass the role check (and then meet the
        // state check).
        (Iran, r(ResumeChannel, &t1), failed("CHANNEL_NOT_SUSPENDED")),
        (Us, r(ResumeChannel, &t1), failed("CHANNEL_NOT_SUSPENDED")),
        (
            Admin,
            r(ResumeChannel, &t1),
            failed("CHANNEL_NOT_SUSPENDED"),
        ),
        // MessageService: mediators carry, they do not send.
        (France, r(SendMessage, &t1), denied(NOT_A_PRINCIPAL)),
        (Japan, r(SendMessage, &t1), denied(NOT_A_PRINCIPAL)),
        (Admin, r(SendMessage, &t1), denied(ADMIN_NOT_A_PARTY)),
        // Only the recipient replies.
        (Iran, reply_to(&fx.m1.id), denied(NOT_THE_RECIPIENT)),
        (France, reply_to(&fx.m1.id), denied(NOT_THE_RECIPIENT)),
        (Japan, reply_to(&fx.m1.id), denied(NOT_THE_RECIPIENT)),
        (Admin, reply_to(&fx.m1.id), denied(ADMIN_NOT_A_PARTY)),
        (Us, reply_to(&fx.m1.id), failed("MESSAGE_NOT_DELIVERED")),
        // Everyone on the route sees the message and its history.
        (France, r(GetMessage, &t1), Want::Ok),
        (Japan, r(GetMessage, &t1), Want::Ok),
        (Iran, r(GetMessage, &t1), Want::Ok),
        (Us, r(GetMessage, &t1), Want::Ok),
        (Admin, r(GetMessage, &t1), Want::Ok),
        (Japan, r(ListMessages, &t1), Want::Ok),
        (Japan, r(ListEvents, &t1), Want::Ok),
        (France, r(ListEvents, &t3), Want::Ok),
    ];
    // Principals do not carry; the admin moves nothing; a mediator whose hop
    // is not current must wait.
    for rpc in [AcceptMessage, ForwardMessage, DeclineMessage] {
        rows.extend([
            (Iran, r(rpc, &t1), denied(NOT_A_MEDIATOR)),
            (Us, r(rpc, &t1), denied(NOT_A_MEDIATOR)),
            (Iran, r(rpc, &t3), denied(NOT_A_MEDIATOR)),
            (Us, r(rpc, &t3), denied(NOT_A_MEDIATOR)),
            (Admin, r(rpc, &t1), denied(ADMIN_NOT_A_PARTY)),
            (Japan, r(rpc, &t1), failed(NOT_CURRENT_MEDIATOR)),
            (France, r(rpc, &t2), failed(NOT_CURRENT_MEDIATOR)),
            (France, r(rpc, &t3), failed(NOT_CURRENT_MEDIATOR)),
        ]);
    }
    // Only the recipient acknowledges or rejects.
    for rpc in [AcknowledgeMessage, RejectMessage] {
        rows.extend([
            (Iran, r(rpc, &t1), denied(NOT_THE_RECIPIENT)),
            (France, r(rpc, &t1), denied(NOT_THE_RECIPIENT)),
            (Japan, r(rpc, &t1), denied(NOT_THE_RECIPIENT)),
            (Us, r(rpc, &t3), denied(NOT_THE_RECIPIENT)),
            (Japan, r(rpc, &t3), denied(NOT_THE_RECIPIENT)),
            (Admin, r(rpc, &t1), denied(ADMIN_NOT_A_PARTY)),
            (Us, r(rpc, &t1), failed("MESSAGE_NOT_DELIVERED")),
        ]);
    }
    // Only the sender withdraws.
    rows.extend([
        (Us, r(WithdrawMessage, &t1), denied(NOT_THE_SENDER)),
        (France, r(WithdrawMessage, &t1), denied(NOT_THE_SENDER)),
        (Japan, r(WithdrawMessage, &t1), denied(NOT_THE_SENDER)),
        (Japan, r(WithdrawMessage, &t2), denied(NOT_THE_SENDER)),
        (Iran, r(WithdrawMessage, &t3), denied(NOT_THE_SENDER)),
        (France, r(WithdrawMessage, &t3), denied(NOT_THE_SENDER)),
        (Admin, r(WithdrawMessage, &t1), denied(ADMIN_NOT_A_PARTY)),
    ]);

    let before = fx.log_len().await;
    let mut failures = Vec::new();
    let mut seen = BTreeSet::new();
    for (who, req, want) in &rows {
        seen.insert(req.rpc());
        let got = call(fx.who(*who), req.clone()).await;
        if let Some(m) = mismatch(&got, *want) {
            failures.push(format!("{who:?} {:?}: {m}", req.rpc()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases:\n{}",
        rows.len(),
        failures.join("\n")
    );
    // Subscribe and GetRelayStats have no role to get wrong (they filter
    // instead), nor have the audit RPCs (any caller may check the log; an inclusion proof follows
    // visibility, tests/audit.rs): the rest of the RPCs all appear.
    let all_but_subscribe: Vec<Rpc> = ALL
        .into_iter()
        .filter(|r| {
            !matches!(
                r,
                Subscribe | GetRelayStats | GetCheckpoint | GetInclusionProof | GetConsistencyProof
            )
        })
        .collect();
    assert_covers("(e)", &seen, &all_but_subscribe);

    // No refusal changed anything.
    assert_eq!(
        fx.log_len().await,
        before,
        "a refused call recorded an event"
    );
    for m in [&fx.m1, &fx.m2, &fx.m3, &fx.mb] {
        let now =
            fx.w.admin
                .messages
                .get_message(pb::GetMessageRequest {
                    message_id: m.id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
        assert_eq!(
            (now.state, now.version),
            (m.state, m.version),
            "{}",
            m.subject
        );
    }
    let iran_live = fx
        .server
        .clients(&fx.w.tokens["iran"])
        .await
        .parties
        .who_am_i(pb::WhoAmIRequest {})
        .await;
    assert!(iran_live.is_ok(), "refused revocations revoked nothing");
}

// ---------------------------------------------------------------------------
// Need-to-know in lists and histories.

async fn channels_seen(c: &Clients, party_id: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut req = pb::ListChannelsRequest {
        party_id: party_id.into(),
        page_size: 1,
        ..Default::default()
    };
    loop {
        let r = c
            .clone()
            .channels
            .list_channels(req.clone())
            .await
            .expect("list channels")
            .into_inner();
        out.extend(r.channels.into_iter().map(|c| c.id));
        if r.next_page_token.is_empty() {
            return out;
        }
        req.page_token = r.next_page_token;
    }
}

async fn messages_seen(c: &Clients, req: pb::ListMessagesRequest) -> Vec<pb::Message> {
    let mut out = Vec::new();
    let mut req = pb::ListMessagesRequest {
        page_size: 2,
        ..req
    };
    loop {
        let r = c
            .clone()
            .messages
            .list_messages(req.clone())
            .await
            .expect("list messages")
            .into_inner();
        out.extend(r.messages);
        if r.next_page_token.is_empty() {
            return out;
        }
        req.page_token = r.next_page_token;
    }
}

async fn events_seen(c: &Clients, req: pb::ListEventsRequest) -> Vec<pb::Event> {
    let mut out = Vec::new();
    let mut req = pb::ListEventsRequest {
        page_size: 2,
        ..req
    };
    loop {
        let r = c
            .clone()
            .messages
            .list_events(req.clone())
            .await
            .expect("list events")
            .into_inner();
        out.extend(r.events);
        if r.next_page_token.is_empty() {
            return out;
        }
        req.page_token = r.next_page_token;
    }
}

fn ids(ms: &[pb::Message]) -> Vec<String> {
    ms.iter().map(|m| m.id.clone()).collect()
}

fn seqs(es: &[pb::Event]) -> Vec<u64> {
    es.iter().map(|e| e.sequence).collect()
}

/// The channel an event is about, from its subject as well as its field.
fn event_channels(e: &pb::Event) -> Vec<String> {
    let mut out = vec![e.channel_id.clone()];
    match &e.subject {
        Some(pb::event::Subject::Message(m)) => out.push(m.channel_id.clone()),
        Some(pb::event::Subject::Channel(c)) => out.push(c.id.clone()),
        None => {}
    }
    out
}

#[tokio::test]
async fn lists_and_histories_show_only_what_the_caller_is_part_of() {
    let mut fx = fixture().await;
    let (a, b) = (fx.a.id.clone(), fx.b.id.clone());
    // More history on both channels: a hand-over on each, a reply on B,
    // a suspension and resumption of A.
    fx.w.japan
        .messages
        .forward_message(move_req!(ForwardMessageRequest, fx.mb.id))
        .await
        .expect("japan delivers mb");
    let reply =
        fx.w.iran
            .messages
            .send_message(pb::SendMessageRequest {
                in_reply_to: fx.mb.id.clone(),
                subject: "re: mb".into(),
                ..Default::default()
            })
            .await
            .expect("iran replies on B")
            .into_inner();
    assert_eq!(reply.channel_id, b);
    fx.w.us
        .channels
        .suspend_channel(pb::SuspendChannelRequest {
            channel_id: a.clone(),
            ..Default::default()
        })
        .await
        .expect("a principal suspends");
    fx.w.admin
        .channels
        .resume_channel(pb::ResumeChannelRequest {
            channel_id: a.clone(),
            ..Default::default()
        })
        .await
        .expect("the admin resumes");

    // What the admin says each channel holds.
    let admin = fx.w.admin.clone();
    let on = |ch: &str| pb::ListMessagesRequest {
        channel_id: ch.into(),
        ..Default::default()
    };
    let msgs_a = ids(&messages_seen(&admin, on(&a)).await);
    let msgs_b = ids(&messages_seen(&admin, on(&b)).await);
    assert_eq!(msgs_a.len(), 3);
    assert_eq!(msgs_b.len(), 2);
    let all_msgs = ids(&messages_seen(&admin, Default::default()).await);
    assert_eq!(all_msgs.len(), 5, "the admin sees every message");
    let events = |ch: &str| pb::ListEventsRequest {
        channel_id: ch.into(),
        ..Default::default()
    };
    let evs_a = seqs(&events_seen(&admin, events(&a)).await);
    let evs_b = seqs(&events_seen(&admin, events(&b)).await);
    let evs_all = seqs(&events_seen(&admin, Default::default()).await);
    assert_eq!(evs_all.len(), evs_a.len() + evs_b.len());
    let mut merged = [evs_a.clone(), evs_b.clone()].concat();
    merged.sort();
    assert_eq!(evs_all, merged, "the admin sees every event");

    // Channels: newest first; a party sees the channels it is on.
    assert_eq!(channels_seen(&admin, "").await, vec![b.clone(), a.clone()]);
    let out = fx.who(Who::Outsider).clone();
    assert_eq!(channels_seen(&out, "").await, vec![b.clone()]);
    for p in ["iran", "japan", "outsider"] {
        assert_eq!(
            channels_seen(&out, p).await,
            vec![b.clone()],
            "party_id={p}"
        );
    }
    for p in ["united-states", "france"] {
        assert!(channels_seen(&out, p).await.is_empty(), "party_id={p}");
    }
    assert_eq!(
        channels_seen(fx.who(Who::France), "").await,
        vec![a.clone()]
    );
    assert_eq!(
        channels_seen(fx.who(Who::Us), "iran").await,
        vec![a.clone()]
    );
    assert_eq!(
        channels_seen(fx.who(Who::Japan), "").await,
        vec![b.clone(), a.clone()]
    );

    // Messages: the party_id filter never widens what the caller sees.
    let by = |p: &str| pb::ListMessagesRequest {
        party_id: p.into(),
        ..Default::default()
    };
    assert_eq!(ids(&messages_seen(&out, Default::default()).await), msgs_b);
    for p in ["iran", "japan", "outsider"] {
        assert_eq!(
            ids(&messages_seen(&out, by(p)).await),
            msgs_b,
            "party_id={p}"
        );
    }
    for p in ["united-states", "france"] {
        assert!(messages_seen(&out, by(p)).await.is_empty(), "party_id={p}");
    }
    let thread_of_m1 = pb::ListMessagesRequest {
        thread_id: fx.m1.thread_id.clone(),
        ..Default::default()
    };
    assert!(messages_seen(&out, thread_of_m1.clone()).await.is_empty());
    assert_eq!(
        ids(&messages_seen(&admin, thread_of_m1).await),
        vec![fx.m1.id.clone()]
    );
    let submitted = pb::ListMessagesRequest {
        state: pb::message::State::Submitted as i32,
        ..Default::default()
    };
    // mb is delivered; the reply (iran → outsider on B) is submitted, as
    // are m1 and m3 on A.
    assert_eq!(
        ids(&messages_seen(&out, submitted).await),
        vec![reply.id.clone()],
        "state filter as the outsider"
    );
    assert_eq!(
        ids(&messages_seen(fx.who(Who::France), Default::default()).await),
        msgs_a
    );
    assert_eq!(
        ids(&messages_seen(fx.who(Who::France), by("iran")).await),
        msgs_a
    );
    assert_eq!(
        ids(&messages_seen(fx.who(Who::Japan), by("outsider")).await),
        msgs_b
    );
    assert_eq!(
        ids(&messages_seen(fx.who(Who::Japan), Default::default()).await),
        all_msgs
    );
    assert_eq!(ids(&messages_seen(&admin, by("france")).await), msgs_a);

    // Events: without a filter, exactly the events of the caller's channels.
    let mine = events_seen(&out, Default::default()).await;
    assert_eq!(seqs(&mine), evs_b, "the outsider's history is channel B's");
    for e in &mine {
        assert!(
            event_channels(e).iter().all(|c| c == &b),
            "the outsider saw an event of another channel: {e:?}"
        );
    }
    let after = pb::ListEventsRequest {
        after_sequence: evs_a[0],
        ..Default::default()
    };
    assert!(
        events_seen(&out, after)
            .await
            .iter()
            .all(|e| e.channel_id == b)
    );
    assert_eq!(
        seqs(&events_seen(fx.who(Who::France), Default::default()).await),
        evs_a
    );
    assert_eq!(
        seqs(&events_seen(fx.who(Who::Us), Default::default()).await),
        evs_a
    );
    assert_eq!(
        seqs(&events_seen(fx.who(Who::Japan), Default::default()).await),
        evs_all
    );
    assert_eq!(
        seqs(&events_seen(fx.who(Who::Iran), Default::default()).await),
        evs_all
    );

    // Single records the caller is not part of do not exist.
    let out_c = fx.who(Who::Outsider);
    assert_err(
        call(
            out_c,
            Req::GetChannel(pb::GetChannelRequest {
                channel_id: a.clone(),
            }),
        )
        .await,
        Code::NotFound,
        "CHANNEL_NOT_FOUND",
    );
    assert_err(
        call(
            out_c,
            Req::GetMessage(pb::GetMessageRequest {
                message_id: fx.m1.id.clone(),
            }),
        )
        .await,
        Code::NotFound,
        "MESSAGE_NOT_FOUND",
    );
    for (req, want) in [
        (
            pb::ListEventsRequest {
                message_id: fx.m1.id.clone(),
                ..Default::default()
            },
            "MESSAGE_NOT_FOUND",
        ),
        (
            pb::ListEventsRequest {
                channel_id: a.clone(),
                ..Default::default()
            },
            "CHANNEL_NOT_FOUND",
        ),
    ] {
        assert_err(
            call(out_c, Req::ListEvents(req)).await,
            Code::NotFound,
            want,
        );
    }
    assert_err(
        call(out_c, Req::ListMessages(on(&a))).await,
        Code::NotFound,
        "CHANNEL_NOT_FOUND",
    );

    // A mediator sees the message it carries and its whole history.
    let of_m2 = pb::ListEventsRequest {
        message_id: fx.m2.id.clone(),
        ..Default::default()
    };
    let admin_m2 = events_seen(&admin, of_m2.clone()).await;
    for who in [Who::France, Who::Japan] {
        let c = fx.who(who).clone();
        let m = c
            .clone()
            .messages
            .get_message(pb::GetMessageRequest {
                message_id: fx.m2.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{who:?} gets m2: {e:?}"))
            .into_inner();
        assert_eq!(m.id, fx.m2.id);
        let h = events_seen(&c, of_m2.clone()).await;
        assert_eq!(seqs(&h), seqs(&admin_m2), "{who:?}");
        let types: Vec<i32> = h.iter().map(|e| e.r#type).collect();
        assert_eq!(
            types,
            vec![
                pb::event::Type::MessageSent as i32,
                pb::event::Type::MessageForwarded as i32
            ]
        );
    }
}

// ---------------------------------------------------------------------------
// WhoAmI.

#[tokio::test]
async fn who_am_i_names_the_caller() {
    let fx = fixture().await;
    let me = |who: Who| {
        let mut c = fx.who(who).clone();
        async move {
            c.parties
                .who_am_i(pb::WhoAmIRequest {})
                .await
                .expect("who am i")
                .into_inner()
        }
    };
    assert_eq!(
        me(Who::Admin).await,
        pb::WhoAmIResponse {
            party_id: String::new(),
            admin: true,
            read_only: false,
        }
    );
    for (who, id) in [
        (Who::Iran, "iran"),
        (Who::Us, "united-states"),
        (Who::France, "france"),
        (Who::Japan, "japan"),
        (Who::Outsider, "outsider"),
    ] {
        assert_eq!(
            me(who).await,
            pb::WhoAmIResponse {
                party_id: id.into(),
                admin: false,
                read_only: false,
            }
        );
    }
}

/// A timestamp `secs` from now.
fn in_secs(secs: u64) -> prost_types::Timestamp {
    let t = std::time::SystemTime::now() + std::time::Duration::from_secs(secs);
    prost_types::Timestamp::from(t)
}

// ---------------------------------------------------------------------------
// Read-only tokens.

#[tokio::test]
async fn a_read_only_token_reads_what_its_party_may_and_writes_nothing() {
    let mut fx = fixture().await;
    use Rpc::*;
    let issued =
        fx.w.admin
            .parties
            .issue_token(pb::IssueTokenRequest {
                party_id: "iran".into(),
                read_only: true,
                ..Default::default()
            })
            .await
            .expect("issue a read-only token")
            .into_inner();
    let viewer = fx.server.clients(&issued.token).await;
    let me = viewer
        .parties
        .clone()
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .expect("who am i")
        .into_inner();
    assert_eq!(
        me,
        pb::WhoAmIResponse {
            party_id: "iran".into(),
            admin: false,
            read_only: true,
        }
    );
    let t = Target {
        party: "iran".into(),
        token: fx.iran_token_id.clone(),
        channel: fx.a.id.clone(),
        message: fx.m3.id.clone(), // us -> iran: iran may read it
    };
    let reads = [
        GetParty,
        ListParties,
        WhoAmI,
        GetChannel,
        ListChannels,
        GetMessage,
        ListMessages,
        ListEvents,
        Subscribe,
        GetRelayStats,
        GetCheckpoint,
        GetInclusionProof,
        GetConsistencyProof,
    ];
    let before = fx.log_len().await;
    let mut failures = Vec::new();
    for rpc in ALL {
        let want = if reads.contains(&rpc) {
            Want::Ok
        } else if rpc == ListTokens {
            // Not a write, but the admin's.
            denied("ADMIN_ONLY")
        } else {
            denied("READ_ONLY_TOKEN")
        };
        let got = call(&viewer, request(rpc, &t)).await;
        if let Some(m) = mismatch(&got, want) {
            failures.push(format!("{rpc:?}: {m}"));
        }
        // Refused before the request is looked at: a malformed write is
        // refused the same way.
        if !reads.contains(&rpc) && rpc != ListTokens && rpc != WhoAmI {
            let got = call(&viewer, malformed(rpc)).await;
            if let Some(m) = mismatch(&got, denied("READ_ONLY_TOKEN")) {
                failures.push(format!("malformed {rpc:?}: {m}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(fx.log_len().await, before, "a read-only token wrote");
    // Its subscription sees what iran sees.
    let mut sub = stream::subscribe(&mut viewer.clone(), stream::from(Some(0))).await;
    let (events, _) = stream::caught_up(&mut sub).await;
    assert!(events.iter().any(|e| e.message_id == fx.m3.id));
}
