//! `backchannel watch`: every event once, in order, across dropped
//! connections, server restarts and (with `--position-file`) its own.

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_types::StatusExt;

use super::connect::{Client, connect};
use super::messages::event_line;
use super::output::{Out, line};
use super::{CliError, ClientArgs, WatchArgs};
use crate::pb;
use crate::pb::subscribe_response::Kind;

/// The longest wait between two attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

fn event_type(name: &str) -> Result<i32, CliError> {
    let upper = name.trim().to_ascii_uppercase();
    pb::event::Type::from_str_name(&upper)
        .or_else(|| pb::event::Type::from_str_name(&format!("MESSAGE_{upper}")))
        .filter(|t| *t != pb::event::Type::Unspecified)
        .map(|t| t as i32)
        .ok_or_else(|| {
            CliError::usage(format!(
                "--type '{name}' is not an event type (MESSAGE_SENT or SENT, …, CHANNEL_CLOSED)"
            ))
        })
}

fn read_position(path: &Path) -> Result<Option<u64>, CliError> {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map(Some).map_err(|_| {
            CliError::Local(format!(
                "the position file {} does not hold a sequence number (it holds {:?})",
                path.display(),
                s.trim()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::Local(format!(
            "cannot read the position file {}: {e}",
            path.display()
        ))),
    }
}

/// Writes the position atomically (a new file renamed over the old), so a
/// watch killed at any moment leaves either the old or the new number.
fn save_position(path: &Path, sequence: u64) -> Result<(), CliError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{sequence}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            CliError::Local(format!(
                "cannot write the position file {}: {e}",
                path.display()
            ))
        })
}

/// Whether a failed stream is worth resuming: the connection or the server
/// went away, or a limit said to come back later. A refusal of the request
/// itself (a bad filter, a revoked token, beyond the head) is final.
fn transient(status: &tonic::Status) -> bool {
    let reason = status.get_details_error_info().map(|i| i.reason);
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
        // A rate limit passes; too many open subscriptions is for the
        // user to fix.
        Code::ResourceExhausted => reason.as_deref() == Some("RATE_LIMITED"),
        // From the transport (a reset stream), not a refusal of ours,
        // which always carries an ErrorInfo.
        Code::Internal => status.get_details_error_info().is_none(),
        _ => false,
    }
}

/// Where the watch is: the last sequence it printed or was told it has seen.
struct Position<'a> {
    at: Option<u64>,
    file: Option<&'a Path>,
}

impl Position<'_> {
    fn advance(&mut self, sequence: u64) -> Result<(), CliError> {
        if self.at.is_some_and(|p| sequence <= p) {
            return Ok(());
        }
        self.at = Some(sequence);
        match self.file {
            Some(f) => save_position(f, sequence),
            None => Ok(()),
        }
    }
}

/// How one stream ended.
enum End {
    /// Caught up, with `--until-caught-up`; or stopped by a signal.
    Done,
    /// The connection or the server went away; `bool`: after it had
    /// delivered something (so the next attempt starts with a short wait).
    Lost(String, bool),
}

/// Seconds between the heartbeats asked for on a quiet stream.
const HEARTBEAT_SECONDS: u32 = 5;
/// A stream silent this long (three heartbeats missed) is taken as lost:
/// a server or network that froze without closing the connection.
const SILENCE: Duration = Duration::from_secs(3 * HEARTBEAT_SECONDS as u64);

async fn follow(
    c: &mut Client,
    out: &Out,
    a: &WatchArgs,
    types: &[i32],
    pos: &mut Position<'_>,
    stop: &CancellationToken,
) -> Result<End, CliError> {
    let req = pb::SubscribeRequest {
        start_after: pos.at,
        channel_ids: a.channels.clone(),
        message_ids: a.messages.clone(),
        thread_ids: a.threads.clone(),
        types: types.to_vec(),
        heartbeat_seconds: HEARTBEAT_SECONDS,
    };
    let mut stream = match c.messages.subscribe(req).await {
        Ok(r) => r.into_inner(),
        Err(s) if transient(&s) => return Ok(End::Lost(s.message().to_owned(), false)),
        Err(s) => return Err(s.into()),
    };
    let mut delivered = false;
    loop {
        let item = tokio::select! {
            item = tokio::time::timeout(SILENCE, stream.message()) => item,
            () = stop.cancelled() => return Ok(End::Done),
        };
        let Ok(item) = item else {
            let why = format!("nothing, not even a heartbeat, for {} s", SILENCE.as_secs());
            return Ok(End::Lost(why, delivered));
        };
        if matches!(item, Ok(Some(_))) {
            delivered = true;
        }
        match item {
            Ok(Some(r)) => match r.kind {
                Some(Kind::Event(e)) => {
                    if pos.at.is_some_and(|p| e.sequence <= p) {
                        continue;
                    }
                    if !out.machine(&e, "backchannel.v1.Event", &e.sequence.to_string())? {
                        line(&event_line(&e))?;
                    }
                    pos.advance(e.sequence)?;
                }
                Some(Kind::Heartbeat(h)) => {
                    pos.advance(h.head_sequence)?;
                    if a.until_caught_up {
                        return Ok(End::Done);
                    }
                }
                None => {}
            },
            Ok(None) => {
                return Ok(End::Lost(
                    "the server ended the stream".to_owned(),
                    delivered,
                ));
            }
            Err(s) if transient(&s) => return Ok(End::Lost(s.message().to_owned(), delivered)),
            Err(s) => return Err(s.into()),
        }
    }
}

/// Cancelled at the first SIGINT or SIGTERM. The handlers are installed
/// once, before the watch starts, so that a signal between two events is
/// never missed.
fn stop_on_signal() -> Result<CancellationToken, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let installed =
        |kind| signal(kind).map_err(|e| CliError::Local(format!("cannot handle signals: {e}")));
    let mut term = installed(SignalKind::terminate())?;
    let mut int = installed(SignalKind::interrupt())?;
    let stop = CancellationToken::new();
    let cancel = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        cancel.cancel();
    });
    Ok(stop)
}

/// `backchannel watch`.
pub async fn watch(args: &ClientArgs, out: &Out, a: WatchArgs) -> Result<(), CliError> {
    let types = a
        .types
        .iter()
        .map(|t| event_type(t))
        .collect::<Result<Vec<_>, _>>()?;
    let file = a.position_file.as_deref();
    let saved = file.map(read_position).transpose()?.flatten();
    let start = saved.or(a.after).or(a.from_start.then_some(0));
    if let Some(f) = file {
        // Fail now, not after the first event is printed.
        let at = start.unwrap_or(0);
        if saved.is_some() || start.is_some() {
            save_position(f, at)?;
        } else {
            let mut probe = f.as_os_str().to_owned();
            probe.push(".tmp");
            std::fs::write(&probe, b"")
                .and_then(|()| std::fs::remove_file(&probe))
                .map_err(|e| {
                    CliError::Local(format!(
                        "cannot write the position file {}: {e}",
                        f.display()
                    ))
                })?;
        }
    }
    let mut pos = Position { at: start, file };
    let stop = stop_on_signal()?;
    let mut c = connect(args).await?;
    let mut backoff = Duration::from_millis(100);
    loop {
        let why = match follow(&mut c, out, &a, &types, &mut pos, &stop).await? {
            End::Done => return Ok(()),
            End::Lost(why, delivered) => {
                // Only a stream that worked resets the wait: a server that
                // answers but refuses is asked less and less often.
                if delivered {
                    backoff = Duration::from_millis(100);
                }
                why
            }
        };
        let from = pos
            .at
            .map_or("now".to_owned(), |p| format!("after sequence {p}"));
        eprintln!("watch: the stream was lost ({why}); resuming {from}");
        // Reconnect, waiting longer each time, until the server answers.
        loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return Ok(()),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match connect(args).await {
                Ok(new) => {
                    c = new;
                    break;
                }
                Err(CliError::Unreachable { cause, .. }) => {
                    eprintln!(
                        "watch: {} does not answer ({}); retrying",
                        c.url,
                        chain_line(&cause)
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn chain_line(cause: &str) -> &str {
    cause.rsplit(": ").next().unwrap_or(cause)
}
