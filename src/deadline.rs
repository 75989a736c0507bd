//! The per-call deadline: the shorter of the server's `--request-timeout-secs`
//! and the client's `grpc-timeout`, until the response starts (so a stream
//! lives past it). What tonic's `Server::timeout` does, for the server's own
//! accept loop ([`crate::connections`]); `tonic::service::RecoverError`
//! turns the expiry into a status.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::http;
use tower::Service;

/// Fails a call whose response has not started by its deadline with
/// [`tonic::TimeoutExpired`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    server_timeout: Duration,
}

impl<S> Deadline<S> {
    /// Calls `inner` with at most `server_timeout` per call.
    pub fn new(inner: S, server_timeout: Duration) -> Self {
        Deadline {
            inner,
            server_timeout,
        }
    }
}

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = DeadlineCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let timeout = match client_timeout(req.headers()) {
            Some(client) => client.min(self.server_timeout),
            None => self.server_timeout,
        };
        DeadlineCall {
            call: self.inner.call(req),
            sleep: tokio::time::sleep(timeout),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call racing its deadline.
    pub struct DeadlineCall<F> {
        #[pin]
        call: F,
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl<F, T, E> Future for DeadlineCall<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = Result<T, Box<dyn std::error::Error + Send + Sync>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.call.poll(cx) {
            return Poll::Ready(r.map_err(Into::into));
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Box::new(tonic::TimeoutExpired(())))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The client's `grpc-timeout` (1 to 8 digits and a unit, H M S m u n);
/// `None` when absent or malformed.
fn client_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Option<Duration> {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", v.parse().unwrap());
        client_timeout(&h)
    }

    #[test]
    fn grpc_timeout_units_and_malformed_values() {
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("123456789S"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(parse("+5S"), None);
        assert_eq!(parse("5x"), None);
    }
}
