//! Limits per party (DESIGN §5 "A hostile client costs little"): a request
//! rate with a burst, concurrent subscriptions, and, for the unauthenticated
//! health `Watch`, a limit of its own. One party at its limits leaves the
//! others theirs.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::domain::{Caller, Reason, Rejection};

/// Requests per second per party by default (the burst is twice that).
pub const DEFAULT_RATE_LIMIT: u32 = 5_000;
/// Concurrent subscriptions per party by default.
pub const DEFAULT_SUBSCRIPTIONS_PER_PARTY: usize = 1_000;
/// Concurrent health `Watch` streams by default.
pub const DEFAULT_HEALTH_WATCHES: usize = 1_000;

/// How long a call refused `RATE_LIMITED` waits before its refusal is
/// sent. A client that floods (many calls in flight, each sent again the
/// moment it is refused) otherwise gets refusals as fast as the server can
/// make them, and takes the CPU that refusing was meant to save; held, each
/// of its streams makes at most 20 calls a second. A client that honours
/// `RetryInfo` waits longer than this anyway.
pub const TARPIT: Duration = Duration::from_millis(50);

/// The response header that marks a refusal to hold for [`TARPIT`]; set
/// by the authentication interceptor, removed before the response leaves
/// (`codec::RequestFaults`).
pub const TARPIT_HEADER: &str = "x-backchannel-tarpit";

/// Marks a refusal to be held for [`TARPIT`] before it is sent.
pub fn mark_for_tarpit(status: &mut tonic::Status) {
    status.metadata_mut().insert(
        TARPIT_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
}

/// The per-party limits of one server.
pub struct Quotas {
    rate: Option<(DefaultKeyedRateLimiter<String>, u32)>,
    per_party: usize,
    open: Mutex<HashMap<String, usize>>,
}

/// The key of a caller's bucket: the admin has one of its own.
fn key(caller: &Caller) -> String {
    match caller {
        Caller::Admin => "admin".to_owned(),
        Caller::Party(p) => format!("party:{p}"),
    }
}

impl Quotas {
    /// `rate` requests/s per caller with a burst of twice that (`0`: no
    /// limit); `per_party` concurrent subscriptions per caller.
    pub fn new(rate: u32, per_party: usize) -> Quotas {
        let rate = NonZeroU32::new(rate).map(|r| {
            let burst = r.saturating_mul(NonZeroU32::MIN.saturating_add(1));
            let limiter = RateLimiter::dashmap(Quota::per_second(r).allow_burst(burst));
            (limiter, r.get())
        });
        Quotas {
            rate,
            per_party,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request of `caller` against its rate; `RATE_LIMITED`
    /// (with when to retry) when its bucket is empty.
    pub fn admit(&self, caller: &Caller) -> Result<(), Rejection> {
        let Some((limiter, rate)) = &self.rate else {
            return Ok(());
        };
        match limiter.check_key(&key(caller)) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until
                    .wait_time_from(DefaultClock::default().now())
                    .max(Duration::from_millis(1));
                metrics::counter!(crate::observe::RATE_LIMITED).increment(1);
                Err(Rejection::new(
                    Reason::RATE_LIMITED,
                    format!(
                        "over the limit of {rate} requests per second for {}; retry in {} ms",
                        caller.actor(),
                        wait.as_millis().max(1)
                    ),
                )
                .with("limit", rate)
                .retry_after(wait))
            }
        }
    }

    /// Takes one of `caller`'s subscription slots until the guard drops.
    pub fn subscription(self: &Arc<Self>, caller: &Caller) -> Result<PartySlot, Rejection> {
        let k = key(caller);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(k.clone()).or_insert(0);
        if *n >= self.per_party {
            metrics::counter!(crate::observe::SUBSCRIPTIONS_REFUSED, "limit" => "party")
                .increment(1);
            return Err(Rejection::new(
                Reason::TOO_MANY_SUBSCRIPTIONS,
                format!(
                    "{} holds its maximum of {} subscriptions; close one first",
                    caller.actor(),
                    self.per_party
                ),
            )
            .with("limit", self.per_party));
        }
        *n += 1;
        Ok(PartySlot {
            quotas: self.clone(),
            key: k,
        })
    }
}

/// One subscription slot of one caller.
pub struct PartySlot {
    quotas: Arc<Quotas>,
    key: String,
}

impl Drop for PartySlot {
    fn drop(&mut self) {
        let mut open = self
            .quotas
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Wraps the health service so that at most `max` `Watch` streams are open
/// at once (they need no token, so they have a limit of their own); beyond
/// it `Watch` is `RESOURCE_EXHAUSTED` / `TOO_MANY_SUBSCRIPTIONS`.
#[derive(Clone)]
pub struct HealthWatchLimit<S> {
    inner: S,
    max: usize,
    open: Arc<AtomicUsize>,
}

impl<S> HealthWatchLimit<S> {
    /// At most `max` watches through `inner`.
    pub fn new(inner: S, max: usize) -> Self {
        HealthWatchLimit {
            inner,
            max,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for HealthWatchLimit<S> {
    const NAME: &'static str = S::NAME;
}

/// One open health watch, for as long as its response body lives.
struct WatchSlot(Arc<AtomicUsize>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!(crate::observe::HEALTH_WATCHES_OPEN).decrement(1.0);
    }
}

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl<S> tonic::codegen::Service<HttpRequest> for HealthWatchLimit<S>
where
    S: tonic::codegen::Service<HttpRequest, Response = HttpResponse> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        if !req.uri().path().ends_with("/Watch") {
            return Box::pin(self.inner.call(req));
        }
        let prev = self.open.fetch_add(1, Ordering::SeqCst);
        if prev >= self.max {
            self.open.fetch_sub(1, Ordering::SeqCst);
            metrics::counter!(crate::observe::SUBSCRIPTIONS_REFUSED, "limit" => "health")
                .increment(1);
            let r = Rejection::new(
                Reason::TOO_MANY_SUBSCRIPTIONS,
                format!(
                    "the server holds its maximum of {} health watches; use Check, or retry later",
                    self.max
                ),
            )
            .with("limit", self.max);
            let res = crate::error::status(&r).into_http();
            return Box::pin(async move { Ok(res) });
        }
        // Added to and taken from, never set from a count read before (a
        // late write could leave it off by one for good).
        metrics::gauge!(crate::observe::HEALTH_WATCHES_OPEN).increment(1.0);
        let slot = WatchSlot(self.open.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            // The slot lives as long as the stream's body.
            Ok(res.map(|body| {
                tonic::body::Body::new(http_body_util::BodyExt::map_frame(body, move |f| {
                    let _slot = &slot;
                    f
                }))
            }))
        })
    }
}
