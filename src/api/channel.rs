//! `ChannelService`: opening, listing and changing channels.

use std::collections::BTreeSet;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::paging::{self, Cursor};
use super::{Ctx, id, optional};
use crate::convert;
use crate::domain::rules::channel_not_found;
use crate::domain::{
    Caller, Channel, ChannelAction, ChannelChange, Command, Id, NewChannel, PartyId, Reason,
    Rejection, Violations,
};
use crate::pb;
use crate::store::{ChannelQuery, Outcome};

/// The `ChannelService` handlers.
pub struct ChannelApi(pub Arc<Ctx>);

/// Most mediators on a route.
pub const MAX_MEDIATORS: usize = 8;

fn channel_outcome(o: Outcome) -> Result<Response<pb::Channel>, Status> {
    match o {
        Outcome::Channel(c) => Ok(Response::new((&c).into())),
        o => Err(crate::error::internal("unexpected write outcome", &o)),
    }
}

/// Parses and checks a new channel's route (INVALID_ARGUMENT problems only).
fn new_channel(ctx: &Ctx, r: pb::CreateChannelRequest) -> Result<NewChannel, Rejection> {
    let mut v = Violations::default();
    let display_name = v.check("display_name", ctx.limits.display_name(&r.display_name));
    if r.parties.len() != 2 {
        v.add("parties", "must name exactly two parties");
    }
    let parties: Vec<Option<PartyId>> = r
        .parties
        .iter()
        .enumerate()
        .map(|(i, p)| v.check(&format!("parties[{i}]"), PartyId::parse(p)))
        .collect();
    if r.mediators.is_empty() || r.mediators.len() > MAX_MEDIATORS {
        v.add(
            "mediators",
            format!("must name 1 to {MAX_MEDIATORS} mediators"),
        );
    }
    let mediators: Vec<Option<PartyId>> = r
        .mediators
        .iter()
        .enumerate()
        .map(|(i, p)| v.check(&format!("mediators[{i}]"), PartyId::parse(p)))
        .collect();
    let request_id = v.check("request_id", optional(&r.request_id, Id::parse));
    v.finish()?;
    let parties: Vec<PartyId> = parties.into_iter().flatten().collect();
    let mediators: Vec<PartyId> = mediators.into_iter().flatten().collect();
    let route_error = |m: &str| {
        let mut rej = Rejection::field("mediators", m);
        rej.reason = Reason::INVALID_ROUTE;
        rej
    };
    let [a, b]: [PartyId; 2] = parties
        .try_into()
        .map_err(|_| Rejection::field("parties", "must name exactly two parties"))?;
    if a == b {
        let mut rej = Rejection::field("parties", "the two principals must differ");
        rej.reason = Reason::INVALID_ROUTE;
        return Err(rej);
    }
    let mut seen = BTreeSet::new();
    for m in &mediators {
        if m == &a || m == &b {
            return Err(route_error(&format!(
                "'{m}' is a principal and cannot mediate"
            )));
        }
        if !seen.insert(m) {
            return Err(route_error(&format!("'{m}' appears twice on the route")));
        }
    }
    Ok(NewChannel {
        display_name: display_name.unwrap_or_default(),
        parties: [a, b],
        mediators,
        request_id: request_id.flatten(),
    })
}

impl ChannelApi {
    async fn change(
        &self,
        caller: Caller,
        channel_id: &str,
        note: &str,
        expected_version: u64,
        action: ChannelAction,
    ) -> Result<Response<pb::Channel>, Status> {
        let channel_id = id("channel_id", channel_id)?;
        let note = self
            .0
            .limits
            .note(note, false)
            .map_err(|e| Rejection::field("note", e))?;
        let o = self
            .0
            .store
            .write(
                caller,
                Command::ChangeChannel(ChannelChange {
                    channel_id,
                    action,
                    note,
                    expected_version,
                }),
            )
            .await?;
        channel_outcome(o)
    }
}

#[tonic::async_trait]
impl pb::channel_service_server::ChannelService for ChannelApi {
    async fn create_channel(
        &self,
        req: Request<pb::CreateChannelRequest>,
    ) -> Result<Response<pb::Channel>, Status> {
        let caller = self.0.writer(&req)?;
        let c = new_channel(&self.0, req.into_inner())?;
        let o = self
            .0
            .store
            .write(caller, Command::CreateChannel(c))
            .await?;
        channel_outcome(o)
    }

    async fn get_channel(
        &self,
        req: Request<pb::GetChannelRequest>,
    ) -> Result<Response<pb::Channel>, Status> {
        let caller = self.0.caller(&req)?;
        let cid = id("channel_id", &req.get_ref().channel_id)?;
        let c: Channel = self
            .0
            .store
            .channel(cid)
            .await?
            .filter(|c| c.visible_to(&caller))
            .ok_or_else(channel_not_found)?;
        Ok(Response::new((&c).into()))
    }

    async fn list_channels(
        &self,
        req: Request<pb::ListChannelsRequest>,
    ) -> Result<Response<pb::ListChannelsResponse>, Status> {
        let caller = self.0.caller(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let party = v.check("party_id", optional(&r.party_id, PartyId::parse));
        let state = v.check("state", convert::channel_state(r.state));
        let limit = v.check("page_size", self.0.limits.page_size(r.page_size));
        v.finish()?;
        let (party, state, limit) = (party.flatten(), state.flatten(), limit.unwrap_or(1));
        let scope = format!("ListChannels|{caller:?}|{party:?}|{state:?}");
        let cursor = self.0.pager.read(&scope, &r.page_token)?;
        let page = self
            .0
            .store
            .channels(ChannelQuery {
                viewer: caller.party().cloned(),
                party,
                state,
                before: cursor.map_or(i64::MAX as u64, |c| c.position),
                limit: limit + 1,
            })
            .await?;
        let (channels, next) = paging::page(&page, limit, |(_, c)| pb::Channel::from(c));
        let next_page_token = next.map_or_else(String::new, |(position, _)| {
            self.0.pager.issue(
                &scope,
                &Cursor {
                    position: *position,
                    ..Cursor::default()
                },
            )
        });
        Ok(Response::new(pb::ListChannelsResponse {
            channels,
            next_page_token,
        }))
    }

    async fn suspend_channel(
        &self,
        req: Request<pb::SuspendChannelRequest>,
    ) -> Result<Response<pb::Channel>, Status> {
        let caller = self.0.writer(&req)?;
        let r = req.get_ref();
        self.change(
            caller,
            &r.channel_id,
            &r.note,
            r.expected_version,
            ChannelAction::Suspend,
        )
        .await
    }

    async fn resume_channel(
        &self,
        req: Request<pb::ResumeChannelRequest>,
    ) -> Result<Response<pb::Channel>, Status> {
        let caller = self.0.writer(&req)?;
        let r = req.get_ref();
        self.change(
            caller,
            &r.channel_id,
            &r.note,
            r.expected_version,
            ChannelAction::Resume,
        )
        .await
    }

    async fn close_channel(
        &self,
        req: Request<pb::CloseChannelRequest>,
    ) -> Result<Response<pb::Channel>, Status> {
        let caller = self.0.writer(&req)?;
        let r = req.get_ref();
        self.change(
            caller,
            &r.channel_id,
            &r.note,
            r.expected_version,
            ChannelAction::Close,
        )
        .await
    }
}
