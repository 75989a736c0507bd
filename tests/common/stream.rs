//! Reading subscription streams, and writing whole relays, for tests.

use backchannel::pb::{self, subscribe_response::Kind};
use tonic::{Status, Streaming};

use super::*;

/// One item of a stream.
#[derive(Debug)]
pub enum Item {
    /// An event.
    Event(Box<pb::Event>),
    /// A heartbeat's head.
    Heartbeat(u64),
}

pub type Sub = Streaming<pb::SubscribeResponse>;

pub async fn subscribe(c: &mut Clients, req: pb::SubscribeRequest) -> Sub {
    c.messages
        .subscribe(req)
        .await
        .expect("subscribe")
        .into_inner()
}

pub fn from(start_after: Option<u64>) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        start_after,
        heartbeat_seconds: 1,
        ..Default::default()
    }
}

pub async fn next(s: &mut Sub) -> Result<Item, Status> {
    match tokio::time::timeout(DEADLINE, s.message())
        .await
        .expect("no stream item within the deadline")
    {
        Ok(Some(r)) => match r.kind.expect("item kind") {
            Kind::Event(e) => Ok(Item::Event(Box::new(e))),
            Kind::Heartbeat(h) => Ok(Item::Heartbeat(h.head_sequence)),
        },
        Ok(None) => panic!("stream ended without a status"),
        Err(s) => Err(s),
    }
}

/// Reads until a heartbeat vouches for `head`; returns the events seen.
pub async fn read_through(s: &mut Sub, head: u64) -> Vec<pb::Event> {
    let mut out = Vec::new();
    loop {
        match next(s).await.expect("stream item") {
            Item::Event(e) => out.push(*e),
            Item::Heartbeat(h) if h >= head => return out,
            Item::Heartbeat(_) => {}
        }
    }
}

/// The first heartbeat's head (the caught-up mark), and the events before it.
pub async fn caught_up(s: &mut Sub) -> (Vec<pb::Event>, u64) {
    let mut out = Vec::new();
    loop {
        match next(s).await.expect("stream item") {
            Item::Event(e) => out.push(*e),
            Item::Heartbeat(h) => return (out, h),
        }
    }
}

pub async fn head(admin: &mut Clients) -> u64 {
    all_events(admin, Default::default())
        .await
        .last()
        .map_or(0, |e| e.sequence)
}

pub fn seqs(events: &[pb::Event]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

/// Who may see `e` (DESIGN §3), from the event's own subject.
pub fn visible(e: &pb::Event, party: Option<&str>) -> bool {
    let Some(p) = party else { return true };
    match e.subject.as_ref().expect("subject") {
        pb::event::Subject::Message(m) => {
            m.sender == p || m.recipient == p || m.hops.iter().any(|h| h.mediator == p)
        }
        pb::event::Subject::Channel(c) => {
            c.parties.iter().any(|x| x == p) || c.mediators.iter().any(|x| x == p)
        }
    }
}

pub fn matches(e: &pb::Event, f: &pb::SubscribeRequest) -> bool {
    let thread = match &e.subject {
        Some(pb::event::Subject::Message(m)) => Some(m.thread_id.clone()),
        _ => None,
    };
    (f.channel_ids.is_empty() || f.channel_ids.contains(&e.channel_id))
        && (f.message_ids.is_empty() || f.message_ids.contains(&e.message_id))
        && (f.thread_ids.is_empty() || thread.is_some_and(|t| f.thread_ids.contains(&t)))
        && (f.types.is_empty() || f.types.contains(&e.r#type))
}

pub async fn open_channel(
    admin: &mut Clients,
    a: &str,
    b: &str,
    mediators: &[&str],
) -> pb::Channel {
    admin
        .channels
        .create_channel(pb::CreateChannelRequest {
            display_name: format!("{a}-{b}"),
            parties: vec![a.into(), b.into()],
            mediators: mediators.iter().map(|m| m.to_string()).collect(),
            request_id: String::new(),
        })
        .await
        .expect("create channel")
        .into_inner()
}

/// Sends a message and relays it through `mediators` to the recipient's acknowledgement.
pub async fn relay(
    sender: &mut Clients,
    mediators: &mut [Clients],
    recipient: &mut Clients,
    channel: &str,
    subject: &str,
) {
    let m = sender
        .messages
        .send_message(send_req(channel, subject))
        .await
        .expect("send")
        .into_inner();
    for (i, med) in mediators.iter_mut().enumerate() {
        if i % 2 == 0 {
            med.messages
                .accept_message(move_req!(AcceptMessageRequest, m.id))
                .await
                .expect("accept");
        }
        med.messages
            .forward_message(move_req!(ForwardMessageRequest, m.id))
            .await
            .expect("forward");
    }
    recipient
        .messages
        .acknowledge_message(move_req!(AcknowledgeMessageRequest, m.id))
        .await
        .expect("acknowledge");
}

/// Where a subscription began: `start_after`, or for a live one (unset), the
/// head when the server took the call — at most its caught-up mark, and
/// before the first event it sent, which came after that point.
pub fn starting_point(req: &pb::SubscribeRequest, before_mark: &[pb::Event], mark: u64) -> u64 {
    req.start_after.unwrap_or_else(|| {
        before_mark
            .first()
            .map_or(mark, |e| e.sequence - 1)
            .min(mark)
    })
}
