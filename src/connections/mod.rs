//! Connection hygiene (DESIGN §5, "A hostile client costs little"): the
//! accept loop, TLS, and the life of each connection.
//!
//! tonic's own `serve` gives a connection no deadline for its handshake, no
//! idle timeout and no bound on how many are open, so idle sockets could
//! hold every file descriptor. The server therefore accepts connections
//! itself and hands each to hyper's HTTP/2 server, or, when its first bytes
//! are not the HTTP/2 preface, to hyper's HTTP/1.1 server (browsers of the
//! board, gRPC-Web; DESIGN §9):
//! - a connection that has not completed TLS (when on) and sent the 24-byte
//!   HTTP/2 preface, or a complete HTTP/1.1 request head, within the
//!   handshake timeout is closed (a slowloris client gets no longer);
//! - a connection with no open stream for the idle timeout gets `GOAWAY`
//!   (an open subscription is a stream, so it keeps its connection); an
//!   HTTP/1.1 connection with no request in flight is closed likewise;
//! - at most `max_connections` are open, kept below the file-descriptor
//!   limit. At the limit the oldest connection still in its handshake makes
//!   room for the new one (a flood of idle sockets cannot keep a client out;
//!   a well-behaved client is out of its handshake within milliseconds), and
//!   when every connection is past its handshake the new one is closed. What
//!   is shed is logged at most once per [`SHED_LOG_INTERVAL`].
//!
//! [`serve`] is the accept loop (`accept.rs`). Each connection's life is in
//! `connection.rs`; how its first bytes pick the protocol, and its IO,
//! which counts HTTP/2 control frames, in `preface.rs`; its open streams in `streams.rs`.
//! `slots.rs` bounds how many are open and sheds at the bound,
//! `fd_limit.rs` derives the bound from the file-descriptor limit, and
//! `tls.rs` builds the TLS acceptor.

use std::time::Duration;

mod accept;
mod connection;
mod fd_limit;
mod preface;
mod slots;
mod streams;
mod tls;

pub use accept::serve;
pub use connection::ConnectionHandle;
pub use fd_limit::{FD_RESERVE, connection_limit, raise_fd_limit};
pub use preface::CONTROL_FRAMES_PER_SEC;
pub use slots::SHED_LOG_INTERVAL;
pub use tls::tls_acceptor;

/// Any failure, for the log.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How connections are treated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time from accept to a complete TLS handshake and HTTP/2 preface (or
    /// first HTTP/1.1 request head).
    pub handshake_timeout: Duration,
    /// Time a connection may stay open with no stream (HTTP/1.1: between
    /// requests).
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most concurrent streams on one connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// TCP keepalive on accepted sockets.
    pub tcp_keepalive: Duration,
}
