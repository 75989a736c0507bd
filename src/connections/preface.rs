//! The connection's first bytes, which say whether it speaks HTTP/2 (the
//! 24-byte preface) or HTTP/1.1 (anything else), and its IO as hyper reads
//! it: those bytes replayed, then the socket, with HTTP/2 control frames
//! counted to stop a flood.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The HTTP/2 client preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection speaks, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// It sent the whole HTTP/2 preface.
    Http2,
    /// Its first bytes are not the HTTP/2 preface: a browser, curl, or
    /// gRPC-Web over HTTP/1.1 (hyper answers what does not parse with 400).
    Http1,
}

/// Reads until the first bytes decide the protocol: the whole preface
/// (HTTP/2) or the first byte that differs from it (HTTP/1.1). Returns what
/// was read, to replay; `None` if the connection closed first.
pub(super) async fn sniff<T: AsyncRead + Unpin>(
    io: &mut T,
) -> io::Result<Option<(Protocol, Vec<u8>)>> {
    let mut seen = Vec::with_capacity(PREFACE.len());
    let mut buf = [0u8; 24];
    loop {
        let want = PREFACE.len() - seen.len();
        let n = io.read(&mut buf[..want]).await?;
        if n == 0 {
            return Ok(None);
        }
        seen.extend_from_slice(&buf[..n]);
        if !PREFACE.starts_with(&seen) {
            return Ok(Some((Protocol::Http1, seen)));
        }
        if seen.len() == PREFACE.len() {
            return Ok(Some((Protocol::Http2, seen)));
        }
    }
}

/// Control frames (PRIORITY, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE) a
/// connection may send in one second. h2 bounds resets and CONTINUATION
/// itself, but answers every WINDOW_UPDATE, PING and SETTINGS frame however
/// many come; a client that does flow control honestly sends a few per
/// stream and MiB read. Over this, the connection gets `GOAWAY` and is read
/// no more.
pub const CONTROL_FRAMES_PER_SEC: u32 = 20_000;

/// The connection's IO: the sniffed bytes again, then the socket (above
/// TLS, so it counts plaintext), metered when it speaks HTTP/2.
pub(super) struct Preface<T> {
    pub(super) inner: T,
    /// The bytes [`sniff`] read, still to hand to hyper.
    pub(super) replay: Vec<u8>,
    /// How many of them hyper has read.
    pub(super) replayed: usize,
    /// HTTP/2 only: HTTP/1.1 bytes are not frames.
    pub(super) meter: Option<FrameMeter>,
}

/// Counts the control frames a connection reads, from their 9-byte headers
/// (payloads are skipped), in one-second windows.
pub(super) struct FrameMeter {
    /// Payload bytes of the current frame still to skip.
    skip: usize,
    header: [u8; 9],
    have: usize,
    window: Instant,
    control: u32,
    flood: CancellationToken,
}

impl FrameMeter {
    pub(super) fn new(flood: CancellationToken) -> FrameMeter {
        FrameMeter {
            skip: 0,
            header: [0; 9],
            have: 0,
            window: Instant::now(),
            control: 0,
            flood,
        }
    }

    fn flooded(&self) -> bool {
        self.flood.is_cancelled()
    }

    /// Takes the next bytes read after the preface; `true` once the
    /// connection is over its budget.
    fn read(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < 9 {
                break;
            }
            self.have = 0;
            let h = &self.header;
            self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            // PRIORITY, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE.
            if matches!(h[3], 0x2 | 0x3 | 0x4 | 0x6 | 0x8) {
                let now = Instant::now();
                if now.duration_since(self.window) >= Duration::from_secs(1) {
                    self.window = now;
                    self.control = 0;
                }
                self.control += 1;
                if self.control > CONTROL_FRAMES_PER_SEC {
                    self.flood.cancel();
                    return true;
                }
            }
        }
        false
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Preface<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replayed < this.replay.len() {
            let rest = &this.replay[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            return Poll::Ready(Ok(()));
        }
        // A flooding connection is read no more: what it sends waits in
        // the kernel, costing nothing, until the connection is dropped.
        if this.meter.as_ref().is_some_and(FrameMeter::flooded) {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(meter) = &mut this.meter {
            meter.read(&buf.filled()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Preface<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
