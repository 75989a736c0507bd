//! The gRPC handlers: one file per service. Each handler authenticates,
//! parses the request into domain values, calls the store, and encodes.

pub mod audit;
pub mod channel;
pub mod message;
pub mod paging;
pub mod party;

use std::sync::Arc;

use tonic::Request;

use crate::auth::{Authenticator, Identity};
use crate::domain::validate::Limits;
use crate::domain::{Caller, Id, PartyId, Reason, Rejection, Time};
use crate::store::Store;

pub use paging::Pager;

/// What every handler shares.
pub struct Ctx {
    /// The record.
    pub store: Store,
    /// Token resolution.
    pub auth: Arc<Authenticator>,
    /// Request limits.
    pub limits: Limits,
    /// Page-token signing.
    pub pager: Pager,
    /// Subscriptions.
    pub follow: crate::feed::Follow,
    /// Relay statistics.
    pub stats: Arc<crate::stats::Stats>,
}

impl Ctx {
    /// The caller named by the request's token, which the token check
    /// (`auth::RequireToken`, around every service) resolved before the call
    /// reached its handler. A call without one was never checked: a service
    /// mounted without the token check, refused rather than let through.
    pub fn identify<T>(&self, req: &Request<T>) -> Result<Identity, Rejection> {
        req.extensions().get::<Identity>().cloned().ok_or_else(|| {
            tracing::error!("a call reached its handler without the token check");
            Rejection::new(Reason::INTERNAL, "the call was not authenticated")
        })
    }

    /// The caller named by the request's token.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Rejection> {
        Ok(self.identify(req)?.caller)
    }

    /// The caller of a write RPC: refused with `READ_ONLY_TOKEN`, before
    /// anything else is looked at, when its token is read-only.
    pub fn writer<T>(&self, req: &Request<T>) -> Result<Caller, Rejection> {
        let who = self.identify(req)?;
        if who.read_only {
            return Err(Rejection::new(
                Reason::READ_ONLY_TOKEN,
                "this token is read-only: it may read and subscribe, not write",
            ));
        }
        Ok(who.caller)
    }
}

/// Parses a required id field.
pub fn id(field: &str, s: &str) -> Result<Id, Rejection> {
    Id::parse(s).map_err(|e| Rejection::field(field, e))
}

/// Parses an optional field (empty = unset) with `parse`. The error
/// describes the value only, for [`crate::domain::Violations::check`],
/// which names the field.
pub fn optional<T>(
    s: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    parse(s).map(Some)
}

/// Parses a required party id field.
pub fn party_id(field: &str, s: &str) -> Result<PartyId, Rejection> {
    PartyId::parse(s).map_err(|e| Rejection::field(field, e))
}

/// Parses an optional party id filter (empty = unset).
pub fn opt_party_id(field: &str, s: &str) -> Result<Option<PartyId>, Rejection> {
    optional(s, PartyId::parse).map_err(|e| Rejection::field(field, e))
}

/// Parses an optional timestamp field.
pub fn opt_time(
    field: &str,
    t: Option<&prost_types::Timestamp>,
) -> Result<Option<Time>, Rejection> {
    crate::convert::opt_time(t).map_err(|e| Rejection::field(field, e))
}
