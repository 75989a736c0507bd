//! The clients of one identity, and the lightweight stream decoding the
//! fan-out points use.

use crate::*;
pub(crate) use backchannel_testkit::Bearer;

pub(crate) type Authed = InterceptedService<Channel, Bearer>;

/// The clients of one identity over one connection.
#[derive(Clone)]
pub(crate) struct Clients {
    pub(crate) parties: PartyServiceClient<Authed>,
    pub(crate) channels: ChannelServiceClient<Authed>,
    pub(crate) messages: MessageServiceClient<Authed>,
    pub(crate) health: HealthClient<Authed>,
    pub(crate) audit: AuditServiceClient<Authed>,
}

impl Clients {
    pub(crate) fn new(conn: &Channel, bearer: &Bearer) -> Clients {
        Clients {
            parties: PartyServiceClient::with_interceptor(conn.clone(), bearer.clone()),
            channels: ChannelServiceClient::with_interceptor(conn.clone(), bearer.clone()),
            messages: MessageServiceClient::with_interceptor(conn.clone(), bearer.clone()),
            health: HealthClient::with_interceptor(conn.clone(), bearer.clone()),
            audit: AuditServiceClient::with_interceptor(conn.clone(), bearer.clone()),
        }
    }
}

/// One HTTP/2 connection to the server.
pub(crate) async fn connect(addr: &str) -> Result<Channel> {
    backchannel_testkit::connect(addr).await
}

/// One identity's clients, one per shared connection.
#[derive(Clone)]
pub(crate) struct Identity {
    pub(crate) bearer: Bearer,
    pub(crate) per_conn: Vec<Clients>,
    /// The bearer token, for raw HTTP/2 calls.
    pub(crate) token: String,
}

impl Identity {
    pub(crate) fn new(conns: &[Channel], token: &str) -> Result<Identity> {
        let bearer = Bearer::new(token)?;
        Ok(Identity {
            per_conn: conns.iter().map(|c| Clients::new(c, &bearer)).collect(),
            bearer,
            token: token.to_owned(),
        })
    }

    /// The clients on connection `i` (round-robin).
    pub(crate) fn on(&self, i: usize) -> Clients {
        self.per_conn[i % self.per_conn.len()].clone()
    }
}

/// Only what the bench reads of a `SubscribeResponse`: the subscribers skip
/// the rest of each event instead of building it, so that the client's
/// share of the two cores goes as little as possible to decoding.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LiteResponse {
    #[prost(message, optional, tag = "1")]
    pub(crate) event: Option<LiteEvent>,
    #[prost(message, optional, tag = "2")]
    pub(crate) heartbeat: Option<pb::Heartbeat>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LiteEvent {
    #[prost(uint64, tag = "1")]
    pub(crate) sequence: u64,
    #[prost(message, optional, tag = "10")]
    pub(crate) record_time: Option<prost_types::Timestamp>,
}

pub(crate) async fn subscribe_lite(
    conn: Channel,
    bearer: &Bearer,
    req: pb::SubscribeRequest,
) -> Result<tonic::Streaming<LiteResponse>, Status> {
    let mut grpc = tonic::client::Grpc::new(conn);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
    let mut req = tonic::Request::new(req);
    if let Some(v) = bearer.header() {
        req.metadata_mut().insert("authorization", v.clone());
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/backchannel.v1.MessageService/Subscribe",
    );
    let codec = tonic_prost::ProstCodec::<pb::SubscribeRequest, LiteResponse>::default();
    Ok(grpc.server_streaming(req, path, codec).await?.into_inner())
}

pub(crate) fn unix_nanos(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

pub(crate) fn ts_nanos(t: &prost_types::Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}
