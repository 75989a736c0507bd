//! The connection's IO as hyper reads it: it marks the handshake done once
//! the HTTP/2 preface is in, and counts control frames to stop a flood.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::slots::Handshake;

/// The HTTP/2 client preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`) is 24 bytes.
const PREFACE_LEN: usize = 24;

/// Control frames (PRIORITY, RST_STREAM, SETTINGS, PING, WINDOW_UPDATE) a
/// connection may send in one second. h2 bounds resets and CONTINUATION
/// itself, but answers every WINDOW_UPDATE, PING and SETTINGS frame however
/// many come; a client that does flow control honestly sends a few per
/// stream and MiB read. Over this, the connection gets `GOAWAY` and is read
/// no more.
pub const CONTROL_FRAMES_PER_SEC: u32 = 20_000;

/// The connection's IO, which marks the handshake done once the HTTP/2
/// preface has been read (above TLS, so it counts plaintext).
pub(super) struct Preface<T> {
    pub(super) inner: T,
    pub(super) seen: usize,
    pub(super) handshake: Option<Arc<Handshake>>,
    pub(super) meter: FrameMeter,
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
        // A flooding connection is read no more: what it sends waits in
        // the kernel, costing nothing, until the connection is dropped.
        if this.meter.flood.is_cancelled() {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let mut new = &buf.filled()[before..];
        if this.seen < PREFACE_LEN {
            let n = (PREFACE_LEN - this.seen).min(new.len());
            this.seen += n;
            new = &new[n..];
            if this.seen >= PREFACE_LEN
                && let Some(h) = this.handshake.take()
            {
                h.complete();
            }
        }
        this.meter.read(new);
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
