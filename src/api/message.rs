//! `MessageService`: sending, moving, reading and following messages.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::paging::{self, Cursor};
use super::{Ctx, id, optional};
use crate::convert;
use crate::domain::rules::{channel_not_found, message_not_found};
use crate::domain::{
    Caller, Command, Id, MessageAction, MessageMove, NewMessage, PartyId, Reason, Rejection,
    Violations, validate,
};
use crate::feed::{self, Filter, Subscription};
use crate::pb;
use crate::store::{EventQuery, MessageQuery, Outcome};

/// The `MessageService` handlers.
pub struct MessageApi(pub Arc<Ctx>);

/// The stream type of `Subscribe`.
pub type SubscribeStream =
    Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send + 'static>>;

fn message_outcome(o: Outcome) -> Result<Response<pb::Message>, Status> {
    match o {
        Outcome::Message(m) => Ok(Response::new((&m).into())),
        o => Err(crate::error::internal("unexpected write outcome", &o)),
    }
}

/// The fields every move request shares.
struct MoveFields<'a> {
    message_id: &'a str,
    note: &'a str,
    occur_time: Option<&'a prost_types::Timestamp>,
    expected_version: u64,
    request_id: &'a str,
}

macro_rules! move_fields {
    ($r:expr) => {
        MoveFields {
            message_id: &$r.message_id,
            note: &$r.note,
            occur_time: $r.occur_time.as_ref(),
            expected_version: $r.expected_version,
            request_id: &$r.request_id,
        }
    };
}

impl MessageApi {
    async fn step(
        &self,
        caller: Caller,
        f: MoveFields<'_>,
        action: MessageAction,
    ) -> Result<Response<pb::Message>, Status> {
        let now = self.0.store.clock().now();
        let mut v = Violations::default();
        let message_id = v.check("message_id", Id::parse(f.message_id));
        let note = v.check("note", self.0.limits.note(f.note, action.needs_note()));
        let occur_time = v.check(
            "occur_time",
            convert::opt_time(f.occur_time).and_then(|t| validate::occur_time(t, now)),
        );
        let request_id = v.check("request_id", optional(f.request_id, Id::parse));
        let (Some(message_id), Some(note), Some(occur_time), Some(request_id)) =
            (message_id, note, occur_time, request_id)
        else {
            // `check` recorded why each missing value is missing.
            return Err(v.refusal().into());
        };
        let o = self
            .0
            .store
            .write(
                caller,
                Command::MoveMessage(MessageMove {
                    message_id,
                    action,
                    note,
                    occur_time,
                    expected_version: f.expected_version,
                    request_id,
                }),
            )
            .await?;
        message_outcome(o)
    }
}

fn new_message(ctx: &Ctx, r: pb::SendMessageRequest) -> Result<NewMessage, Rejection> {
    let now = ctx.store.clock().now();
    let l = &ctx.limits;
    let mut v = Violations::default();
    let channel_id = v.check("channel_id", optional(&r.channel_id, Id::parse));
    let in_reply_to = v.check("in_reply_to", optional(&r.in_reply_to, Id::parse));
    if matches!((&channel_id, &in_reply_to), (Some(None), Some(None))) {
        v.add(
            "channel_id",
            "is required (it may be empty only for a reply)",
        );
    }
    let subject = v.check("subject", l.subject(&r.subject));
    let body = v.check("body", l.body(&r.body));
    v.check("labels", l.labels(&r.labels));
    let respond_by = v.check(
        "respond_by",
        convert::opt_time(r.respond_by.as_ref()).and_then(|t| validate::respond_by(t, now)),
    );
    let occur_time = v.check(
        "occur_time",
        convert::opt_time(r.occur_time.as_ref()).and_then(|t| validate::occur_time(t, now)),
    );
    let request_id = v.check("request_id", optional(&r.request_id, Id::parse));
    v.finish()?;
    Ok(NewMessage {
        channel_id: channel_id.flatten(),
        subject: subject.unwrap_or_default(),
        body: body.unwrap_or_default(),
        labels: r.labels,
        respond_by: respond_by.flatten(),
        in_reply_to: in_reply_to.flatten(),
        occur_time: occur_time.flatten(),
        request_id: request_id.flatten(),
    })
}

#[tonic::async_trait]
impl pb::message_service_server::MessageService for MessageApi {
    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = self.0.writer(&req)?;
        let m = new_message(&self.0, req.into_inner())?;
        let o = self.0.store.write(caller, Command::SendMessage(m)).await?;
        message_outcome(o)
    }

    async fn get_message(
        &self,
        req: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = self.0.caller(&req)?;
        let mid = id("message_id", &req.get_ref().message_id)?;
        let m = self
            .0
            .store
            .message(mid)
            .await?
            .filter(|m| m.visible_to(&caller))
            .ok_or_else(message_not_found)?;
        Ok(Response::new((&m).into()))
    }

    async fn list_messages(
        &self,
        req: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let caller = self.0.caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let channel = v.check("channel_id", optional(&r.channel_id, Id::parse));
        let party = v.check("party_id", optional(&r.party_id, PartyId::parse));
        let thread = v.check("thread_id", optional(&r.thread_id, Id::parse));
        let state = v.check("state", convert::message_state(r.state));
        let limit = v.check("page_size", self.0.limits.page_size(r.page_size));
        v.finish()?;
        let (channel, party, thread, state) = (
            channel.flatten(),
            party.flatten(),
            thread.flatten(),
            state.flatten(),
        );
        let limit = limit.unwrap_or(1);
        let scope = format!("ListMessages|{caller:?}|{channel:?}|{party:?}|{thread:?}|{state:?}");
        let cursor = self.0.pager.read(&scope, &r.page_token)?;
        if let Some(cid) = channel {
            self.0
                .store
                .channel(cid)
                .await?
                .filter(|c| c.visible_to(&caller))
                .ok_or_else(channel_not_found)?;
        }
        let (page, head) = self
            .0
            .store
            .messages(MessageQuery {
                viewer: caller.party().cloned(),
                channel,
                party,
                thread,
                state,
                before: cursor.as_ref().map_or(i64::MAX as u64, |c| c.position),
                head: cursor.as_ref().map(|c| c.head),
                limit: limit + 1,
            })
            .await?;
        let (messages, next) = paging::page(&page, limit, |(_, m)| pb::Message::from(m));
        let next_page_token = next.map_or_else(String::new, |(position, _)| {
            self.0.pager.issue(
                &scope,
                &Cursor {
                    position: *position,
                    head,
                    key: String::new(),
                },
            )
        });
        Ok(Response::new(pb::ListMessagesResponse {
            messages,
            next_page_token,
            head_sequence: head,
        }))
    }

    async fn accept_message(
        &self,
        req: Request<pb::AcceptMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = self.0.writer(&req)?;
        self.step(caller, move_fields!(req.get_ref()), MessageAction::Accept)
            .await
    }

    async fn forward_message(
        &self,
        req: Request<pb::ForwardMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = self.0.writer(&req)?;
        self.step(caller, move_fields!(req.get_ref()), MessageAction::Forward)
            .await
    }

    async fn decline_message(
        &self,
        req: Request<pb::DeclineMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = self.0.writer(&req)?;
        self.step(caller, move_fields!(req.get_ref()), MessageAction::Decline)
            .await
    }

    async fn acknowledge_message(
        &self,
        req: Request<pb::AcknowledgeMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = self.0.writer(&req)?;
        self.step(
            caller,
            move_fields!(req.get_ref()),
            MessageAction::Acknowledge,
        )
        .await
    }

    async fn reject_message(
        &self,
        req: Request<pb::RejectMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = self.0.writer(&req)?;
        self.step(caller, move_fields!(req.get_ref()), MessageAction::Reject)
            .await
    }

    async fn withdraw_message(
        &self,
        req: Request<pb::WithdrawMessageRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let caller = self.0.writer(&req)?;
        self.step(caller, move_fields!(req.get_ref()), MessageAction::Withdraw)
            .await
    }

    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let caller = self.0.caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let channel = v.check("channel_id", optional(&r.channel_id, Id::parse));
        let message = v.check("message_id", optional(&r.message_id, Id::parse));
        let limit = v.check("page_size", self.0.limits.page_size(r.page_size));
        if !r.channel_id.is_empty() && !r.message_id.is_empty() {
            v.add("message_id", "give channel_id or message_id, not both");
        }
        v.finish()?;
        let (channel, message, limit) = (channel.flatten(), message.flatten(), limit.unwrap_or(1));
        let scope = format!(
            "ListEvents|{caller:?}|{channel:?}|{message:?}|{}",
            r.after_sequence
        );
        let cursor = self.0.pager.read(&scope, &r.page_token)?;
        if let Some(cid) = channel {
            self.0
                .store
                .channel(cid)
                .await?
                .filter(|c| c.visible_to(&caller))
                .ok_or_else(channel_not_found)?;
        }
        if let Some(mid) = message {
            self.0
                .store
                .message(mid)
                .await?
                .filter(|m| m.visible_to(&caller))
                .ok_or_else(message_not_found)?;
        }
        // The head the first page was read at bounds the whole listing, so
        // that listing every page and then subscribing after it misses and
        // repeats nothing (events committed meanwhile come from Subscribe).
        let head = match &cursor {
            Some(c) => c.head,
            None => self.0.store.head().await?,
        };
        let mut events = self
            .0
            .store
            .events(EventQuery {
                // The store stops after the event that brings its stored
                // bytes (each event's protobuf encoding, as sent here) to
                // this bound. The page's bound is lower and counts each event
                // with its framing too, so a page the store stopped short
                // drops at least that last event and has a next page token.
                max_bytes: paging::MAX_RESPONSE_BYTES,
                viewer: caller.party().cloned(),
                channel,
                message,
                // Sequences are stored as signed 64-bit numbers: past that, nothing.
                after: cursor
                    .map_or(r.after_sequence, |c| c.position)
                    .min(i64::MAX as u64),
                through: None,
                limit: limit + 1,
            })
            .await?;
        if let Some(i) = events.iter().position(|e| e.sequence > head) {
            events.truncate(i);
        }
        let (events, next) = paging::page(&events, limit, pb::Event::from);
        let next_page_token = next.map_or_else(String::new, |e| {
            self.0.pager.issue(
                &scope,
                &Cursor {
                    position: e.sequence,
                    head,
                    key: String::new(),
                },
            )
        });
        Ok(Response::new(pb::ListEventsResponse {
            events,
            next_page_token,
            head_sequence: head,
        }))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let who = self.0.identify(&req)?;
        let connection = req
            .extensions()
            .get::<crate::connections::ConnectionHandle>()
            .cloned();
        let r = req.into_inner();
        let filter = subscription_filter(&r)?;
        let mut head = self.0.follow.feed.head();
        if r.start_after.is_some_and(|n| n > head) {
            // Another replica may have written past what this one has seen.
            head = head.max(self.0.store.head().await?);
        }
        let start_after = match r.start_after {
            Some(n) if n > head => {
                return Err(Rejection::new(
                    Reason::START_AFTER_BEYOND_HEAD,
                    format!("start_after {n} is beyond the last recorded sequence {head}"),
                )
                .with("head_sequence", head)
                .into());
            }
            Some(n) => n,
            // With replicas, this one's window may trail the shared log.
            None if self.0.store.is_shared() => head.max(self.0.store.head().await?),
            None => head,
        };
        let secs = match r.heartbeat_seconds {
            0 => feed::DEFAULT_HEARTBEAT_SECS,
            n => n,
        };
        let stream = self.0.follow.start(Subscription {
            who,
            filter,
            start_after,
            heartbeat: Duration::from_secs(u64::from(secs)),
            connection,
        })?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_relay_stats(
        &self,
        req: Request<pb::GetRelayStatsRequest>,
    ) -> Result<Response<pb::RelayStats>, Status> {
        let caller = self.0.caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let channel = v.check("channel_id", optional(&r.channel_id, Id::parse));
        let party = v.check("party_id", optional(&r.party_id, PartyId::parse));
        let since = v.check("since", convert::opt_time(r.since.as_ref()));
        let until = v.check("until", convert::opt_time(r.until.as_ref()));
        if let (Some(Some(s)), Some(Some(u))) = (since, until)
            && u <= s
        {
            v.add("until", "must be after since");
        }
        v.finish()?;
        let question = crate::stats::Question {
            channel: channel.flatten(),
            party: party.flatten(),
            since: since.flatten(),
            until: until.flatten(),
        };
        if let Some(cid) = question.channel {
            self.0
                .store
                .channel(cid)
                .await?
                .filter(|c| c.visible_to(&caller))
                .ok_or_else(channel_not_found)?;
        }
        if let Some(p) = &question.party
            && self.0.store.party(p.clone()).await?.is_none()
        {
            return Err(Rejection::new(Reason::PARTY_NOT_FOUND, format!("no party '{p}'")).into());
        }
        let through = self.0.follow.feed.head();
        Ok(Response::new(
            self.0.stats.answer(caller, question, through).await?,
        ))
    }
}

/// Parses a subscription's filters.
fn subscription_filter(r: &pb::SubscribeRequest) -> Result<Filter, Rejection> {
    let mut v = Violations::default();
    let mut ids = |field: &str, list: &[String]| {
        list.iter()
            .enumerate()
            .filter_map(|(i, s)| v.check(&format!("{field}[{i}]"), Id::parse(s)))
            .collect()
    };
    let channels = ids("channel_ids", &r.channel_ids);
    let messages = ids("message_ids", &r.message_ids);
    let threads = ids("thread_ids", &r.thread_ids);
    let types = r
        .types
        .iter()
        .enumerate()
        .filter_map(|(i, t)| v.check(&format!("types[{i}]"), convert::event_type(*t)))
        .collect();
    v.finish()?;
    Ok(Filter {
        channels,
        messages,
        threads,
        types,
    })
}
