//! `PartyService`: the directory and its tokens.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::paging::{self, Cursor};
use super::{Ctx, party_id};
use crate::auth;
use crate::domain::{Caller, Command, NewParty, Reason, Rejection, Violations};
use crate::pb;
use crate::store::Outcome;

/// The `PartyService` handlers.
pub struct PartyApi(pub Arc<Ctx>);

use crate::domain::decide::admin_only;

/// Writes a token change and applies it to the token cache in a task of its
/// own, so that a call cancelled after the commit still updates the cache
/// (a revocation then counts from the next call, as promised).
async fn write_token_change(
    ctx: &Arc<Ctx>,
    caller: Caller,
    cmd: Command,
) -> Result<Outcome, Status> {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let out = ctx.store.write(caller, cmd).await?;
        match &out {
            Outcome::TokenIssued(t) => {
                ctx.auth.issued(t.clone());
                tracing::info!(token_id = %t.token_id, party = %t.party_id, read_only = t.read_only, "token issued");
            }
            Outcome::TokenRevoked {
                token_id,
                revoke_time,
            } => {
                ctx.auth.revoked(*token_id, *revoke_time);
                tracing::info!(%token_id, "token revoked");
            }
            _ => {}
        }
        Ok::<_, crate::store::WriteError>(out)
    })
    .await
    .map_err(|e| crate::error::internal("token change task failed", &e))?
    .map_err(Status::from)
}

fn unexpected(o: Outcome) -> Status {
    crate::error::internal("unexpected write outcome", &o)
}

#[tonic::async_trait]
impl pb::party_service_server::PartyService for PartyApi {
    async fn create_party(
        &self,
        req: Request<pb::CreatePartyRequest>,
    ) -> Result<Response<pb::Party>, Status> {
        let caller = self.0.writer(&req)?;
        let r = req.into_inner();
        let mut v = Violations::default();
        let id = v.check("party_id", crate::domain::PartyId::parse(&r.party_id));
        let name = v.check("display_name", self.0.limits.display_name(&r.display_name));
        let kind = v.check(
            "kind",
            crate::convert::party_kind(r.kind)
                .ok_or_else(|| "must be STATE, ORGANIZATION or PERSON".to_string()),
        );
        let (Some(id), Some(display_name), Some(kind)) = (id, name, kind) else {
            // `check` recorded why each missing value is missing.
            return Err(v.refusal().into());
        };
        admin_only(&caller)?;
        match self
            .0
            .store
            .write(
                caller,
                Command::CreateParty(NewParty {
                    id,
                    display_name,
                    kind,
                }),
            )
            .await?
        {
            Outcome::Party(p) => Ok(Response::new((&p).into())),
            o => Err(unexpected(o)),
        }
    }

    async fn get_party(
        &self,
        req: Request<pb::GetPartyRequest>,
    ) -> Result<Response<pb::Party>, Status> {
        self.0.caller(&req)?;
        let id = party_id("party_id", &req.get_ref().party_id)?;
        let p =
            self.0.store.party(id.clone()).await?.ok_or_else(|| {
                Rejection::new(Reason::PARTY_NOT_FOUND, format!("no party '{id}'"))
            })?;
        Ok(Response::new((&p).into()))
    }

    async fn list_parties(
        &self,
        req: Request<pb::ListPartiesRequest>,
    ) -> Result<Response<pb::ListPartiesResponse>, Status> {
        self.0.caller(&req)?;
        let r = req.into_inner();
        let limit = self
            .0
            .limits
            .page_size(r.page_size)
            .map_err(|e| Rejection::field("page_size", e))?;
        const SCOPE: &str = "ListParties";
        let after = self
            .0
            .pager
            .read(SCOPE, &r.page_token)?
            .map(|c| c.key)
            .unwrap_or_default();
        let rows = self.0.store.parties(after, limit + 1).await?;
        let (parties, next) = paging::page(&rows, limit, pb::Party::from);
        let next_page_token = next.map_or_else(String::new, |p| {
            self.0.pager.issue(
                SCOPE,
                &Cursor {
                    key: p.id.to_string(),
                    ..Cursor::default()
                },
            )
        });
        Ok(Response::new(pb::ListPartiesResponse {
            parties,
            next_page_token,
        }))
    }

    async fn issue_token(
        &self,
        req: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let caller = self.0.writer(&req)?;
        let r = req.get_ref();
        let party_id = party_id("party_id", &r.party_id)?;
        let expire_time = super::opt_time("expire_time", r.expire_time.as_ref())?;
        if expire_time.is_some_and(|t| t <= self.0.store.clock().now()) {
            return Err(Rejection::field("expire_time", "must lie in the future").into());
        }
        admin_only(&caller)?;
        let t = auth::new_token()?;
        let cmd = Command::IssueToken {
            party_id,
            token_id: t.token_id,
            secret_hash: t.secret_hash,
            read_only: r.read_only,
            expire_time,
        };
        match write_token_change(&self.0, caller, cmd).await? {
            Outcome::TokenIssued(rec) => Ok(Response::new(pb::IssueTokenResponse {
                token_id: rec.token_id.to_string(),
                token: t.token,
            })),
            o => Err(unexpected(o)),
        }
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let caller = self.0.writer(&req)?;
        let token_id = super::id("token_id", &req.get_ref().token_id)?;
        admin_only(&caller)?;
        match write_token_change(&self.0, caller, Command::RevokeToken { token_id }).await? {
            Outcome::TokenRevoked { .. } => Ok(Response::new(pb::RevokeTokenResponse {})),
            o => Err(unexpected(o)),
        }
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let who = self.0.identify(&req)?;
        let mut response = Response::new(match who.caller {
            Caller::Admin => pb::WhoAmIResponse {
                party_id: String::new(),
                admin: true,
                read_only: false,
            },
            Caller::Party(p) => pb::WhoAmIResponse {
                party_id: p.to_string(),
                admin: false,
                read_only: who.read_only,
            },
        });
        // What `backchannel status` shows of the server besides the caller.
        let meta = response.metadata_mut();
        meta.insert(
            "backchannel-version",
            tonic::metadata::MetadataValue::from_static(env!("CARGO_PKG_VERSION")),
        );
        meta.insert(
            "backchannel-store",
            tonic::metadata::MetadataValue::from_static(if self.0.store.is_shared() {
                "postgresql"
            } else {
                "embedded"
            }),
        );
        Ok(response)
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = self.0.caller(&req)?;
        let r = req.into_inner();
        let party = super::opt_party_id("party_id", &r.party_id)?;
        let limit = self
            .0
            .limits
            .page_size(r.page_size)
            .map_err(|e| Rejection::field("page_size", e))?;
        admin_only(&caller)?;
        // The page token is bound to the party filter.
        let scope = format!("ListTokens/{}", r.party_id);
        let after = self
            .0
            .pager
            .read(&scope, &r.page_token)?
            .map(|c| c.key)
            .unwrap_or_default();
        // Every token is in the server's cache (loaded at start, kept
        // current by the writer and, on PostgreSQL, by the replicas'
        // notifications), with the newest last use this server saw.
        let rows: Vec<_> = self
            .0
            .auth
            .list()
            .into_iter()
            .filter(|t| party.as_ref().is_none_or(|p| &t.party_id == p))
            .filter(|t| after.is_empty() || t.token_id.0.simple().to_string() > after)
            .take(limit + 1)
            .collect();
        let (tokens, next) = paging::page(&rows, limit, pb::TokenInfo::from);
        let next_page_token = next.map_or_else(String::new, |t| {
            self.0.pager.issue(
                &scope,
                &Cursor {
                    key: t.token_id.0.simple().to_string(),
                    ..Cursor::default()
                },
            )
        });
        Ok(Response::new(pb::ListTokensResponse {
            tokens,
            next_page_token,
        }))
    }
}
